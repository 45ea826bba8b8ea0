"""A kubelet stand-in speaking the device plugin API v1beta1 over unix sockets, for tests.

It serves the Registration service on ``kubelet.sock`` and connects to plugins as kubelet does;
:class:`PodResourcesLister` serves the pod-resources API v1 ``List``.
"""

from __future__ import annotations

import queue
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from deviceplugin import api
from deviceplugin.server import socket_name

PB2, PB2_GRPC = api.modules()


class _UnixServer:
    """A gRPC server on ``self.path`` (a unix socket), serving what ``_add`` registers."""

    path: Path
    server: grpc.Server | None = None

    def _add(self, server: grpc.Server) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self._add(self.server)
        self.server.add_insecure_port(f"unix://{self.path}")
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None
        self.path.unlink(missing_ok=True)


class Kubelet(_UnixServer):
    """The kubelet's Registration service on ``kubelet.sock``; records each request."""

    def __init__(self, plugin_dir: Path) -> None:
        self.path = plugin_dir / api.KUBELET_SOCKET
        self.requests: queue.Queue[Any] = queue.Queue()
        self.server: grpc.Server | None = None

    def Register(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.put(request)
        return PB2.Empty()

    def _add(self, server: grpc.Server) -> None:
        PB2_GRPC.add_RegistrationServicer_to_server(self, server)

    def registered(self, count: int, timeout: float = 2.0) -> dict[str, Any]:
        got = {}
        for _ in range(count):
            request = self.requests.get(timeout=timeout)
            got[request.resource_name] = request
        return got


def plugin(plugin_dir: Path, resource: str) -> tuple[grpc.Channel, Any]:
    """A DevicePlugin client for one resource's socket, as kubelet connects to it."""
    channel = grpc.insecure_channel(f"unix://{plugin_dir / socket_name(resource)}")
    return channel, PB2_GRPC.DevicePluginStub(channel)


class PodResourcesLister(_UnixServer):
    """The kubelet's PodResourcesLister v1 on a unix socket, answering from ``pods``:
    ``{(namespace, pod): {container: {resource: [device IDs]}}}``. Counts List calls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pods: dict[tuple[str, str], dict[str, dict[str, list[str]]]] = {}
        self.calls = 0
        self.server: grpc.Server | None = None
        self.pb2, self.pb2_grpc = api.pod_resources_modules()

    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        response = self.pb2.ListPodResourcesResponse()
        for (namespace, name), containers in self.pods.items():
            pod = response.pod_resources.add(name=name, namespace=namespace)
            for container_name, resources in containers.items():
                container = pod.containers.add(name=container_name)
                for resource, ids in resources.items():
                    container.devices.add(resource_name=resource, device_ids=ids)
        return response

    def _add(self, server: grpc.Server) -> None:
        self.pb2_grpc.add_PodResourcesListerServicer_to_server(self, server)
