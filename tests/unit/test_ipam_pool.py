"""Pools: address <-> slot mapping, reserved slots, views."""

from __future__ import annotations

import random
from ipaddress import ip_address, ip_network

from nodeagent.ipam.config import parse_config
from nodeagent.ipam.configtypes import IPRange
from nodeagent.ipam.pool import Pool, PoolView


def rng(ipam: dict[str, object]) -> IPRange:
    (r,) = parse_config({"name": "n", "ipam": ipam}).ranges
    return r


def free_addresses(pool: Pool) -> list[str]:
    view = PoolView(pool)
    out = []
    while (slot := view.take_lowest()) is not None:
        out.append(str(pool.address(slot)))
    return out


def test_ipv4_reserves_network_broadcast_gateway_and_excludes() -> None:
    pool = Pool(rng({"range": "10.0.0.0/28", "gateway": "10.0.0.1", "exclude": ["10.0.0.4/30",
                                                                               "10.9.0.0/16"]}))
    assert pool.size == 16
    assert pool.reserved == 1 + 1 + 1 + 4
    assert free_addresses(pool) == [f"10.0.0.{i}" for i in (2, 3, 8, 9, 10, 11, 12, 13, 14)]


def test_window_inside_subnet_keeps_only_what_falls_in_it() -> None:
    pool = Pool(rng({"range": "10.0.0.0/24", "range_start": "10.0.0.250", "gateway": "10.0.0.1"}))
    assert pool.size == 6 and pool.reserved == 1  # only the broadcast address is in the window
    assert free_addresses(pool) == [f"10.0.0.{i}" for i in range(250, 255)]


def test_point_to_point_prefixes_have_no_network_or_broadcast() -> None:
    assert free_addresses(Pool(rng({"range": "10.0.0.0/31"}))) == ["10.0.0.0", "10.0.0.1"]
    assert free_addresses(Pool(rng({"range": "10.0.0.7/32"}))) == ["10.0.0.7"]


def test_ipv6_window_and_slots() -> None:
    pool = Pool(rng({"range": "fd00::/64", "exclude": ["fd00::2/127"]}))
    assert pool.size == 1 << 24
    assert pool.slot(ip_address("fd00::5")) == 5
    assert pool.slot(ip_address("fd00::1:0:0")) is None  # beyond the 2^24 window
    assert pool.slot(ip_address("10.0.0.1")) is None
    view = PoolView(pool)
    assert [str(pool.address(view.take_lowest() or 0)) for _ in range(3)] == [
        "fd00::1",
        "fd00::4",
        "fd00::5",
    ]


def test_slash8_pool() -> None:
    pool = Pool(rng({"range": "10.0.0.0/8"}))
    assert pool.size == 1 << 24 and pool.reserved == 2
    assert pool.address(pool.size - 1) == ip_address("10.255.255.255")
    assert PoolView(pool).free == (1 << 24) - 2


def test_view_load_replace_window_and_spread() -> None:
    pool = Pool(rng({"range": "10.0.0.0/24"}))
    view = PoolView(pool)
    view.load([1, 2, 3, 200])
    assert view.take_lowest() == 4
    view.replace_window(0, 63, {1, 5})  # 2, 3 and our 4 were freed elsewhere; 5 taken
    assert view.taken == {1, 5, 200}
    assert view.take_lowest() == 2
    rand = random.Random(1)
    picks = {view.take_spread(16, rand) for _ in range(8)}
    assert len(picks) == 8 and all(p is not None and p < 40 for p in picks)
    view.settle()
    assert view.take_lowest() == 3


def test_view_ignores_reserved_and_out_of_range_slots() -> None:
    pool = Pool(rng({"range": "10.0.0.0/30"}))
    view = PoolView(pool)
    view.load([0, 3, 1])  # network and broadcast stay reserved, not allocated
    assert view.taken == {1}
    assert view.free == 1
    assert ip_network("10.0.0.0/30").num_addresses == pool.size
