"""Writes to ``sriov_numvfs`` that cannot hang the agent.

Some PF drivers block in the write for minutes (firmware resets, VF resource carving). The
write runs in a thread of its own; past the timeout the PF is reported failed and no further
write to that PF starts until the stuck one returns.
"""

from __future__ import annotations

import threading

from nodeagent.provision.errors import ProvisionError
from nodeagent.sysfs import Sysfs


class NumVfsWriter:
    def __init__(self, sysfs: Sysfs, timeout: float = 120.0) -> None:
        self.sysfs = sysfs
        self.timeout = timeout
        self._stuck: dict[str, threading.Thread] = {}

    def set(self, pf: str, count: int) -> None:
        """Bring ``sriov_numvfs`` to ``count``: through 0 first, as the kernel requires."""
        current = self.sysfs.pci_int(pf, "sriov_numvfs")
        if current == count:
            return
        if current:
            self._write(pf, 0)
        if count:
            self._write(pf, count)

    def busy(self, pf: str) -> bool:
        """True while an earlier write to this PF has not returned."""
        thread = self._stuck.get(pf)
        if thread is not None and not thread.is_alive():
            del self._stuck[pf]
            thread = None
        return thread is not None

    def _write(self, pf: str, count: int) -> None:
        if self.busy(pf):
            raise ProvisionError("an earlier write to sriov_numvfs has not returned yet")
        failure: list[OSError] = []

        def write() -> None:
            try:
                self.sysfs.pci_write(pf, "sriov_numvfs", str(count))
            except OSError as exc:
                failure.append(exc)

        thread = threading.Thread(target=write, name=f"numvfs-{pf}", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            self._stuck[pf] = thread
            raise ProvisionError(f"writing {count} to sriov_numvfs did not return within"
                                 f" {self.timeout:g}s (the driver may still be working)")
        if failure:
            exc = failure[0]
            raise ProvisionError(f"the kernel refused sriov_numvfs={count}:"
                                 f" {exc.strerror or exc}")
