"""whereabouts' Kubernetes objects read as whereabouts writes them: IPPool offsets to addresses,
OverlappingRangeIPReservation names to addresses, which of them a configuration must honour."""

from __future__ import annotations

import time
from ipaddress import ip_address

import pytest

from nodeagent.ipam import whereabouts as wb
from nodeagent.ipam.config import parse_config
from nodeagent.k8s.client import ApiError, build_client
from tests.k8s_replay import ReplayApiServer, fixture

CID = "4f9ec6a1d9b4c1d7e1b0c8f2a3e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2"


def config(**ipam):
    return parse_config({"cniVersion": "1.1.0", "name": "net1",
                         "ipam": {"type": "whereabouts", **ipam}})


@pytest.mark.parametrize(("network", "range_text", "name"), [
    ("", "10.0.0.0/24", "10.0.0.0-24"),
    ("blue", "10.0.0.0/24", "blue-10.0.0.0-24"),
    ("", "fd00:10::/64", "fd00-10---64"),
    ("other", "fd00:10::/120", "other-fd00-10---120"),
])
def test_pool_names_follow_whereabouts(network: str, range_text: str, name: str) -> None:
    assert wb.pool_name(network, range_text) == name


@pytest.mark.parametrize(("range_text", "offset", "ip"), [
    ("10.0.0.0/24", 1, "10.0.0.1"),
    ("10.0.0.0/24", 254, "10.0.0.254"),
    ("10.0.0.0/23", 300, "10.0.1.44"),
    ("fd00:10::/64", 0x1_0000, "fd00:10::1:0"),
])
def test_offsets_count_from_the_ranges_address(range_text: str, offset: int, ip: str) -> None:
    assert wb.ip_at(range_text, offset) == ip_address(ip)
    assert wb.offset_of(range_text, ip_address(ip)) == offset


def test_the_fixture_pool_holds_what_whereabouts_wrote() -> None:
    (h,) = wb.pool_holdings(fixture("whereabouts.json")["ippool"])
    assert (h.ip, h.container_id, h.ifname, h.pod) == (ip_address("10.0.0.1"), CID, "net1",
                                                       "default/client-0")
    assert "kube-system/10.0.0.0-24 offset 1" in h.source


def test_bad_allocation_keys_and_entries_are_skipped_not_fatal() -> None:
    pool = fixture("whereabouts.json")["ippool"]
    pool["spec"]["allocations"] = {"x": {"id": "a"}, "-1": {"id": "b"}, "999": {"id": "c"},
                                   "7": "not an object", "8": {"id": "d", "podref": "ns/p"}}
    assert [str(h.ip) for h in wb.pool_holdings(pool)] == ["10.0.0.8"]
    pool["spec"] = {"range": "nonsense"}
    assert wb.pool_holdings(pool) == []


@pytest.mark.parametrize(("name", "network", "ip"), [
    ("10.0.0.1", "", "10.0.0.1"),
    ("blue-10.0.0.1", "blue", "10.0.0.1"),
    ("blue-10.0.0.1", "", None),          # another network's reservation
    ("10.0.0.1", "blue", None),
    ("fd00-10--5", "", "fd00:10::5"),
    ("my-net-fd00-10--5", "my-net", "fd00:10::5"),
])
def test_reservation_names_carry_network_and_address(name: str, network: str,
                                                      ip: str | None) -> None:
    obj = fixture("whereabouts.json")["overlappingrangeipreservation"]
    obj["metadata"]["name"] = name
    h = wb.reservation_holding(obj, network)
    assert (str(h.ip) if h else None) == ip
    if h:
        assert (h.container_id, h.ifname, h.pod) == (CID, "net1", "default/client-0")
    assert wb.reservation_name(network, ip_address(ip)) == name if ip else True


