"""What an SR-IOV attachment changed, kept on disk so DEL can undo it after any crash.

One JSON file per attachment (container ID + interface name), written before the first change
with write-temp, fsync, rename; and one lock file per VF, so two attachments never take the same
VF. The fallback plugin uses the same files and locks as the daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nodeagent.fileio import replace_file


@dataclass
class VfAttachment:
    container_id: str
    ifname: str
    netns: str
    pci: str
    pf: str
    vf_index: int
    dpdk: bool
    #: The VF netdev as it was in the host namespace (None in DPDK mode).
    original_name: str | None
    original_mtu: int | None
    original_mac: str | None
    #: The PF-side settings before the attachment (nodeagent.model.VfConfig fields).
    pf_side: dict
    #: The CNI network (config "name"), so GC touches only its own network's attachments.
    network: str = ""
    #: The PF-side settings the attachment changes; DEL restores only these.
    changed: list[str] = field(default_factory=list)


#: Where CNI attachments keep what they must undo; NODEAGENT_STATE_DIR overrides it (the daemon,
#: the fallback and provisioning must agree).
DEFAULT_STATE_DIR = "/var/lib/nodeagent/cni"


class VfState:
    """Attachment records and VF locks under ``root`` (``<root>/sriov``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.dir = Path(root) / "sriov"

    @classmethod
    def default(cls) -> VfState:
        return cls(os.environ.get("NODEAGENT_STATE_DIR", DEFAULT_STATE_DIR))

    def _path(self, container_id: str, ifname: str) -> Path:
        return self.dir / f"{container_id}-{ifname}.json"

    def save(self, attachment: VfAttachment) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_file(self._path(attachment.container_id, attachment.ifname),
                     json.dumps(asdict(attachment)).encode(), mode=0o600)

    def load(self, container_id: str, ifname: str) -> VfAttachment | None:
        try:
            with open(self._path(container_id, ifname)) as f:
                return VfAttachment(**json.load(f))
        except FileNotFoundError:
            return None

    def remove(self, container_id: str, ifname: str) -> None:
        self._path(container_id, ifname).unlink(missing_ok=True)

    def all(self) -> list[VfAttachment]:
        found = []
        for path in sorted(self.dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                found.append(VfAttachment(**json.loads(path.read_text())))
        return found

    def holder(self, pci: str) -> VfAttachment | None:
        """The attachment that holds a VF, if any."""
        return next((a for a in self.all() if a.pci == pci), None)

    @contextlib.contextmanager
    def lock(self, pci: str) -> Iterator[None]:
        locks = self.dir / "locks"
        locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(locks / f"{pci}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
