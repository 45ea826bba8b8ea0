"""The device plugin's gRPC handlers (deviceplugin/server.py) over a real server on a temp
unix socket, for a pool from a fixture sysfs tree. Property: every call succeeds or ends with a
gRPC status the handler chose; never UNKNOWN (an exception escaped) nor a timeout."""

from __future__ import annotations

import re
import shutil
from typing import Any

from tests.fuzz.cases import Broke, show
from tests.fuzz.draw import Draw
from tests.fuzz.sandbox import scratch, tag

PF = "0000:3b:00.0"
OTHER_PF = "0000:86:00.0"
VFS = [f"0000:3b:01.{i}" for i in range(4)] + ["0000:86:02.0", "0000:86:02.1"]
IDS = (*VFS, PF, "", "0000:3b:01.9", "0000:3B:01.0", "0000:3b:01.0\n", "../../x", "a" * 5000,
       "intel.com/sriov_net")
SIZES = (0, 1, 2, 3, 6, -1, 2**31 - 1, -(2**31))
RESOURCE = "intel.com/sriov_net"


def _id(draw: Draw) -> str:
    return draw.choice(IDS) if draw.bool(90) else draw.text(12).replace("\ud800", "")


class DevicePluginHandlers:
    name = "grpc"
    seeded = 150
    memory_mb: int | None = None
    timeout = 30.0

    def generate(self, draw: Draw) -> dict[str, Any]:
        if draw.bool(50):
            return {"rpc": "Allocate", "requests": [
                [_id(draw) for _ in range(draw.int(0, 6))] for _ in range(draw.int(0, 3))]}
        return {"rpc": "GetPreferredAllocation", "requests": [
            {"available": [_id(draw) for _ in range(draw.int(0, 8))],
             "must_include": [_id(draw) for _ in range(draw.int(0, 3))],
             "size": draw.choice(SIZES)} for _ in range(draw.int(0, 3))]}

    def setup(self) -> None:
        import grpc

        from deviceplugin import api
        from deviceplugin.config import parse
        from deviceplugin.pools import build_pools
        from deviceplugin.server import PoolServer
        from nodeagent.discovery import Scanner
        from nodeagent.sysfs import Sysfs
        from tests.sysfs_tree import SysfsTree

        self.dir = scratch(tag(), "grpc")
        tree = SysfsTree(self.dir / "sys")
        tree.add_pf(PF, "ice", netdev="ens1f0", numvfs=4, numa_node=0, vfio=(1,))
        tree.add_pf(OTHER_PF, "i40e", netdev="ens2f0", numvfs=2, numa_node=1)
        node = Scanner(Sysfs(tree.root), hostname="fuzz").scan()
        config = parse({"resourceList": [{"resourceName": "sriov_net",
                                          "selectors": {"vendors": ["8086"]}}]})
        pool = build_pools(config, node)[RESOURCE]
        (self.dir / "dev").mkdir()
        self.server = PoolServer(pool, str(self.dir), sysfs_root=str(tree.root),
                                 dev_root=str(self.dir / "dev"))
        self.server.start()
        self.pb2, pb2_grpc = api.modules()
        self.grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{self.server.path}")
        self.stub = pb2_grpc.DevicePluginStub(self.channel)

    def close(self) -> None:
        if hasattr(self, "channel"):
            self.channel.close()
            self.server.stop(grace=0)
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, case: dict[str, Any]) -> None:
        pb2, grpc = self.pb2, self.grpc
        if case["rpc"] == "Allocate":
            request = pb2.AllocateRequest(container_requests=[
                pb2.ContainerAllocateRequest(devices_ids=ids) for ids in case["requests"]])
            call = self.stub.Allocate
        else:
            request = pb2.PreferredAllocationRequest(container_requests=[
                pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=r["available"], must_include_deviceIDs=r["must_include"],
                    allocation_size=r["size"]) for r in case["requests"]])
            call = self.stub.GetPreferredAllocation
        try:
            response = call(request, timeout=10)
        except grpc.RpcError as err:
            code = err.code()
            if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.INTERNAL):
                said = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", err.details() or "")[:70]
                raise Broke(f"{case['rpc']}: {code.name} ({said})",
                            f"input: {show(case)}\nstatus: {code.name}: {err.details()}"
                            ) from None
            return
        if len(response.container_responses) != len(case["requests"]):
            raise Broke(f"{case['rpc']}: answers for another number of containers",
                        f"input: {show(case)}\nanswer: {response}")
        if case["rpc"] == "GetPreferredAllocation":
            for asked, answer in zip(case["requests"], response.container_responses,
                                     strict=True):
                ids = list(answer.deviceIDs)
                offered = set(asked["available"]) | set(asked["must_include"])
                if len(set(ids)) != len(ids) or not set(ids) <= offered:
                    raise Broke("GetPreferredAllocation: devices not offered, or twice",
                                f"input: {show(case)}\nanswer: {ids}")
