"""IPAM config parsing: every accepted field of whereabouts, host-local and static, good and bad."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any

import pytest

from nodeagent.cnitypes.request import parse_cni_args
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.configtypes import (
    DEFAULT_ETCD_PREFIX,
    UNNAMED_NETWORK,
    EtcdEndpoint,
    IPAMConfig,
)
from nodeagent.ipam.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    UNSUPPORTED_FIELD,
    CniError,
    IpamError,
)


def conf(ipam: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "net1", "ipam": ipam, **top}


def parse(ipam: dict[str, Any], cni_args: str = "", **top: Any) -> IPAMConfig:
    return parse_config(conf(ipam, **top), parse_cni_args(cni_args))


def error(ipam: dict[str, Any], cni_args: str = "", **top: Any) -> IpamError:
    with pytest.raises(IpamError) as info:
        parse(ipam, cni_args, **top)
    return info.value


# -- whereabouts ----------------------------------------------------------------------------


def test_whereabouts_range_cidr_defaults() -> None:
    c = parse({"type": "whereabouts", "range": "192.168.2.225/28"})
    (rset,) = c.range_sets
    (r,) = rset.ranges
    assert r.subnet == ip_network("192.168.2.224/28")
    assert (r.start, r.end) == (ip_address("192.168.2.224"), ip_address("192.168.2.239"))
    assert r.gateway is None
    assert c.network == UNNAMED_NETWORK and c.datastore == "cluster"  # never node-local
    assert c.overlapping_ranges is True and c.sticky is False


def test_whereabouts_range_first_last_form() -> None:
    (r,) = parse({"range": "192.168.2.225-192.168.2.230/24"}).ranges
    assert r.subnet == ip_network("192.168.2.0/24")
    assert (str(r.start), str(r.end)) == ("192.168.2.225", "192.168.2.230")
    (r6,) = parse({"range": "fd00::10-fd00::20/64"}).ranges
    assert (str(r6.start), str(r6.end)) == ("fd00::10", "fd00::20")


def test_whereabouts_range_start_end_exclude_gateway_routes_dns() -> None:
    c = parse(
        {
            "range": "10.0.0.0/24",
            "range_start": "10.0.0.10",
            "range_end": "10.0.0.20",
            "exclude": ["10.0.0.12/31", "10.0.0.15/32"],
            "gateway": "10.0.0.1",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.0.0.254"}],
            "dns": {"nameservers": ["10.0.0.53"], "domain": "example.org", "search": ["a.b"],
                    "options": ["ndots:2"]},
        }
    )
    (r,) = c.ranges
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.0.0.10", "10.0.0.20", "10.0.0.1")
    assert r.exclude == (ip_network("10.0.0.12/31"), ip_network("10.0.0.15/32"))
    assert [str(x.dst) for x in c.routes] == ["0.0.0.0/0", "192.168.0.0/16"]
    assert c.routes[1].gw == ip_address("10.0.0.254")
    assert c.dns.nameservers == ("10.0.0.53",) and c.dns.domain == "example.org"
    assert c.dns.search == ("a.b",) and c.dns.options == ("ndots:2",)


def test_ip_ranges_dual_stack_and_network_name() -> None:
    c = parse(
        {
            "ipRanges": [
                {"range": "10.1.0.0/16", "exclude": ["10.1.0.0/24"]},
                {"range": "fd00:1::/64", "range_start": "fd00:1::100"},
            ],
            "network_name": "tenant-a",
            "enable_overlapping_ranges": False,
            "sticky": True,
        }
    )
    assert [s.version for s in c.range_sets] == [4, 6]
    assert c.range_sets[1].ranges[0].start == ip_address("fd00:1::100")
    assert c.network == "tenant-a" and not c.overlapping_ranges and c.sticky


def test_top_level_range_comes_first_then_ip_ranges() -> None:
    c = parse({"range": "10.0.0.0/24", "ipRanges": [{"range": "fd00::/120"}]})
    assert [str(s.ranges[0].subnet) for s in c.range_sets] == ["10.0.0.0/24", "fd00::/120"]


def test_ipv6_window_is_bounded_from_range_start() -> None:
    (r,) = parse({"range": "fd00::/64", "range_start": "fd00::1:0"}).ranges
    assert r.start == ip_address("fd00::1:0")
    assert r.size == 1 << 24
    assert r.end == ip_address("fd00::1:0") + (1 << 24) - 1


def test_ipv4_slash8_accepted_larger_refused() -> None:
    assert parse({"range": "10.0.0.0/8"}).ranges[0].size == 1 << 24
    e = error({"range": "10.0.0.0/7"})
    assert e.code == INVALID_CONFIG and "2^24" in e.msg


def test_etcd_datastore_fields(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    for f in (ca, cert, key):
        f.write_text("x")
    c = parse(
        {
            "range": "10.0.0.0/24",
            "datastore": "etcd",
            "etcd_host": "https://etcd-1:2379, 10.0.0.2:2380,[fd00::1]:2379,etcd-3",
            "etcd_username": "ipam",
            "etcd_password": "secret",
            "etcd_ca_cert_file": str(ca),
            "etcd_cert_file": str(cert),
            "etcd_key_file": str(key),
        }
    )
    assert c.datastore == "etcd" and c.etcd is not None
    assert c.etcd.endpoints == (
        EtcdEndpoint("etcd-1", 2379),
        EtcdEndpoint("10.0.0.2", 2380),
        EtcdEndpoint("fd00::1", 2379),
        EtcdEndpoint("etcd-3", 2379),
    )
    assert c.etcd.endpoints[2].target() == "[fd00::1]:2379"
    assert c.etcd.tls and c.etcd.username == "ipam" and c.etcd.password == "secret"
    assert c.etcd.prefix == DEFAULT_ETCD_PREFIX
    assert "secret" not in repr(c.etcd)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"datastore": "etcd"}, "etcd_host"),
        ({"datastore": "etcd", "etcd_host": "a:b"}, "etcd_host"),
        ({"datastore": "etcd", "etcd_host": "a:1,,b:2"}, "empty entry"),
        ({"datastore": "etcd", "etcd_host": "ftp://a:1"}, "scheme"),
        ({"datastore": "etcd", "etcd_host": "a:1", "etcd_username": "u"}, "etcd_password"),
        ({"datastore": "etcd", "etcd_host": "a:1", "etcd_ca_cert_file": "/nonexistent"},
         "etcd_ca_cert_file"),
        ({"datastore": "etcd", "etcd_host": "a:1", "etcd_cert_file": "/etc/hostname"},
         "etcd_key_file"),
        ({"datastore": "etcd", "etcd_host": "a:1", "etcd_prefix": "nope"}, "etcd_prefix"),
        ({"datastore": "etcd", "etcd_host": "a:1", "etcd_timeout": 0}, "etcd_timeout"),
    ],
)
def test_bad_etcd_fields(fields: dict[str, Any], needle: str) -> None:
    e = error({"range": "10.0.0.0/24", **fields})
    assert e.code == INVALID_CONFIG and needle in e.msg


def test_unknown_datastore_is_unsupported() -> None:
    e = error({"range": "10.0.0.0/24", "datastore": "kubernetess"})
    assert e.code == UNSUPPORTED_FIELD and "kubernetess" in e.msg and '"file"' in e.msg


@pytest.mark.parametrize(
    ("ipam", "datastore"),
    [
        # whereabouts keeps addresses cluster-wide: never node-local unless it says "file".
        ({"type": "whereabouts"}, "cluster"),
        ({"type": "whereabouts", "datastore": "kubernetes"}, "cluster"),
        ({"type": "whereabouts", "kubernetes": {"kubeconfig": "/etc/cni/wb.kubeconfig"}},
         "cluster"),
        ({"type": "whereabouts", "dataDir": "/var/lib/x"}, "cluster"),
        ({"type": "whereabouts", "datastore": "file"}, "file"),
        ({"type": "whereabouts", "datastore": "etcd", "etcd_host": "e:2379"}, "etcd"),
        # nodeagent-ipam (and host-local-style fields) keep their documented node-local default.
        ({"type": "nodeagent-ipam"}, "file"),
        ({"type": "nodeagent-ipam", "datastore": "kubernetes"}, "cluster"),
        ({"type": "nodeagent-ipam", "kubernetes": {}}, "cluster"),
        ({"type": "nodeagent-ipam", "datastore": "local"}, "file"),
    ],
)
def test_which_datastore_a_config_gets(ipam: dict[str, Any], datastore: str) -> None:
    assert parse({"range": "10.0.0.0/24", **ipam}).datastore == datastore


def test_host_local_style_whereabouts_config_is_cluster_wide_too() -> None:
    c = parse({"type": "whereabouts", "ranges": [[{"subnet": "10.0.0.0/24"}]]})
    assert c.datastore == "cluster" and c.network == "net1"


# -- host-local -----------------------------------------------------------------------------


def test_host_local_ranges_defaults_and_data_dir() -> None:
    c = parse(
        {
            "type": "host-local",
            "ranges": [
                [{"subnet": "10.10.0.0/16", "rangeStart": "10.10.1.20", "rangeEnd": "10.10.3.50",
                  "gateway": "10.10.0.254"}, {"subnet": "172.16.5.0/24"}],
                [{"subnet": "3ffe:ffff:0:1ff::/64", "rangeStart": "3ffe:ffff:0:1ff::10",
                  "rangeEnd": "3ffe:ffff:0:1ff::20"}],
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "/run/ipam-state",
        }
    )
    assert c.network == "net1"  # host-local keeps state under the network name
    assert c.data_dir == Path("/run/ipam-state")
    first, second = c.range_sets
    assert [str(r.subnet) for r in first.ranges] == ["10.10.0.0/16", "172.16.5.0/24"]
    default = first.ranges[1]
    assert (str(default.start), str(default.end)) == ("172.16.5.1", "172.16.5.254")
    assert default.gateway == ip_address("172.16.5.1")  # host-local's ".1" default
    assert second.version == 6 and str(second.ranges[0].end) == "3ffe:ffff:0:1ff::20"


def test_host_local_legacy_subnet() -> None:
    (r,) = parse({"type": "host-local", "subnet": "10.9.0.0/24"}).ranges
    assert str(r.subnet) == "10.9.0.0/24" and str(r.gateway) == "10.9.0.1"


@pytest.mark.parametrize(
    ("ipam", "needle"),
    [
        ({"ranges": [[{"subnet": "10.0.0.0/33"}]]}, "ipam.ranges[0][0].subnet"),
        ({"ranges": [[{"rangeStart": "10.0.0.1"}]]}, "ipam.ranges[0][0].subnet"),
        ({"ranges": [[]]}, "ipam.ranges[0]"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}]]}, "rangeStart"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.1"}]]}, "rangeEnd"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]}, "gateway"),
        ({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9",
                       "rangeEnd": "10.0.0.5"}]]}, "after"),
        ({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}, "mixes"),
        ({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.128/25"}]]}, "overlaps"),
        ({"ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": "relative"}, "dataDir"),
    ],
)
def test_bad_host_local(ipam: dict[str, Any], needle: str) -> None:
    e = error(ipam)
    assert e.code == INVALID_CONFIG and needle in e.msg, e.msg


def test_host_local_needs_a_name() -> None:
    e = error({"ranges": [[{"subnet": "10.0.0.0/24"}]]}, name="")
    assert "name" in e.msg


# -- static and fixed addresses --------------------------------------------------------------


def test_static_addresses() -> None:
    c = parse(
        {
            "type": "static",
            "addresses": [
                {"address": "10.10.0.1/24", "gateway": "10.10.0.254"},
                {"address": "3ffe:ffff:0:1ff::1/64"},
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["8.8.8.8"]},
        }
    )
    assert c.range_sets == ()
    assert c.addresses[0].address == ip_interface("10.10.0.1/24")
    assert c.addresses[0].gateway == ip_address("10.10.0.254")
    assert c.addresses[1].gateway is None


def test_runtime_config_ips_args_and_cni_args() -> None:
    c = parse(
        {"range": "10.0.0.0/24", "ipRanges": [{"range": "fd00::/64"}]},
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod-0;IP=fd00::5",
        runtimeConfig={"ips": ["10.0.0.5/24"]},
    )
    assert [(str(r.ip), r.prefixlen, r.source) for r in c.requested] == [
        ("10.0.0.5", 24, "runtimeConfig.ips[0]"),
        ("fd00::5", None, "CNI_ARGS IP"),
    ]
    c2 = parse({"range": "10.0.0.0/24"}, args={"cni": {"ips": ["10.0.0.7"]}})
    assert [str(r.ip) for r in c2.requested] == ["10.0.0.7"]


def test_cni_args_ip_list_with_gateway_for_static() -> None:
    c = parse({"type": "static"}, "IP=10.1.0.5/24,10.2.0.5/24;GATEWAY=10.2.0.1")
    assert [(str(r.ip), r.gateway) for r in c.requested] == [
        ("10.1.0.5", None),
        ("10.2.0.5", ip_address("10.2.0.1")),
    ]


@pytest.mark.parametrize(
    ("ipam", "top", "needle"),
    [
        ({"range": "10.0.0.0/24"}, {"runtimeConfig": {"ips": ["10.0.1.5/24"]}}, "outside every"),
        ({"range": "10.0.0.0/24", "gateway": "10.0.0.1"},
         {"runtimeConfig": {"ips": ["10.0.0.1"]}}, "gateway"),
        ({"range": "10.0.0.0/24"}, {"runtimeConfig": {"ips": ["10.0.0.0"]}}, "network address"),
        ({"range": "10.0.0.0/24"}, {"runtimeConfig": {"ips": ["10.0.0.255"]}}, "broadcast"),
        ({"range": "10.0.0.0/24", "exclude": ["10.0.0.0/28"]},
         {"runtimeConfig": {"ips": ["10.0.0.9"]}}, "excluded"),
        ({"range": "10.0.0.0/24"}, {"runtimeConfig": {"ips": ["10.0.0.5", "10.0.0.6"]}},
         "both fall"),
        ({"range": "10.0.0.0/24"}, {"runtimeConfig": {"ips": ["10.0.0.5", "10.0.0.5"]}},
         "twice"),
        ({"range": "10.0.0.0/24"}, {"runtimeConfig": {"ips": ["nope"]}}, "runtimeConfig.ips[0]"),
        ({"range": "10.0.0.0/24"}, {"runtimeConfig": {"ips": "10.0.0.5"}}, "list"),
        ({"type": "static"}, {"runtimeConfig": {"ips": ["10.0.0.5"]}}, "prefix length"),
    ],
)
def test_bad_fixed_addresses(ipam: dict[str, Any], top: dict[str, Any], needle: str) -> None:
    e = error(ipam, **top)
    assert e.code == INVALID_CONFIG and needle in e.msg, e.msg


@pytest.mark.parametrize(
    ("ipam", "needle"),
    [
        ({"range": "10.0.0.0/24x"}, "ipam.range"),
        ({"range": "not-an-ip-10.0.0.9/24"}, "ipam.range"),
        ({"range": "10.0.0.0/24", "range_start": "10.0.1.1"}, "ipam.range_start"),
        ({"range": "10.0.0.0/24", "range_end": "11.0.0.1"}, "ipam.range_end"),
        ({"range": "10.0.0.0/24", "range_start": "10.0.0.9", "range_end": "10.0.0.3"}, "after"),
        ({"range": "10.0.0.0/24", "range_start": "banana"}, "ipam.range_start"),
        ({"range_start": "10.0.0.2"}, "ipam.range"),
        ({"range": "10.0.0.0/24", "exclude": ["10.0.0.0/40"]}, "ipam.exclude[0]"),
        ({"range": "10.0.0.0/24", "exclude": "10.0.0.0/28"}, "ipam.exclude"),
        ({"range": "10.0.0.0/24", "exclude": ["fd00::/64"]}, "not IPv4"),
        ({"range": "10.0.0.0/24", "gateway": "10.9.9.9"}, "ipam.gateway"),
        ({"range": "10.0.0.0/24", "gateway": "x"}, "ipam.gateway"),
        ({"ipRanges": [{"range_start": "10.0.0.1"}]}, "ipam.ipRanges[0].range"),
        ({"ipRanges": ["10.0.0.0/24"]}, "ipam.ipRanges[0]"),
        ({"ipRanges": [{"range": "10.0.0.0/24"}, {"range": "10.0.0.0/25"}]}, "overlaps"),
        ({"range": "10.0.0.0/24", "routes": [{"gw": "10.0.0.1"}]}, "ipam.routes[0]"),
        ({"range": "10.0.0.0/24", "routes": [{"dst": "x"}]}, "ipam.routes[0].dst"),
        ({"range": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0/0", "mtu": -1}]}, "mtu"),
        ({"range": "10.0.0.0/24", "dns": {"nameservers": ["x"]}}, "ipam.dns.nameservers[0]"),
        ({"range": "10.0.0.0/24", "dns": []}, "ipam.dns"),
        ({"addresses": [{"address": "10.0.0.1"}]}, "ipam.addresses[0].address"),
        ({"addresses": [{"address": "10.0.0.1/24", "gateway": "fd00::1"}]}, "gateway"),
        ({"range": "10.0.0.0/24", "network_name": "a/b"}, "ipam.network_name"),
        ({"range": "10.0.0.0/24", "enable_overlapping_ranges": "yes"}, "enable_overlapping"),
        ({"range": "10.0.0.0/24", "sticky": 1}, "ipam.sticky"),
    ],
)
def test_bad_fields_name_the_field(ipam: dict[str, Any], needle: str) -> None:
    e = error(ipam)
    assert e.code == INVALID_CONFIG and needle in e.msg, e.msg


def test_static_address_inside_a_range_must_be_usable() -> None:
    e = error({"range": "10.0.0.0/24", "addresses": [{"address": "10.0.0.0/24"}]})
    assert "network address" in e.msg


def test_decode_and_version_errors() -> None:
    with pytest.raises(IpamError) as info:
        parse_config(b"{not json")
    assert info.value.code == DECODE_FAILURE
    with pytest.raises(IpamError) as info:
        parse_config(b"[]")
    assert info.value.code == DECODE_FAILURE
    with pytest.raises(IpamError) as info:
        parse_config({"name": "x"})
    assert info.value.code == INVALID_CONFIG and "ipam" in info.value.msg
    with pytest.raises(IpamError) as info:
        parse_config(conf({"range": "10.0.0.0/24"}, cniVersion="0.2.0"))
    assert info.value.code == INCOMPATIBLE_VERSION


def test_bytes_and_str_input() -> None:
    raw = json.dumps(conf({"range": "10.0.0.0/24"}))
    assert parse_config(raw) == parse_config(raw.encode())


def test_cni_args() -> None:
    # libcni's reading (pkg/types LoadArgs): nothing trimmed, one "=" per pair
    assert parse_cni_args("A=1; B=x") == {"A": "1", " B": "x"}
    assert parse_cni_args("") == {}
    for bad in ("A", "=1", "B=x=y", "A=1;", "A=1;;B=2"):
        with pytest.raises(CniError) as info:
            parse_cni_args(bad)
        assert info.value.code == INVALID_ENVIRONMENT
    e = error({"range": "10.0.0.0/24"}, "IP=10.0.0.300")
    assert e.code == INVALID_ENVIRONMENT and "CNI_ARGS" in e.msg
    e = error({"type": "static"}, "IP=10.0.0.3/24;GATEWAY=nope")
    assert e.code == INVALID_ENVIRONMENT


def test_error_json_shape() -> None:
    e = error({"range": "10.0.0.0/24", "range_start": "10.0.1.1"})
    doc = e.to_dict("1.1.0")
    assert doc["code"] == 7 and doc["cniVersion"] == "1.1.0"
    assert "range_start" in doc["msg"]
