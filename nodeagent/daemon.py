"""The agent daemon: the parts ``nodeagent daemon`` runs, started and stopped in order.

Pods come first: the CNI socket serves as soon as the inventory is read, whatever the
Kubernetes API, the metrics port or provisioning are doing. The API-facing parts never block
the others (they back off on their own threads).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cni.context import Context
from cni.install import install as install_plugins
from cni.server import CniServer
from cni.shim import shim_path
from cni.teardown import Teardown
from deviceplugin.api import DEVICE_PLUGIN_PATH, POD_RESOURCES_SOCKET
from deviceplugin.config import PluginConfig
from deviceplugin.manager import DevicePluginManager
from deviceplugin.podresources import PodResourcesWatch
from deviceplugin.pools import Pool
from deviceplugin.sources import PluginSources
from nodeagent import netns as netns_mod
from nodeagent import settings as agent_settings
from nodeagent.discovery import node_name
from nodeagent.httpserver import HttpServer
from nodeagent.ipam.filestore import secure_state_dir
from nodeagent.metrics import Metrics
from nodeagent.policy.sync import PolicyController
from nodeagent.provision.policy import Policy
from nodeagent.provision.reconciler import ReconcileLoop, Reconciler
from nodeagent.settings import Settings
from nodeagent.status import StatusBoard
from nodeagent.sysfs import Sysfs
from nodeagent.vfstate import VfState
from nodeagent.watch import LiveInventory

log = logging.getLogger("nodeagent")

#: glibc malloc arenas (mallopt M_ARENA_MAX). glibc gives threads up to 8 per core, each a heap
#: of its own that keeps freed memory; the agent's threads mostly wait, and its allocations are
#: small (Python's own allocator serves most), so two are enough (docs/observability.md).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas, before the threads start, unless MALLOC_ARENA_MAX says
    otherwise. False where it cannot be done (another C library)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))  # the C library's
    except (OSError, AttributeError):
        return False


def release_free_memory() -> None:
    """Free what only the cycle collector can (netlink messages decoded by pyroute2 are
    reference cycles), then hand the C heap's free pages back to the kernel (glibc
    malloc_trim): importing the agent's libraries leaves ~1 MiB of freed temporaries, and a
    burst of requests more, that malloc would otherwise keep."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


#: How often the C heap's free pages go back to the kernel. Link churn in the agent's namespace
#: (every pod's host-side veth of the cluster network) is followed by the live inventory in
#: bursts whose freed pages glibc keeps: about 2 MiB of the growth that churn leaves
#: (docs/observability.md, "Memory").
TRIM_INTERVAL = 30.0


#: How often the trimming thread looks whether a burst of CNI requests has ended.
QUIET_CHECK = 1.0


def _trim_periodically(stop: threading.Event, cni: CniServer,
                       interval: float = TRIM_INTERVAL) -> None:
    """Every ``interval``, and once a burst of CNI requests is over (none in flight, some
    served since the last time): what a burst of pods allocated goes back within a second,
    not up to ``interval`` later."""
    last, handled = time.monotonic(), cni.handled
    while not stop.wait(QUIET_CHECK):
        now = time.monotonic()
        burst_over = cni.handled != handled and cni.open_connections() == 0
        if burst_over or now - last >= interval:
            handled = cni.handled
            release_free_memory()
            last = time.monotonic()


