"""Registration with the kubelet, and noticing when the kubelet restarts.

A restarting kubelet recreates ``kubelet.sock`` and removes every plugin socket in the
directory. :class:`KubeletWatch` polls the socket's stat signature (nodeagent.fileio) and the
plugin sockets every ``interval`` seconds and calls back so pools rebind and re-register.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import grpc

from deviceplugin import api
from nodeagent.fileio import Signature, signature

log = logging.getLogger(__name__)



def register(plugin_dir: str, endpoint: str, resource_name: str, *,
             timeout: float = 5.0) -> None:
    """One Register call on ``<plugin_dir>/kubelet.sock``; raises grpc.RpcError on failure."""
    pb2, pb2_grpc = api.modules()
    target = f"unix://{os.path.join(plugin_dir, api.KUBELET_SOCKET)}"
    with grpc.insecure_channel(target) as channel:
        pb2_grpc.RegistrationStub(channel).Register(
            pb2.RegisterRequest(
                version=api.VERSION,
                endpoint=endpoint,
                resource_name=resource_name,
                options=pb2.DevicePluginOptions(get_preferred_allocation_available=True),
            ),
            timeout=timeout,
            wait_for_ready=False,
        )


class KubeletWatch:
    """Calls ``on_tick(kubelet_changed)`` every ``interval`` from one thread until stopped."""

    def __init__(self, plugin_dir: str, on_tick: Callable[[bool], None], *,
                 interval: float = 0.1) -> None:
        self.socket = os.path.join(plugin_dir, api.KUBELET_SOCKET)
        self.on_tick = on_tick
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: Signature | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="deviceplugin-kubelet-watch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            current = signature(self.socket)
            changed = current is not None and current != self._last
            if current != self._last and current is not None:
                log.info("kubelet socket %s (re)appeared", self.socket)
            self._last = current
            try:
                self.on_tick(changed)
            except Exception:
                log.exception("device plugin registration pass failed")
            self._stop.wait(self.interval)
