"""One pool's DevicePlugin gRPC server on its own unix socket."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from deviceplugin import api
from deviceplugin.allocate import MAX_REQUEST_IDS, AllocationError, VfioGroupPaths, allocate
from deviceplugin.pools import Pool
from deviceplugin.preferred import preferred

log = logging.getLogger(__name__)


def socket_name(full_resource_name: str) -> str:
    """``intel.com/sriov_net`` -> ``nodeagent-intel.com_sriov_net.sock``."""
    return f"nodeagent-{full_resource_name.replace('/', '_')}.sock"


class PoolServer:
    """Serves one pool. :meth:`update` swaps the device list and wakes ListAndWatch streams."""

    def __init__(self, pool: Pool, plugin_dir: str, *, policy: str = "pack",
                 max_workers: int = 8, sysfs_root: str = "/sys", dev_root: str = "/dev",
                 on_allocate: Callable[[str, list[str]], None] | None = None) -> None:
        self.pb2, self.pb2_grpc = api.modules()
        self.plugin_dir = plugin_dir
        self.resource = pool.resource
        self.endpoint = socket_name(pool.resource.full_name)
        self.path = os.path.join(plugin_dir, self.endpoint)
        self.policy = policy
        self.max_workers = max_workers
        self.group_paths = VfioGroupPaths(sysfs_root, dev_root)
        self.on_allocate = on_allocate  # (resource, device IDs) after a successful Allocate
        self._pool = pool
        self._version = 0
        self._stopping = False
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None

    @property
    def pool(self) -> Pool:
        with self._cond:
            return self._pool

    def update(self, pool: Pool) -> None:
        with self._cond:
            if pool == self._pool:
                return
            self._pool = pool
            self._version += 1
            self._cond.notify_all()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (replacing a stale one) and serve."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with self._cond:
            self._stopping = False
        server = grpc.server(futures.ThreadPoolExecutor(
            max_workers=self.max_workers, thread_name_prefix=f"dp-{self.resource.resource_name}"))
        self.pb2_grpc.add_DevicePluginServicer_to_server(_Servicer(self), server)
        server.add_insecure_port(f"unix://{self.path}")
        server.start()
        self._server = server

    def stop(self, grace: float = 0.5) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def restart(self) -> None:
        self.stop(grace=0)
        self.start()

    # -- messages ---------------------------------------------------------------------------

    def device_list(self, pool: Pool) -> Any:
        pb2 = self.pb2
        devices = []
        for d in pool.devices:
            device = pb2.Device(ID=d.id, health=api.HEALTHY if d.healthy else api.UNHEALTHY)
            if not pool.resource.exclude_topology and d.numa_node is not None:
                device.topology.nodes.add(ID=d.numa_node)
            devices.append(device)
        return pb2.ListAndWatchResponse(devices=devices)

    def watch(self, context: grpc.ServicerContext) -> Iterator[Any]:
        with self._cond:
            version, pool = self._version, self._pool
        yield self.device_list(pool)
        while True:
            with self._cond:
                while (self._version == version and not self._stopping
                       and context.is_active()):
                    self._cond.wait(0.2)
                if self._stopping or not context.is_active():
                    return
                version, pool = self._version, self._pool
            yield self.device_list(pool)


class _Servicer:
    """The DevicePlugin service; gRPC calls these by name."""

    def __init__(self, owner: PoolServer) -> None:
        self.owner = owner
        self.pb2 = owner.pb2

    def GetDevicePluginOptions(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.pb2.DevicePluginOptions(pre_start_required=False,
                                            get_preferred_allocation_available=True)

    def ListAndWatch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self.owner.watch(context)

    def GetPreferredAllocation(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Lenient about IDs (a device may leave the pool between ListAndWatch and this call:
        unknown available IDs are skipped, must-include ones kept), strict about sizes."""
        devices = self.owner.pool.by_id()
        response = self.pb2.PreferredAllocationResponse()
        for i, req in enumerate(request.container_requests):
            where = f"container_requests[{i}]"
            problem = None
            for name in ("available_deviceIDs", "must_include_deviceIDs"):
                if len(getattr(req, name)) > MAX_REQUEST_IDS:
                    problem = f"{where}.{name}: more than {MAX_REQUEST_IDS} device IDs"
            if req.allocation_size < 0:
                problem = f"{where}.allocation_size: {req.allocation_size} is negative"
            if problem:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            ids = preferred(devices, req.available_deviceIDs, req.must_include_deviceIDs,
                            req.allocation_size, self.owner.policy)
            response.container_responses.add(deviceIDs=ids)
        return response

    def Allocate(self, request: Any, context: grpc.ServicerContext) -> Any:
        pool = self.owner.pool
        devices = pool.by_id()
        vhost = any(s.need_vhost_net for s in pool.resource.selectors)
        response = self.pb2.AllocateResponse()
        for i, req in enumerate(request.container_requests):
            try:
                result = allocate(pool.resource.full_name, devices, req.devices_ids,
                                  need_vhost_net=vhost, group_paths=self.owner.group_paths)
            except AllocationError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"container_requests[{i}]: {exc}")
            container = response.container_responses.add()
            container.envs.update(result.envs)
            for container_path, host_path, permissions in result.device_specs:
                container.devices.add(container_path=container_path, host_path=host_path,
                                      permissions=permissions)
        if self.owner.on_allocate is not None:
            ids = [i for req in request.container_requests for i in req.devices_ids]
            try:
                self.owner.on_allocate(pool.resource.full_name, ids)
            except Exception:  # bookkeeping must never fail the kubelet's call
                log.exception("after Allocate of %s", pool.resource.full_name)
        return response

    def PreStartContainer(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.pb2.PreStartContainerResponse()
