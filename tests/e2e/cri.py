"""A small CRI client (k8s.io/cri-api runtime/v1) for driving a container runtime as the
kubelet does: pod sandboxes only.

The gRPC stubs are generated from ``proto/api.proto`` with grpcio-tools on first use, the way
the project generates the kubelet's and etcd's (nodeagent.protostubs).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from nodeagent.protostubs import ProtoStubs

STUBS = ProtoStubs(Path(__file__).resolve().parent / "proto", env="NODEAGENT_CRI_STUBS",
                   cache_name="cri-api")


def api() -> tuple[Any, Any]:
    """The generated modules (messages, services)."""
    return STUBS.load("api_pb2", "api_pb2_grpc")


@dataclass(frozen=True)
class Sandbox:
    id: str
    name: str
    netns: str  # the network namespace path the runtime handed to CNI
    ip: str  # the pod IP the runtime reports (its first network's)


class CriClient:
    """The kubelet's side of RuntimeService, over the runtime's unix socket."""

    def __init__(self, socket: Path, timeout: float = 60.0) -> None:
        self.pb, grpc_mod = api()
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.runtime = grpc_mod.RuntimeServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def version(self) -> Any:
        return self.runtime.Version(self.pb.VersionRequest(version="v1"), timeout=self.timeout)

    def run_pod(self, name: str, namespace: str = "e2e") -> Sandbox:
        """RunPodSandbox as the kubelet sends it for a pod on the pod network."""
        pb = self.pb
        uid = str(uuid.uuid4())
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            hostname=name,
            labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                    "io.kubernetes.pod.uid": uid},
            linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER,
                                                     ipc=pb.POD))),
        )
        reply = self.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                           timeout=self.timeout)
        return self.status(reply.pod_sandbox_id)

    def status(self, sandbox_id: str) -> Sandbox:
        reply = self.runtime.PodSandboxStatus(
            self.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True),
            timeout=self.timeout)
        info = json.loads(reply.info.get("info", "{}"))
        netns = next((ns.get("path", "") for ns in
                      info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", [])
                      if ns.get("type") == "network"), "")
        return Sandbox(id=reply.status.id, name=reply.status.metadata.name, netns=netns,
                       ip=reply.status.network.ip)

    def stop_pod(self, sandbox_id: str) -> None:
        self.runtime.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                                    timeout=self.timeout)

    def remove_pod(self, sandbox_id: str) -> None:
        self.runtime.RemovePodSandbox(
            self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout)

    def status_info(self) -> dict[str, str]:
        """The runtime's verbose status (containerd: ``cniconfig``, the networks it loaded)."""
        reply = self.runtime.Status(self.pb.StatusRequest(verbose=True), timeout=self.timeout)
        return dict(reply.info)

    def sandbox_ids(self) -> list[str]:
        reply = self.runtime.ListPodSandbox(self.pb.ListPodSandboxRequest(), timeout=self.timeout)
        return [item.id for item in reply.items]
