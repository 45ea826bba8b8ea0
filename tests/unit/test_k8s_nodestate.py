"""NodeNetworkState publishing against the replay API server: create with the Node as owner,
write only on change, conflicts, a deleted resource, the API going away and coming back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nodeagent.k8s.client import Backoff, build_client
from nodeagent.k8s.nodestate import NodeStatePublisher, build_status
from nodeagent.model import Netdev, Nic, Node, PciInfo, Sriov, VfConfig, VirtualFunction
from nodeagent.status import BLOCKED, FAILED, IN_SYNC, PfStatus, StatusBoard
from tests.k8s_replay import ReplayApiServer, crd_validator
from tests.waiting import wait_until

NODE = "worker-1"
CR = f"/apis/nodeagent.io/v1alpha1/nodenetworkstates/{NODE}"
VALIDATOR = crd_validator("nodeagent.io", "nodenetworkstates")


def inventory(numvfs: int = 2) -> Node:
    vfs = tuple(
        VirtualFunction(
            i, PciInfo(f"0000:3b:01.{i}", "8086", "1889", "iavf", 1, 13 + i),
            Netdev(f"ens1f0v{i}", 10 + i, f"02:00:00:3b:01:0{i}", 1500, "up") if i else None,
            VfConfig(mac=f"02:00:00:00:00:0{i}", vlan=100 * i))
        for i in range(numvfs))
    pf = Nic("0000:3b:00.0", PciInfo("0000:3b:00.0", "8086", "1592", "ice", 1, 12),
             (Netdev("ens1f0", 2, "b4:96:91:aa:00:01", 9000, "up"),),
             Sriov(256, numvfs, True, "legacy", vfs))
    plain = Nic("0000:00:03.0", PciInfo("0000:00:03.0", "1af4", "1041", "virtio-pci"),
                (Netdev("eno1", 1, "02:fc:00:00:00:01", 1500, "up", default_route=True),))
    return Node(NODE, (plain, pf))


@pytest.fixture
def api() -> Iterator[ReplayApiServer]:
    validators = {("nodeagent.io", "nodenetworkstates"): VALIDATOR}
    with ReplayApiServer(validators) as server:
        server.add_node(NODE)
        yield server


class Harness:
    def __init__(self, api: ReplayApiServer, min_interval: float = 0.0) -> None:
        self.api = api
        self.board = StatusBoard()
        self.node: Node | None = inventory()
        self.client = build_client(host=api.url, timeout=(1.0, 2.0))
        self.backoff = Backoff(0.05, 0.2)
        self.publisher = NodeStatePublisher(self.client, NODE, self.board, lambda: self.node,
                                            min_interval=min_interval, backoff=self.backoff)

    def status_writes(self) -> list[Any]:
        return [c for c in self.api.calls() if c.method == "PUT" and c.path == CR + "/status"]

    def stored(self) -> dict[str, Any]:
        return self.api.get("nodeagent.io", "nodenetworkstates", NODE)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the publisher has handled everything reported so far."""
        target = self.publisher.passes + 1
        self.publisher.publish()
        assert self.publisher.wait_passes(target, timeout)


@pytest.fixture
def harness(api: ReplayApiServer) -> Iterator[Harness]:
    h = Harness(api)
    yield h
    h.publisher.stop()
    h.client.close()


def test_first_publish_creates_the_resource_owned_by_the_node(harness: Harness) -> None:
    harness.board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", IN_SYNC, numvfs=2, desired_numvfs=2))
    harness.publisher.start()
    assert wait_until(lambda: harness.status_writes())
    node_uid = harness.api.get("", "nodes", NODE)["metadata"]["uid"]
    obj = harness.stored()
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid}]
    status = obj["status"]
    assert [p["name"] for p in status["pfs"]] == ["ens1f0"]  # PFs only, not eno1
    pf = status["pfs"][0]
    assert pf["provisioning"]["state"] == IN_SYNC and pf["numVfs"] == 2
    assert [v["pciAddress"] for v in pf["vfs"]] == ["0000:3b:01.0", "0000:3b:01.1"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "Degraded": "False"}
    verbs = harness.api.recorded_calls()
    assert ("get", "", "nodes", "") in verbs
    assert ("create", "nodeagent.io", "nodenetworkstates", "") in verbs
    assert ("update", "nodeagent.io", "nodenetworkstates", "status") in verbs


def test_no_write_when_nothing_changed_one_after_a_change(harness: Harness) -> None:
    harness.publisher.start()
    assert wait_until(lambda: harness.status_writes())
    harness.settle()
    harness.board.set_pools({})  # no change on the board
    harness.settle()
    assert len(harness.status_writes()) == 1

    harness.board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", FAILED, "sriov_numvfs write failed:"
                                  " EIO", numvfs=0, desired_numvfs=2))
    harness.settle()
    assert len(harness.status_writes()) == 2
    status = harness.stored()["status"]
    assert status["pfs"][0]["provisioning"]["state"] == FAILED
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "EIO" in degraded["message"]


