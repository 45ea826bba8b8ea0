"""Which pod and container the kubelet gave each VF, from its PodResourcesLister v1 API.

:class:`PodResourcesWatch` calls ``List`` on the kubelet's pod-resources socket every
``interval`` seconds and shortly after each Allocate (:meth:`PodResourcesWatch.poke`), keeps
VF PCI address -> :class:`Assignment` for the resources this agent serves, and mirrors it on the
:class:`~nodeagent.status.StatusBoard` as ``device/<pci>`` allocations. Provisioning asks
:meth:`PodResourcesWatch.pods` which VFs pods hold. A kubelet that cannot be reached (no
socket, not answering) changes nothing and is logged at debug level only: the last answer
stays in force until the kubelet answers again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from deviceplugin import api
from nodeagent.status import StatusBoard

log = logging.getLogger(__name__)

INTERVAL = 5.0  # seconds between polls
AFTER_ALLOCATE = 0.3  # the kubelet records an allocation once Allocate has returned
KEY_PREFIX = "device/"  # StatusBoard allocation keys: device/<VF PCI address>


@dataclass(frozen=True)
class Assignment:
    namespace: str
    pod: str
    container: str
    resource: str

    def status_entry(self, device: str) -> dict[str, Any]:
        return {"pod": self.pod, "namespace": self.namespace, "container": self.container,
                "device": device, "type": "device-plugin", "network": self.resource}


def list_assignments(socket: str = api.POD_RESOURCES_SOCKET, *, timeout: float = 2.0
                     ) -> dict[str, Assignment]:
    """One ``List`` call: device ID -> assignment. Raises grpc.RpcError when it fails."""
    pb2, pb2_grpc = api.pod_resources_modules()
    found: dict[str, Assignment] = {}
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        response = pb2_grpc.PodResourcesListerStub(channel).List(
            pb2.ListPodResourcesRequest(), timeout=timeout)
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                for device_id in devices.device_ids:
                    found[device_id] = Assignment(pod.namespace, pod.name, container.name,
                                                  devices.resource_name)
    return found


class PodResourcesWatch:
    """Polls the kubelet; ``resources`` (if given) names the resources whose devices count."""

    def __init__(self, status: StatusBoard | None = None,
                 resources: Callable[[], Iterable[str]] | None = None, *,
                 socket: str = api.POD_RESOURCES_SOCKET, interval: float = INTERVAL,
                 after_allocate: float = AFTER_ALLOCATE, timeout: float = 2.0) -> None:
        self.status = status
        self.resources = resources
        self.socket = socket
        self.interval = interval
        self.after_allocate = after_allocate
        self.timeout = timeout
        self.polls = 0  # answered List calls
        self._assigned: dict[str, Assignment] = {}
        self._lock = threading.Lock()
        self._poked = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reachable: bool | None = None

    # -- readers ----------------------------------------------------------------------------

    def assigned(self) -> dict[str, Assignment]:
        """VF PCI address -> who holds it, as of the last answer."""
        with self._lock:
            return dict(self._assigned)

    def pods(self) -> dict[str, str]:
        """VF PCI address -> ``namespace/pod`` (for provisioning's in-use check)."""
        return {pci: f"{a.namespace}/{a.pod}" for pci, a in self.assigned().items()}

    # -- polling ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pod-resources", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def poke(self, *_: object) -> None:
        """Poll soon (after an Allocate); takes and ignores the Allocate callback's args."""
        self._poked.set()

    def poll(self) -> bool:
        """One List call, applied; False when the kubelet could not be asked."""
        if not os.path.exists(self.socket):
            self._unreachable("no socket")
            return False
        try:
            found = list_assignments(self.socket, timeout=self.timeout)
        except grpc.RpcError as exc:
            self._unreachable(str(exc.code()))
            return False
        if self._reachable is not True:
            log.info("kubelet pod-resources API at %s answers", self.socket)
        self._reachable = True
        ours = set(self.resources()) if self.resources is not None else None
        current = {pci: a for pci, a in found.items() if ours is None or a.resource in ours}
        with self._lock:
            before, self._assigned = self._assigned, current
            self.polls += 1
        if self.status is not None:
            for pci in before.keys() - current.keys():
                self.status.set_allocation(KEY_PREFIX + pci, None)
            for pci, assignment in current.items():
                if before.get(pci) != assignment:
                    self.status.set_allocation(KEY_PREFIX + pci, assignment.status_entry(pci))
        return True

    def _unreachable(self, why: str) -> None:
        if self._reachable is not False:
            log.debug("kubelet pod-resources API at %s not reachable (%s); VF assignments "
                      "not recorded", self.socket, why)
        self._reachable = False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a bug must not end the thread
                log.exception("pod-resources poll failed")
            if self._poked.wait(self.interval):
                self._stop.wait(self.after_allocate)  # also gathers a burst of Allocates
                self._poked.clear()