@dataclass
class DaemonConfig:
    socket: str
    sysfs_root: str = "/sys"
    workers: int = 32
    device_plugin_config: Path | None = None
    device_plugin_dir: str = DEVICE_PLUGIN_PATH
    pod_resources_socket: str = POD_RESOURCES_SOCKET
    allocation_policy: str = "pack"
    policy: Path | None = None
    status_file: str | None = None
    numvfs_timeout: float = 120.0
    metrics_address: str = ""
    ipam_state_dir: str | None = None
    node_name: str | None = None
    publish_node_state: bool = False
    kubeconfig: str | None = None
    cni_bin_dir: Path | None = None
    #: Enforce MultiNetworkPolicies on the attachments (docs/policy-sync.md); needs the API.
    network_policy: bool = False
    #: State dirs and cluster store (file + flags); None: defaults, with ipam_state_dir.
    settings: Settings | None = None


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.node_name = cfg.node_name or node_name()
        self.sysfs = Sysfs(cfg.sysfs_root)
        self.status = StatusBoard(cfg.status_file)
        self.metrics = Metrics(self.status)
        settings = cfg.settings or agent_settings.load_optional(None)
        if cfg.ipam_state_dir:
            settings = replace(settings, ipam_state_dir=Path(cfg.ipam_state_dir))
        self.settings = settings
        self.vfstate = VfState(settings.state_dir)
        self.whereabouts = None
        if settings.cluster_store is not None and settings.honour_whereabouts:
            from nodeagent.ipam.whereabouts import WhereaboutsWatch

            api = agent_settings.kube_client(settings)
            self.whereabouts = WhereaboutsWatch(api) if api is not None else None
        ipam = agent_settings.ipam_for(
            settings, **({"whereabouts": self.whereabouts.objects} if self.whereabouts else {}))
        self.metrics.track_ipam(ipam)
        self.inventory = LiveInventory(self.sysfs, udev=cfg.sysfs_root == "/sys")
        self.policy = self._policy_controller() if cfg.network_policy else None
        if self.policy is None:  # the fallback must not fail closed for an agent that won't
            from nodeagent.policy.attachments import AttachmentRegistry

            AttachmentRegistry(settings.state_dir).set_enforcing(False)
        # VXLAN overlays (docs/vxlan.md): members in the cluster store, flood entries kept current
        self.overlay = None
        if settings.cluster_store is not None:
            from nodeagent.overlay.service import open_service

            self.overlay = open_service(settings.cluster_store, self.node_name, self.status,
                                        self.metrics.registry)
        # DEL's link deletions finish after the reply; journaled for a crash (docs/teardown.md)
        # next to the socket, on /run's tmpfs; before that under the state dir
        self.teardown = Teardown(f"{cfg.socket}.teardown",
                                 earlier=(settings.state_dir / "teardown",))
        self.cni = CniServer(cfg.socket, workers=cfg.workers,
                             context=Context(ipam=ipam, vfs=self.vfstate,
                                             attachments=self.policy, teardown=self.teardown,
                                             overlay=self.overlay and self.overlay.membership),
                             metrics=self.metrics, status=self.status)
        self.reconcile = ReconcileLoop(
            Reconciler(self.sysfs, self.status, hostname=self.node_name, vfstate=self.vfstate,
                       numvfs_timeout=cfg.numvfs_timeout, metrics=self.metrics),
            cfg.policy) if cfg.policy is not None else None
        self.http = HttpServer(cfg.metrics_address, self.metrics.registry) \
            if cfg.metrics_address else None
        self.plugins: DevicePluginManager | None = None
        self.plugin_sources: PluginSources | None = None
        self.pod_resources: PodResourcesWatch | None = None
        self._plugins_lock = threading.Lock()
        self._stoppers: list = []
        self._scanned = threading.Event()

    def start(self) -> None:
        limit_malloc_arenas()
        if self.http is not None:  # first: probes answer (not ready) while the scan runs
            self.http.add_readiness("inventory", self._scanned.is_set)
            self.http.add_readiness("cni-socket", self.cni.listening)
            # a thread stranded in a pod's namespace was discarded: someone must look
            self.http.add_readiness("netns", netns_mod.healthy)
            self.http.start()
            self._stoppers.append(self.http.stop)
        if self.cfg.cni_bin_dir is not None:
            for path in install_plugins(self.cfg.cni_bin_dir, shim_path()):
                log.info("installed %s", path)
        netns_mod.on_stranded(lambda message: self.status.error("netns", message))
        # State an older agent left readable (or lockable) by other users becomes root's.
        self.vfstate.secure()
        secure_state_dir(self.settings.ipam_state_dir)
        if self.whereabouts is not None:  # before the socket: ADDs wait for the first list
            self.whereabouts.start()
            self._stoppers.append(self.whereabouts.stop)
        if self.policy is not None:  # before the socket: ADDs find the previous records
            self.policy.start()
            self._stoppers.append(self.policy.stop)
        # Before the socket serves: a fallback running while we are down uses the same.
        path = agent_settings.write_effective(self.settings, self.cfg.socket)
        log.info("settings from %s (left in %s for the fallback)", self.settings.source, path)
        node = self.inventory.start()
        self._stoppers.append(self.inventory.stop)
        self._scanned.set()
        log.info("inventory: %d NICs, %d SR-IOV PFs", len(node.nics), len(node.pfs))
        replayed = self.teardown.start(self.cni.context.open_netlink)  # before serving
        if replayed:
            log.info("deleted %d links the previous agent left in teardown", replayed)
        self._stoppers.append(self.teardown.stop)  # after the socket: DELs in flight end first
        self.cni.start()
        self._stoppers.append(self.cni.stop)
        if self.overlay is not None:
            self.overlay.start()
            self._stoppers.append(self.overlay.close)
        if self.http is not None:
            self.http.add_liveness("cni-socket", self.cni.listening)
        if self.reconcile is not None:
            self.reconcile.start(self.inventory.subscribe)
            self._stoppers.append(self.reconcile.stop)
        self._start_device_plugin()
        if self.cfg.publish_node_state:
            self._start_publishing()
        self.status.flush()  # `nodeagent status` works before the first change
        release_free_memory()
        # What starting made lives as long as the agent: the collector's passes (its own, and
        # release_free_memory's after each burst of requests) no longer walk it (~12 ms each).
        gc.freeze()
        stop_trimming = threading.Event()
        threading.Thread(target=_trim_periodically, args=(stop_trimming, self.cni),
                         name="malloc-trim", daemon=True).start()
        self._stoppers.append(stop_trimming.set)

    def _policy_controller(self) -> PolicyController | None:
        """MultiNetworkPolicy enforcement (docs/policy-sync.md): None without an API client."""
        from nodeagent.k8s.client import ApiError, build_client
        from nodeagent.policy.attachments import AttachmentRegistry
        from nodeagent.policy.sync import PolicyController

        try:
            api = build_client(kubeconfig=self.settings.kubeconfig or self.cfg.kubeconfig)
        except ApiError as exc:
            log.error("network policies not enforced: %s", exc)
            self.status.error("policy", f"network policies not enforced: {exc}")
            return None

        def report(section: dict) -> None:
            self.status.set_policy(section)
            self.metrics.policy_synced(section)

        return PolicyController(api, AttachmentRegistry(self.settings.state_dir),
                                node_name=self.node_name, report=report)

    def stop(self) -> None:
        """Stop every part, the CNI socket first: its delegates are killed at once and the
        socket is released, so the next agent serves pods while the rest winds down."""
        if self.cni.stop in self._stoppers:
            self._stoppers.remove(self.cni.stop)
            self._stoppers.append(self.cni.stop)
        for stop in reversed(self._stoppers):
            started = time.monotonic()
            try:
                stop()
            except Exception:  # stop everything else even if one part fails to
                log.exception("stopping %s", stop)
            log.debug("stopped %s in %.0f ms", getattr(stop, "__qualname__", stop),
                      (time.monotonic() - started) * 1000)
        self._stoppers.clear()
        self.status.flush()

    def _start_device_plugin(self) -> None:
        """Pools from config.json and the policy's resourceNames, re-read when either changes;
        the plugin starts once there is something to serve."""
        if self.cfg.device_plugin_config is None and self.cfg.policy is None:
            return
        sources = PluginSources(self.cfg.device_plugin_config, self.cfg.policy,
                                status=self.status)
        self.plugin_sources = sources
        sources.check()
        self._device_plugin_sources(sources.config, sources.policy)
        sources.start(self._device_plugin_sources)
        self._stoppers.append(self._stop_device_plugin)

    def _device_plugin_sources(self, config: PluginConfig, policy: Policy | None) -> None:
        with self._plugins_lock:
            if self.plugins is not None:
                self.plugins.reload(config, policy)
                return
            if self.plugin_sources is None or not self.plugin_sources.wanted:
                return
            self.pod_resources = PodResourcesWatch(
                self.status, lambda: list(self.plugins.servers) if self.plugins else [],
                socket=self.cfg.pod_resources_socket)
            self.plugins = DevicePluginManager(
                config, self.cfg.device_plugin_dir, policy=self.cfg.allocation_policy,
                on_pools=self._pools_changed, node_policy=policy,
                sysfs_root=self.cfg.sysfs_root, on_allocate=self.pod_resources.poke)
            self.plugins.attach(self.inventory)
            self.pod_resources.start()
            if self.reconcile is not None:  # a VF the kubelet gave a pod is in use
                self.reconcile.reconciler.in_use.kubelet_assigned = self.pod_resources.pods
        log.info("device plugin: resources %s", ", ".join(sorted(self.plugins.servers)) or "none")

    def _stop_device_plugin(self) -> None:
        if self.plugin_sources is not None:
            self.plugin_sources.stop()
        with self._plugins_lock:
            if self.pod_resources is not None:
                self.pod_resources.stop()
            if self.plugins is not None:
                self.plugins.stop()

    def _pools_changed(self, pools: dict[str, Pool]) -> None:
        attached = {a.pci for a in self.vfstate.all()}
        if self.pod_resources is not None:
            attached |= self.pod_resources.assigned().keys()
        self.status.set_pools({
            name: {"total": len(pool.devices),
                   "allocated": sum(d.id in attached for d in pool.devices),
                   "unhealthy": sum(not d.healthy for d in pool.devices)}
            for name, pool in pools.items()})

    def _start_publishing(self) -> None:
        # Imported here: the kubernetes package is heavy and only needed in a cluster.
        from nodeagent.k8s.client import ApiError, build_client
        from nodeagent.k8s.events import NodeEventRecorder
        from nodeagent.k8s.nodestate import NodeStatePublisher

        try:
            api = build_client(kubeconfig=self.cfg.kubeconfig)
        except ApiError as exc:
            log.error("node state not published: %s", exc)
            self.status.error("kubernetes", str(exc))
            return
        self._stoppers.append(api.close)
        publisher = NodeStatePublisher(api, self.node_name, self.status,
                                       lambda: self.inventory.snapshot)
        publisher.attach(self.inventory)
        publisher.start()
        self._stoppers.append(publisher.stop)
        events = NodeEventRecorder(api, self.node_name)
        events.attach(self.status)
        events.start()
        self._stoppers.append(events.stop)
