"""Runs every configured pool: servers, registration, and updates from node snapshots.

Pools come from ``config.json`` and from the node policy's ``resourceName``s
(:mod:`deviceplugin.policypools`); :meth:`DevicePluginManager.reload` swaps either without a
restart: new resources get a server and register, removed ones stop and lose their socket,
changed ones send the new list on every open ListAndWatch stream.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

import grpc

from deviceplugin import api
from deviceplugin.config import PluginConfig
from deviceplugin.policypools import merged, shadowed
from deviceplugin.pools import HealthPolicy, Pool, build_pools, log_unsupported
from deviceplugin.registrar import KubeletWatch, register
from deviceplugin.server import PoolServer
from nodeagent.model import Node
from nodeagent.provision.policy import Policy
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
        node_policy: Policy | None = None,
        sysfs_root: str = "/sys",
        dev_root: str = "/dev",
        on_allocate: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self.config = config
        self.node_policy = node_policy
        self.sysfs_root = sysfs_root  # where Allocate looks up VFIO groups (noiommu)
        self.dev_root = dev_root
        self.on_allocate = on_allocate  # (resource, device IDs) after each successful Allocate
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
        self._pools_lock = threading.Lock()  # one update or reload at a time
        self._node: Node | None = None

    def start(self, node: Node) -> None:
        log_unsupported(self.config)
        self._warn_shadowed()
        os.makedirs(self.plugin_dir, exist_ok=True)
        with self._pools_lock:
            self._node = node
            pools = self._pools(node)
            for name, pool in pools.items():
                self._add(name, pool, register_now=False)  # the first watch tick registers
        self._watch.start()
        if self.on_pools is not None:
            self.on_pools(pools)

    def update(self, node: Node) -> None:
        with self._pools_lock:
            self._node = node
            pools = self._pools(node)
            for name, pool in pools.items():
                server = self.servers.get(name)
                if server is not None:
                    server.update(pool)
        if self.on_pools is not None:
            self.on_pools(pools)

    def reload(self, config: PluginConfig, node_policy: Policy | None = None) -> None:
        """Serve ``config.json``'s pools plus ``node_policy``'s from now on (no restart)."""
        with self._pools_lock:
            self.config, self.node_policy = config, node_policy
            log_unsupported(config)
            self._warn_shadowed()
            if self._node is None:  # not started: start() builds from the new config
                return
            pools = self._pools(self._node)
            for name in [n for n in self.servers if n not in pools]:
                self._remove(name)
            for name, pool in pools.items():
                if name in self.servers:
                    self.servers[name].update(pool)
                else:
                    self._add(name, pool, register_now=True)
        log.info("device plugin reloaded: resources %s", ", ".join(sorted(pools)) or "none")
        if self.on_pools is not None:
            self.on_pools(pools)

    def _pools(self, node: Node) -> dict[str, Pool]:
        return build_pools(merged(self.config, self.node_policy, node), node, self.health)

    def _warn_shadowed(self) -> None:
        for name in shadowed(self.config, self.node_policy):
            log.warning("resource %s is defined by config.json and by the node policy; the "
                        "config.json pool is served", name)

    def _add(self, name: str, pool: Pool, *, register_now: bool) -> None:
        server = PoolServer(pool, self.plugin_dir, policy=self.policy,
                            sysfs_root=self.sysfs_root, dev_root=self.dev_root,
                            on_allocate=self.on_allocate)
        server.start()
        with self._lock:
            self.servers[name] = server
            self.registrations[name] = 0
            if register_now:
                self._pending[name] = time.monotonic()
        log.info("serving %s on %s", name, server.path)

    def _remove(self, name: str) -> None:
        with self._lock:
            server = self.servers.pop(name)
            self.registrations.pop(name, None)
            self._pending.pop(name, None)
        server.stop()  # ends ListAndWatch streams; the kubelet drops the resource's devices
        log.info("stopped serving %s (no longer configured)", name)

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
        with self._pools_lock:
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