def test_inventory_change_is_published(harness: Harness) -> None:
    harness.publisher.start()
    assert wait_until(lambda: harness.status_writes())
    harness.node = inventory(numvfs=4)
    harness.publisher.on_inventory(harness.node, frozenset({"0000:3b:00.0"}))
    assert wait_until(lambda: len(harness.stored()["status"]["pfs"][0]["vfs"]) == 4)


def test_a_burst_of_changes_is_coalesced(api: ReplayApiServer) -> None:
    h = Harness(api, min_interval=0.5)
    try:
        h.publisher.start()
        assert wait_until(lambda: h.status_writes())
        for n in range(10):
            h.board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", BLOCKED, f"reason {n}"))
        assert wait_until(lambda: "reason 9" in str(h.stored()["status"]))
        h.settle()
        assert len(h.status_writes()) == 2
    finally:
        h.publisher.stop()


def test_conflict_rereads_and_retries(harness: Harness) -> None:
    harness.publisher.start()
    assert wait_until(lambda: harness.status_writes())
    harness.settle()
    # Someone else writes the object: the publisher's resourceVersion is now stale.
    obj = harness.stored()
    obj["metadata"].setdefault("labels", {})["team"] = "net"
    harness.client.request("PUT", CR, body=obj)
    before = len(harness.api.calls())
    harness.board.error("provision", "PF 0000:3b:00.0: numvfs write timed out", "0000:3b:00.0")
    assert wait_until(lambda: "timed out" in str(harness.stored()["status"]["recentErrors"]))
    after = [(c.method, c.path) for c in harness.api.calls()[before:]]
    assert after[:3] == [("PUT", CR + "/status"), ("GET", CR), ("PUT", CR + "/status")]
    assert harness.stored()["metadata"]["labels"]["team"] == "net"
    assert harness.publisher.last_error is None


def test_injected_conflict_is_retried(harness: Harness) -> None:
    harness.publisher.start()
    assert wait_until(lambda: harness.status_writes())
    harness.settle()
    harness.api.inject("PUT", CR + "/status", 409, times=2)
    harness.board.set_pools({"sriov_netdevice": {"total": 2, "allocated": 1, "unhealthy": 0,
                                                 "resourceName": "intel.com/sriov_netdevice"}})
    assert wait_until(lambda: harness.stored()["status"]["pools"])
    assert harness.stored()["status"]["pools"] == [
        {"name": "sriov_netdevice", "resourceName": "intel.com/sriov_netdevice", "total": 2,
         "allocated": 1, "unhealthy": 0}]
    assert len(harness.status_writes()) == 4  # first, two conflicts, the retry


def test_deleted_resource_is_recreated(harness: Harness) -> None:
    harness.publisher.start()
    assert wait_until(lambda: harness.status_writes())
    harness.settle()
    first_uid = harness.stored()["metadata"]["uid"]
    harness.client.request("DELETE", CR)
    harness.board.error("cni", "ADD failed: no free VF", "telco/cnf-0")
    assert wait_until(lambda: ((harness.stored() or {}).get("status") or {}).get("recentErrors"))
    obj = harness.stored()
    assert obj["metadata"]["uid"] != first_uid
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "Node"
    assert obj["status"]["recentErrors"][0]["message"] == "ADD failed: no free VF"


@pytest.mark.parametrize("mode", ["closed", "reset"])
def test_api_down_backs_off_and_publishes_the_newest_state_after(harness: Harness,
                                                                 mode: str) -> None:
    harness.publisher.start()
    assert wait_until(lambda: harness.status_writes())
    harness.settle()
    harness.api.down(mode)
    harness.board.error("provision", "first failure")
    assert wait_until(lambda: harness.publisher.last_error is not None)
    # The publisher is failing and backing off; reporting still works.
    for n in range(20):
        harness.board.error("provision", f"failure {n}")
        harness.publisher.publish()
    harness.board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", BLOCKED, "carries the default route"))
    assert harness.publisher.last_error is not None
    assert harness.backoff._next > harness.backoff.initial  # it backed off
    harness.api.up()
    assert wait_until(lambda: "failure 19" in str(harness.stored()["status"]["recentErrors"]))
    status = harness.stored()["status"]
    assert status["pfs"][0]["provisioning"]["state"] == BLOCKED
    assert len(status["recentErrors"]) == 20
    assert wait_until(lambda: harness.publisher.last_error is None)


