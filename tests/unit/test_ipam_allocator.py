"""The allocation API (allocate, release, check, gc, show) on the node-local store."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from nodeagent.cnitypes.request import Attachment, parse_cni_args
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.configtypes import IPAMConfig
from nodeagent.ipam.errors import (
    ADDRESS_IN_USE,
    INVALID_ENVIRONMENT,
    POOL_EXHAUSTED,
    UNKNOWN_CONTAINER,
    CniError,
    IpamError,
)
from nodeagent.ipam.ops import drop_holds, gc_against, render, show


@pytest.fixture
def ipam(tmp_path: Path) -> Ipam:
    return Ipam(tmp_path / "state")


def config(ipam_conf: dict[str, Any], cni_args: str = "", **top: Any) -> IPAMConfig:
    return parse_config({"cniVersion": "1.1.0", "name": "net1", "ipam": ipam_conf, **top},
                        parse_cni_args(cni_args))


def att(n: int | str, ifname: str = "net1", pod: str = "") -> Attachment:
    ns, _, name = pod.partition("/")
    return Attachment(f"c{n}", ifname, ns, name)


def ips(result: Any) -> list[str]:
    return [str(ip.address) for ip in result.ips]


DUAL = {"range": "10.0.0.0/29", "gateway": "10.0.0.1", "ipRanges": [{"range": "fd00::/125"}]}


def test_allocate_lowest_free_dual_stack_and_result_shape(ipam: Ipam) -> None:
    c = config({**DUAL, "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.0.0.53"]}})
    first = ipam.allocate(c, att(1))
    assert ips(first) == ["10.0.0.2/29", "fd00::1/125"]
    assert ips(ipam.allocate(c, att(2))) == ["10.0.0.3/29", "fd00::2/125"]
    doc = first.to_dict("1.1.0")
    assert doc["ips"] == [
        {"address": "10.0.0.2/29", "gateway": "10.0.0.1"},
        {"address": "fd00::1/125"},
    ]
    assert doc["routes"] == [{"dst": "0.0.0.0/0"}] and doc["dns"] == {"nameservers": ["10.0.0.53"]}
    assert first.to_dict("0.4.0")["ips"][0]["version"] == "4"


def test_repeated_add_returns_the_same_addresses(ipam: Ipam) -> None:
    c = config(DUAL)
    assert ipam.allocate(c, att(1)) == ipam.allocate(c, att(1))
    assert ips(ipam.allocate(c, att(1, "net2"))) == ["10.0.0.3/29", "fd00::2/125"]


def test_release_is_idempotent_and_frees(ipam: Ipam) -> None:
    c = config(DUAL)
    ipam.allocate(c, att(1))
    ipam.allocate(c, att(2))
    assert {str(r.ip) for r in ipam.release(c, att(1))} == {"10.0.0.2", "fd00::1"}
    assert ipam.release(c, att(1)) == []
    assert ipam.release(c, att(99)) == []


def test_reads_and_release_create_no_state(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "fresh")
    c = config(DUAL)
    assert ipam.release(c, att(1)) == [] and ipam.store(c).reservations() == []
    assert show(c, ipam).free == 5 + 7  # /29 less network, broadcast, gateway; /125 less ::0
    assert not (tmp_path / "fresh").exists()
    assert ips(ipam.allocate(c, att(3))) == ["10.0.0.2/29", "fd00::1/125"]


def test_exhausted_pool_reserves_nothing(ipam: Ipam) -> None:
    c = config({"range": "10.0.0.0/30", "ipRanges": [{"range": "fd00::/127"}]})
    ipam.allocate(c, att(1))
    ipam.allocate(c, att(2))  # v4 /30 has two usable addresses; v6 /127 two as well
    with pytest.raises(IpamError) as info:
        ipam.allocate(c, att(3))
    assert info.value.code == POOL_EXHAUSTED and "10.0.0.0-30" in info.value.msg
    assert len(ipam.store(c).reservations()) == 4


def test_half_failed_dual_stack_releases_what_it_took(ipam: Ipam) -> None:
    c = config({"range": "10.0.0.0/24", "ipRanges": [{"range": "fd00::/127"}]})
    ipam.allocate(c, att(1))
    ipam.allocate(c, att(2))
    with pytest.raises(IpamError) as info:
        ipam.allocate(c, att(3))  # IPv4 has room, IPv6 does not
    assert info.value.code == POOL_EXHAUSTED
    assert all(r.owner.container_id != "c3" for r in ipam.store(c).reservations())
    ipam.release(c, att(1))
    assert ips(ipam.allocate(c, att(3))) == ["10.0.0.1/24", "fd00::/127"]


def test_fixed_ip_is_reserved_and_skipped_by_dynamic_allocation(ipam: Ipam) -> None:
    fixed = config(DUAL, runtimeConfig={"ips": ["10.0.0.2/29"]})
    assert ips(ipam.allocate(fixed, att(1))) == ["10.0.0.2/29", "fd00::1/125"]
    dynamic = config(DUAL)
    assert ips(ipam.allocate(dynamic, att(2)))[0] == "10.0.0.3/29"
    with pytest.raises(IpamError) as info:
        ipam.allocate(fixed, att(3))
    assert info.value.code == ADDRESS_IN_USE
    assert "10.0.0.2" in info.value.msg and "c1/net1" in info.value.msg


def test_fixed_ip_from_cni_args_and_static_addresses(ipam: Ipam) -> None:
    c = config(
        {**DUAL, "addresses": [{"address": "192.168.9.9/24", "gateway": "192.168.9.1"}]},
        "IP=fd00::6",
    )
    result = ipam.allocate(c, att(1))
    assert ips(result) == ["10.0.0.2/29", "fd00::6/125", "192.168.9.9/24"]
    assert result.ips[2].gateway == ip_address("192.168.9.1")
    held = {str(r.ip) for r in ipam.store(c).reservations()}
    assert held == {"10.0.0.2", "fd00::6"}  # the static address outside every range: not stored


def test_static_only_config_touches_no_store(ipam: Ipam, tmp_path: Path) -> None:
    c = config({"type": "static", "addresses": [{"address": "10.1.0.5/24"}]}, "IP=10.2.0.5/16")
    assert ips(ipam.allocate(c, att(1))) == ["10.1.0.5/24", "10.2.0.5/16"]
    assert ipam.release(c, att(1)) == []
    assert ips(ipam.check(c, att(1))) == ["10.1.0.5/24", "10.2.0.5/16"]
    assert not (tmp_path / "state").exists()


def test_check(ipam: Ipam) -> None:
    c = config(DUAL)
    ipam.allocate(c, att(1))
    assert ips(ipam.check(c, att(1))) == ["10.0.0.2/29", "fd00::1/125"]
    with pytest.raises(IpamError) as info:
        ipam.check(c, att(2))
    assert info.value.code == UNKNOWN_CONTAINER


def test_gc_releases_what_is_not_valid_in_this_network_only(ipam: Ipam) -> None:
    c1 = config(DUAL)
    c2 = config(DUAL, name="net2")  # another CNI network sharing the unnamed store namespace
    ipam.allocate(c1, att(1))
    ipam.allocate(c1, att(2))
    ipam.allocate(c2, att(3))
    gone = ipam.gc(c1, [{"containerID": "c2", "ifname": "net1"}])
    assert {r.owner.container_id for r in gone} == {"c1"}
    assert {r.owner.container_id for r in ipam.store(c1).reservations()} == {"c2", "c3"}


def test_sticky_address_comes_back_to_its_pod(ipam: Ipam) -> None:
    c = config({**DUAL, "sticky": True})
    first = ipam.allocate(c, att(1, pod="db/db-0"))
    ipam.allocate(c, att(2, pod="db/db-1"))
    ipam.release(c, att(1))
    # the address waits for db-0: others do not get it
    assert ips(ipam.allocate(c, att(3, pod="db/other"))) == ["10.0.0.4/29", "fd00::3/125"]
    again = ipam.allocate(c, att(4, pod="db/db-0"))
    assert ips(again) == ips(first)
    holds = [r for r in ipam.store(c).reservations() if r.held]
    assert holds == []
    ipam.release(c, att(4))
    assert [r.owner.pod for r in ipam.store(c).drop_holds("db/db-0")] == ["db/db-0", "db/db-0"]
    assert ips(ipam.allocate(c, att(5, pod="db/x"))) == ips(first)


def test_sticky_hold_survives_gc_and_fixed_ip_takes_back_its_own_hold(ipam: Ipam) -> None:
    c = config({"range": "10.0.0.0/29", "sticky": True})
    ipam.allocate(c, att(1, pod="ns/p"))
    ipam.release(c, att(1))
    assert ipam.gc(c, []) == []
    fixed = config({"range": "10.0.0.0/29", "sticky": True}, runtimeConfig={"ips": ["10.0.0.1"]})
    with pytest.raises(IpamError) as info:
        ipam.allocate(fixed, att(2, pod="ns/q"))
    assert info.value.code == ADDRESS_IN_USE and "hold" in info.value.msg
    assert ips(ipam.allocate(fixed, att(3, pod="ns/p"))) == ["10.0.0.1/29"]


def test_overlapping_ranges_flag(ipam: Ipam) -> None:
    a = config({"range": "10.0.0.0/29", "network_name": "shared"})
    b = config({"range": "10.0.0.0/30", "network_name": "shared"})
    assert ips(ipam.allocate(a, att(1))) == ["10.0.0.1/29"]
    assert ips(ipam.allocate(b, att(2))) == ["10.0.0.2/30"]  # same network: unique addresses
    a2 = config({"range": "10.0.0.0/29", "network_name": "iso", "enable_overlapping_ranges": False})
    b2 = config({"range": "10.0.0.0/30", "network_name": "iso", "enable_overlapping_ranges": False})
    assert ips(ipam.allocate(a2, att(3))) == ["10.0.0.1/29"]
    assert ips(ipam.allocate(b2, att(4))) == ["10.0.0.1/30"]  # per-range key space


def test_host_local_state_dir_and_data_dir(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "default")
    c = config({"type": "host-local", "ranges": [[{"subnet": "10.5.0.0/24"}]],
                "dataDir": str(tmp_path / "hl")})
    assert ips(ipam.allocate(c, att(1))) == ["10.5.0.2/24"]  # .1 is host-local's gateway
    assert (tmp_path / "hl" / "net1" / "reservations.json").is_file()
    assert not (tmp_path / "default").exists()


def test_attachment_validation() -> None:
    for bad in (("", "eth0"), ("-x", "eth0"), ("c/1", "eth0"), ("c1", ""), ("c1", "a" * 16),
                ("c1", "a/b"), ("c1", "eth 0")):
        with pytest.raises(CniError) as info:
            Attachment(*bad)
        assert info.value.code == INVALID_ENVIRONMENT
    a = Attachment.from_cni("abc", "eth0",
                            parse_cni_args("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;X=1"))
    assert a.pod == "ns/web-0"


def test_show_and_gc_against(ipam: Ipam) -> None:
    c = config({**DUAL, "sticky": True})
    ipam.allocate(c, att(1, pod="ns/a"))
    ipam.allocate(c, att(2, pod="ns/b"))
    ipam.release(c, att(2))  # becomes a hold
    usage = show(c, ipam)
    v4, v6 = usage.pools
    assert (v4.size, v4.reserved, v4.allocated, v4.free) == (8, 3, 2, 3)
    assert (v6.allocated, v6.free) == (2, 5)
    assert usage.free == 8
    assert len(usage.reservations) == 4
    text = render(usage)
    assert "10.0.0.2" in text and "(sticky hold)" in text and "ns/a" in text
    ipam.allocate(c, att(3, pod="ns/c"))
    assert {r.owner.container_id for r in gc_against(c, [att(3)], dry_run=True, ipam=ipam)} == {
        "c1"
    }
    gone = gc_against(c, [("c3", "net1")], ipam=ipam)
    assert {r.owner.container_id for r in gone} == {"c1"}
    left = {(r.owner.container_id, r.held) for r in ipam.store(c).reservations()}
    assert left == {("c3", False), ("", True)}  # c1 became a hold itself: it is sticky
    assert {r.owner.pod for r in drop_holds(c, ipam=ipam)} == {"ns/a", "ns/b"}