def test_a_config_honours_pools_of_its_subnet_and_reservations_of_its_network() -> None:
    fx = fixture("whereabouts.json")

    def pool(name: str, range_text: str, offsets: list[int]) -> dict:
        return {**fx["ippool"], "metadata": {"name": name, "namespace": "kube-system"},
                "spec": {"range": range_text, "allocations": {
                    str(o): {"id": f"c{o}", "podref": f"ns/p{o}"} for o in offsets}}}

    def orip(name: str) -> dict:
        return {**fx["overlappingrangeipreservation"],
                "metadata": {"name": name, "namespace": "kube-system"},
                "spec": {"containerid": "cx", "podref": "ns/px"}}

    objects = wb.Objects(
        pools=(pool("10.0.0.0-24", "10.0.0.0/24", [1, 2]),
               pool("red-10.0.0.0-24", "10.0.0.0/24", [3]),     # same range, other network
               pool("10.0.1.0-24", "10.0.1.0/24", [1])),        # other range
        reservations=(orip("10.0.0.9"), orip("10.0.0.1"), orip("red-10.0.0.10"),
                      orip("10.0.2.1")))
    got = objects.holdings(config(range="10.0.0.0/24"))
    assert [str(h.ip) for h in got] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"]
    assert got[0].container_id == "c1", "the pool's entry, not a second holding"
    # range_start narrows the window: holdings outside it can never be handed out here.
    narrow = objects.holdings(config(range="10.0.0.0/24", range_start="10.0.0.3"))
    assert [str(h.ip) for h in narrow] == ["10.0.0.3", "10.0.0.9"]
    named = objects.holdings(config(range="10.0.0.0/24", network_name="red"))
    assert [str(h.ip) for h in named] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.10"]


def test_fetch_lists_every_page_of_both_kinds_and_no_crd_means_nothing_held() -> None:
    with ReplayApiServer() as api:
        for i in range(5):
            api.add_ippool("kube-system", f"10.0.{i}.0-24", f"10.0.{i}.0/24",
                           {"1": {"id": f"c{i}", "podref": "ns/p", "ifname": "net1"}})
        api.add_overlapping_reservation("kube-system", "10.0.0.1",
                                        {"containerid": "c0", "podref": "ns/p"})
        client = build_client(host=api.url)
        objects = wb.fetch(client, page_size=2)
        assert len(objects.pools) == 5 and len(objects.reservations) == 1
        pages = [c for c in api.calls() if c.path.endswith("/ippools")]
        assert len(pages) == 3, "listed in pages of 2"
        api.inject("GET", wb.IPPOOLS, 404)
        api.inject("GET", wb.RESERVATIONS, 404)
        assert wb.fetch(client) == wb.Objects(version=1)
        api.inject("GET", wb.IPPOOLS, 503)
        with pytest.raises(ApiError, match="503"):
            wb.fetch(client)


def test_the_watch_follows_changes_and_reports_not_listed_yet() -> None:
    with ReplayApiServer() as api:
        api.add_ippool("kube-system", "10.0.0.0-24", "10.0.0.0/24",
                       {"1": {"id": "c1", "podref": "ns/p1"}})
        watch = wb.WhereaboutsWatch(build_client(host=api.url), watch_timeout=30).start()
        try:
            cfg = config(range="10.0.0.0/24")
            assert [str(h.ip) for h in watch.objects(5).holdings(cfg)] == ["10.0.0.1"]
            api.add_ippool("kube-system", "10.0.0.0-24", "10.0.0.0/24",
                           {"1": {"id": "c1", "podref": "ns/p1"},
                            "2": {"id": "c2", "podref": "ns/p2"}})
            api.add_overlapping_reservation("kube-system", "10.0.0.7",
                                            {"containerid": "c7", "podref": "ns/p7"})
            deadline = time.monotonic() + 5
            while len(watch.objects().holdings(cfg)) < 3:
                assert time.monotonic() < deadline, "the watch saw no change"
                time.sleep(0.02)
            assert [str(h.ip) for h in watch.objects().holdings(cfg)] == [
                "10.0.0.1", "10.0.0.2", "10.0.0.7"]
        finally:
            watch.stop()
        api.down()
        never = wb.WhereaboutsWatch(build_client(host=api.url)).start()
        try:
            with pytest.raises(wb.Unreadable):
                never.objects(0.3)
        finally:
            never.stop()
