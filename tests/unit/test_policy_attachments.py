"""The attachment registry (durable, 0600, dropped on DEL/GC) and which
NetworkAttachmentDefinition an interface belongs to, by Multus's rules."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from nodeagent.policy.attachments import (
    AttachmentRecord,
    AttachmentRegistry,
    nad_network_name,
    parse_networks,
    pod_interfaces,
)
from tests.k8s_replay import fixture


def record(cid: str = "c0ffee", ifname: str = "net1", pod: str = "server-0",
           network: str = "macnet") -> AttachmentRecord:
    return AttachmentRecord(cid, ifname, "telco", pod, f"/run/netns/{cid}", network, "macvlan",
                            ("10.77.0.5",), since=1700000000.5)


def test_records_survive_a_restart_and_are_root_only(tmp_path: Path) -> None:
    reg = AttachmentRegistry(tmp_path)
    reg.add(record())
    reg.add(record("beef", "net2", pod="client-0"))
    files = sorted(reg.dir.glob("*.json"))
    assert [f.name for f in files] == ["beef-net2.json", "c0ffee-net1.json"]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert stat.S_IMODE(reg.dir.stat().st_mode) == 0o700

    again = AttachmentRegistry(tmp_path)
    assert again.load() == 2
    assert again.get("c0ffee", "net1") == record()
    assert again.for_pod("telco/client-0") == [record("beef", "net2", pod="client-0")]


def test_del_and_gc_drop_records_and_files(tmp_path: Path) -> None:
    reg = AttachmentRegistry(tmp_path)
    for n in range(3):
        reg.add(record(f"c{n}", pod=f"p{n}"))
    reg.add(record("other", network="othernet"))
    assert reg.remove("c0", "net1") == record("c0", pod="p0")
    assert reg.remove("c0", "net1") is None
    gone = reg.gc("macnet", [("c1", "net1")])
    assert [r.container_id for r in gone] == ["c2"]
    assert {r.container_id for r in reg.all()} == {"c1", "other"}  # other networks kept
    assert sorted(f.name for f in reg.dir.glob("*.json")) == ["c1-net1.json", "other-net1.json"]
    assert set(reg.pods()) == {"telco/p1", "telco/server-0"}


def test_an_unreadable_record_is_removed_not_fatal(tmp_path: Path) -> None:
    reg = AttachmentRegistry(tmp_path)
    reg.add(record())
    (reg.dir / "bad-net1.json").write_text("{not json")
    (reg.dir / "odd-net1.json").write_text(json.dumps({"container_id": 5}))
    again = AttachmentRegistry(tmp_path)
    assert again.load() == 1
    assert sorted(f.name for f in reg.dir.glob("*.json")) == ["c0ffee-net1.json"]


def test_a_container_id_that_cannot_name_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot name a record"):
        AttachmentRegistry(tmp_path).add(record("../escape"))


@pytest.mark.parametrize(("value", "expected"), [
    ("macnet", [("telco/macnet", "net1")]),
    ("a@x, b", [("telco/a", "x"), ("telco/b", "net2")]),  # net<delegate index>
    ("other/a, b@y, c", [("other/a", "net1"), ("telco/b", "y"), ("telco/c", "net3")]),
    ('[{"name": "a", "namespace": "other", "interface": "fast0"}, {"name": "b"}]',
     [("other/a", "fast0"), ("telco/b", "net2")]),
    ('[{"name": "a", "interfaceRequest": "old0"}]', [("telco/a", "old0")]),  # before 3.2
    (" ns / a @ x ", [("ns/a", "x")]),
    ("", []),
])
def test_networks_annotation_follows_multus(value: str, expected: list) -> None:
    assert [(s.network, s.interface) for s in parse_networks(value, "telco")] == expected


@pytest.mark.parametrize("value", ["a/b/c", '[{"namespace": "x"}]', '{"name": "a"}', "a@",
                                   "a.b", "A", "a@b@c"])
def test_networks_annotation_multus_refuses_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_networks(value, "telco")


def test_network_status_wins_over_the_request_annotation() -> None:
    pod = fixture("pod.json")
    pod["metadata"]["annotations"] = {"k8s.v1.cni.cncf.io/networks": "macnet, second"}
    assert pod_interfaces(pod) == {"net1": "telco/macnet", "net2": "telco/second"}
    pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"] = json.dumps(
        fixture("multus.json")["network-status"])
    assert pod_interfaces(pod) == {"net1": "telco/macnet"}  # the default network is not one
    pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = "a/b/c"
    pod["metadata"]["annotations"].pop("k8s.v1.cni.cncf.io/network-status")
    assert pod_interfaces(pod) == {}  # unreadable: nothing, never an exception


def test_nad_network_name_is_the_configs_name_else_the_objects() -> None:
    nad = fixture("multus.json")["network-attachment-definition"]
    assert nad_network_name(nad) == "macnet"
    nad["spec"]["config"] = json.dumps({"cniVersion": "1.0.0", "type": "macvlan"})
    nad["metadata"]["name"] = "unnamed-conf"
    assert nad_network_name(nad) == "unnamed-conf"
