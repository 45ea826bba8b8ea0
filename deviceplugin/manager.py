"""Runs every configured pool: servers, registration, and updates from node snapshots."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

import grpc

from deviceplugin import api
from deviceplugin.config import PluginConfig
from deviceplugin.pools import HealthPolicy, Pool, build_pools, log_unsupported
from deviceplugin.registrar import KubeletWatch, register
from deviceplugin.server import PoolServer
from nodeagent.model import Node
from nodeagent.watch import LiveInventory

log = logging.getLogger(__name__)


class DevicePluginManager:
    """One :class:`PoolServer` per resource; re-registers them when the kubelet restarts.

    Feed it snapshots with :meth:`update`, :meth:`attach` (a LiveInventory) or :meth:`follow`
    (any iterable of snapshots, e.g. in tests).
    """

    def __init__(
        self,
        config: PluginConfig,
        plugin_dir: str = api.DEVICE_PLUGIN_PATH,
        *,
        health: HealthPolicy | None = None,
        policy: str = "pack",
        poll_interval: float = 0.1,
        retry_interval: float = 1.0,
        on_pools: Callable[[dict[str, Pool]], None] | None = None,
    ) -> None:
        self.config = config
        self.plugin_dir = plugin_dir
        self.health = health or HealthPolicy()
        self.policy = policy
        self.retry_interval = retry_interval
        self.on_pools = on_pools  # told every pool's devices after each update (status, metrics)
        self.servers: dict[str, PoolServer] = {}
        self.registrations: dict[str, int] = {}  # successful Register calls per resource
        self._pending: dict[str, float] = {}  # resource -> earliest next attempt
        self._lock = threading.Lock()
        self._watch = KubeletWatch(plugin_dir, self._tick, interval=poll_interval)
        self._unsubscribe: Callable[[], None] | None = None
        self._follower: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, node: Node) -> None:
        log_unsupported(self.config)
        os.makedirs(self.plugin_dir, exist_ok=True)
        pools = build_pools(self.config, node, self.health)
        for name, pool in pools.items():
            server = PoolServer(pool, self.plugin_dir, policy=self.policy)
            server.start()
            self.servers[name] = server
            self.registrations[name] = 0
        self._watch.start()
        if self.on_pools is not None:
            self.on_pools(pools)

    def update(self, node: Node) -> None:
        pools = build_pools(self.config, node, self.health)
        for name, pool in pools.items():
            self.servers[name].update(pool)
        if self.on_pools is not None:
            self.on_pools(pools)

    def attach(self, inventory: LiveInventory) -> None:
        """Start from the inventory's snapshot and follow every change."""
        self.start(inventory.snapshot)
        self._unsubscribe = inventory.subscribe(lambda node, _changed: self.update(node))

    def follow(self, snapshots: Iterable[Node]) -> None:
        """Apply snapshots from an iterable on a background thread (already started)."""

        def run() -> None:
            for node in snapshots:
                if self._stopping.is_set():
                    return
                self.update(node)

        self._follower = threading.Thread(target=run, name="deviceplugin-follow", daemon=True)
        self._follower.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._watch.stop()
        for server in self.servers.values():
            server.stop()
        if self._follower is not None:
            self._follower.join(timeout=5)

    # -- registration -----------------------------------------------------------------------

    def _tick(self, kubelet_changed: bool) -> None:
        now = time.monotonic()
        with self._lock:
            for name, server in self.servers.items():
                if not os.path.exists(server.path):
                    log.info("socket of %s was removed; serving it again", name)
                    server.restart()
                    self._pending[name] = now
                elif kubelet_changed:
                    self._pending[name] = now
            for name, due in list(self._pending.items()):
                if due > now:
                    continue
                server = self.servers[name]
                try:
                    register(self.plugin_dir, server.endpoint, name)
                except grpc.RpcError as exc:
                    log.warning("registering %s with the kubelet failed: %s", name, exc.code())
                    self._pending[name] = now + self.retry_interval
                    continue
                del self._pending[name]
                self.registrations[name] += 1
                log.info("registered %s with the kubelet (endpoint %s)", name, server.endpoint)