def test_server_errors_back_off_with_growing_delays(harness: Harness) -> None:
    delays: list[float] = []
    real_next = harness.backoff.next

    def recording_next() -> float:
        delays.append(real_next())
        return delays[-1]

    harness.backoff.next = recording_next  # type: ignore[method-assign]
    harness.api.inject("GET", CR, 503, times=2)
    harness.api.inject("GET", CR, 429, times=1, headers={"Retry-After": "0"})
    harness.publisher.start()
    assert wait_until(lambda: harness.status_writes())
    assert len(delays) == 3
    assert delays[0] < delays[1] < delays[2] <= 0.2 * 1.2


def test_restart_with_unchanged_state_writes_nothing(api: ReplayApiServer) -> None:
    h = Harness(api)
    h.board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", IN_SYNC, numvfs=2, desired_numvfs=2))
    h.publisher.start()
    assert wait_until(lambda: h.status_writes())
    h.settle()
    h.publisher.stop()
    again = NodeStatePublisher(h.client, NODE, h.board, lambda: h.node, min_interval=0)
    again.start()
    try:
        assert again.wait_passes(1, 10)
        assert len(h.status_writes()) == 1
    finally:
        again.stop()


def test_stop_is_prompt_while_backing_off(api: ReplayApiServer) -> None:
    h = Harness(api)
    h.publisher.backoff = Backoff(30.0, 60.0)
    api.down()
    h.publisher.start()
    assert wait_until(lambda: h.publisher.last_error is not None)
    h.publisher.stop(timeout=5)
    assert h.publisher._thread is not None and not h.publisher._thread.is_alive()


# -- the status document ----------------------------------------------------------------------


def test_status_maps_vfs_allocations_and_keeps_transition_times() -> None:
    board = StatusBoard()
    board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", FAILED, "EIO", 0, 2, since=1_700_000_000))
    board.set_allocation("c0ffee/net1", {"pod": "cnf-0", "namespace": "telco", "network": "a",
                                         "device": "0000:3b:01.1", "ips": ["10.1.0.5"],
                                         "kind": "sriov"})
    for n in range(25):
        board.error("provision", f"e{n}")
    status = build_status(board.snapshot(), inventory(), now=1_700_000_100)
    pf = status["pfs"][0]
    assert pf["provisioning"] == {"state": FAILED, "reason": "EIO", "desiredNumVfs": 2,
                                  "since": "2023-11-14T22:13:20Z"}
    vf0, vf1 = pf["vfs"]
    assert (vf0["allocated"], vf0["pod"], vf0["netdev"]) == (False, None, None)
    assert (vf1["allocated"], vf1["pod"], vf1["netdev"]) == (True, "telco/cnf-0", "ens1f0v1")
    assert (vf1["mac"], vf1["vlan"]) == ("02:00:00:00:00:01", 100)
    assert [e["message"] for e in status["recentErrors"]] == [f"e{n}" for n in range(5, 25)]
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "PfFailed")
    # Later, still failed: the transition time stays; once in sync it moves.
    later = build_status(board.snapshot(), inventory(), previous=status, now=1_700_000_500)
    assert later["conditions"][0]["lastTransitionTime"] == ready["lastTransitionTime"]
    board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", IN_SYNC, numvfs=2, desired_numvfs=2))
    fixed = build_status(board.snapshot(), inventory(), previous=later, now=1_700_000_900)
    assert fixed["conditions"][0]["status"] == "True"
    assert fixed["conditions"][0]["lastTransitionTime"] == "2023-11-14T22:28:20Z"


def test_unmanaged_pf_has_no_provisioning_and_vanished_managed_pf_stays() -> None:
    board = StatusBoard()
    board.set_pf(PfStatus("0000:5e:00.0", "ens2f0", BLOCKED, "default route"))
    status = build_status(board.snapshot(), inventory())
    assert [p["pciAddress"] for p in status["pfs"]] == ["0000:3b:00.0", "0000:5e:00.0"]
    assert "provisioning" not in status["pfs"][0]
    assert status["pfs"][1]["provisioning"]["state"] == BLOCKED


def test_status_fits_the_crd_schema() -> None:
    board = StatusBoard()
    board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", IN_SYNC, numvfs=2, desired_numvfs=2))
    board.set_pf(PfStatus("0000:5e:00.0", None, FAILED, "gone"))
    board.set_pools({"p": {"total": 3, "allocated": 1, "unhealthy": 1}})
    board.error("provision", "boom", "0000:5e:00.0")
    board.error("cni", "no object")
    obj = {"apiVersion": "nodeagent.io/v1alpha1", "kind": "NodeNetworkState",
           "metadata": {"name": NODE}, "spec": {},
           "status": build_status(board.snapshot(), inventory())}
    errors = [e.message for e in VALIDATOR.iter_errors(obj)]
    assert errors == []
    # and the validator does catch a bad document
    obj["status"]["pfs"][0]["provisioning"]["state"] = "sideways"
    assert list(VALIDATOR.iter_errors(obj))
