"""The kubelet APIs the device plugin speaks: constants and the generated protobuf/gRPC modules.

Two .protos in ``proto/``: the device plugin API v1beta1 and the kubelet's PodResourcesLister
v1 (the subset the agent reads), generated at build time (or on first use) by
:mod:`nodeagent.protostubs`; ``$NODEAGENT_DEVICEPLUGIN_STUBS`` may name a prebuilt directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nodeagent.protostubs import ProtoStubs

VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins/"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"

MODULE = "kubelet_deviceplugin_v1beta1"  # the .proto's name: <MODULE>_pb2, <MODULE>_pb2_grpc
POD_RESOURCES_MODULE = "kubelet_podresources_v1"
STUBS = ProtoStubs(Path(__file__).with_name("proto"), env="NODEAGENT_DEVICEPLUGIN_STUBS",
                   cache_name="deviceplugin")


def _modules(module: str) -> tuple[Any, Any]:
    return STUBS.load(f"{module}_pb2", f"{module}_pb2_grpc")


def modules() -> tuple[Any, Any]:
    """``(pb2, pb2_grpc)`` of the device plugin API: generated on first call."""
    return _modules(MODULE)


def pod_resources_modules() -> tuple[Any, Any]:
    """``(pb2, pb2_grpc)`` of the kubelet's PodResourcesLister v1."""
    return _modules(POD_RESOURCES_MODULE)
