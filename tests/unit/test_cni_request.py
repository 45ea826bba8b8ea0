"""Malformed CNI requests get a clean CNI error with the spec's code, naming what is wrong,
and the request is parsed once: CNI_ARGS, the attachment and prevResult are typed at the edge
(issue #12's table, issue #14's one parse). None of these need the kernel."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import ipam as cni_ipam
from cni import observe
from cni.context import Context
from cni.dispatch import handle
from cni.protocol import parse_request
from nodeagent.cnitypes.errors import CniError
from nodeagent.cnitypes.request import Attachment, parse_cni_args, validate_ifname
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.config import parse_config
from nodeagent.status import StatusBoard
from nodeagent.vfstate import VfState


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    context = Context(vfs=VfState(tmp_path / "vf"), ipam=Ipam(tmp_path / "ipam"))
    try:
        yield context
    finally:
        context.close()


def env(command: str, **extra: str) -> dict[str, str]:
    base = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee", "CNI_IFNAME": "net1",
            "CNI_NETNS": "/proc/self/ns/net", "CNI_PATH": "/nonexistent"}
    return {**base, **extra}


def conf(**fields: Any) -> bytes:
    return json.dumps({"cniVersion": "1.1.0", "name": "blue", "type": "macvlan",
                       **fields}).encode()


def answer(ctx: Context, environ: dict[str, str], stdin: bytes, plugin: str = "macvlan",
           **kw: Any) -> dict[str, Any]:
    out = handle(ctx, environ, stdin, plugin, **kw)
    assert out.exit_status == 1, out.stdout
    return json.loads(out.stdout)


def test_deeply_nested_stdin_is_a_decode_error_and_logged_cleanly(ctx, caplog) -> None:
    caplog.set_level(logging.INFO, logger="nodeagent.cni")
    doc = answer(ctx, env("ADD"), b"[" * 100_000)
    assert doc["code"] == 6 and "nested deeper" in doc.get("details", "")
    assert any("failed (code 6)" in r.getMessage() for r in caplog.records)


def test_invalid_utf8_stdin_is_a_decode_error(ctx) -> None:
    assert answer(ctx, env("ADD"), b'{"name": "\xff"}')["code"] == 6


@pytest.mark.parametrize("valid", [5, [5], ["c1/net1"], [{"containerID": 5, "ifname": "e"}],
                                   [{"containerID": "c1"}]])
def test_gc_valid_attachments_are_typed(ctx, valid: Any) -> None:
    board = StatusBoard()
    board.set_allocation("c1/net1", {"network": "blue"})
    doc = answer(ctx, {"CNI_COMMAND": "GC"}, conf(**{"cni.dev/valid-attachments": valid}),
                 status=board)
    assert doc["code"] == 7 and "cni.dev/valid-attachments" in doc["msg"]
    assert set(board.snapshot()["allocations"]) == {"c1/net1"}  # nothing dropped


@pytest.mark.parametrize("command", ["STATUS", "GC"])
@pytest.mark.parametrize("kind", [[], {}, 5, ""])
def test_status_and_gc_need_a_string_type(ctx, command: str, kind: Any) -> None:
    doc = answer(ctx, {"CNI_COMMAND": command}, conf(type=kind))
    assert doc["code"] == 7 and "'type'" in doc["msg"]


@pytest.mark.parametrize(("ips", "field"), [
    ([5], "runtimeConfig.ips[0]"),
    (["10.0.0.5/24", None], "runtimeConfig.ips[1]"),
    (["10.0.0.5"], "runtimeConfig.ips[0]"),          # no prefix length
    ("10.0.0.5/24", "runtimeConfig.ips"),
])
def test_static_runtime_config_ips_are_typed(ips: Any, field: str) -> None:
    request = parse_request(env("ADD"), conf(ipam={"type": "static"},
                                             runtimeConfig={"ips": ips}))
    with pytest.raises(CniError) as info:
        cni_ipam.static_result(request, request.config["ipam"])
    assert info.value.code == 7 and field in info.value.msg


@pytest.mark.parametrize(("address", "gateway", "field"), [
    (5, None, "ipam.addresses[0].address"),
    ("10.0.0.5/24", 167772161, "ipam.addresses[0].gateway"),
    ("10.0.0.5/24", "fd00::1", "ipam.addresses[0].gateway"),
])
def test_static_addresses_are_typed(address: Any, gateway: Any, field: str) -> None:
    entry = {"address": address, **({"gateway": gateway} if gateway is not None else {})}
    request = parse_request(env("ADD"), conf(ipam={"type": "static", "addresses": [entry]}))
    with pytest.raises(CniError) as info:
        cni_ipam.static_result(request, request.config["ipam"])
    assert info.value.code == 7 and field in info.value.msg


@pytest.mark.parametrize(("prev", "field"), [
    ({"ips": [{}]}, "prevResult.ips[0].address"),
    ({"ips": [{"address": 5}]}, "prevResult.ips[0].address"),
    ({"ips": ["10.0.0.5/24"]}, "prevResult.ips[0]"),
    ({"interfaces": ["eth0"]}, "prevResult.interfaces[0]"),
    ({"interfaces": [{"name": "a", "mtu": "9000"}]}, "prevResult.interfaces[0].mtu"),
    ({"routes": [{"dst": "0.0.0.0/0", "gw": []}]}, "prevResult.routes[0].gw"),
    ({"dns": {"nameservers": "8.8.8.8"}}, "prevResult.dns.nameservers"),
    ({"interfaces": [{"name": "a"}], "ips": [{"address": "10.0.0.5/24", "interface": 3}]},
     "prevResult.ips[0].interface"),
    ("done", "prevResult"),
])
def test_check_prev_result_is_validated(ctx, prev: Any, field: str) -> None:
    doc = answer(ctx, env("CHECK"), conf(prevResult=prev))
    assert doc["code"] == 7 and field in doc["msg"], doc


def test_prev_result_is_parsed_once_into_the_request() -> None:
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:01",
                                                   "sandbox": "/proc/self/ns/net"}],
            "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "mtu": 1400}], "dns": {"nameservers": ["10.0.0.2"]}}
    request = parse_request(env("CHECK"), conf(prevResult=prev))
    assert request.prev_result is not None
    assert request.prev_result.to_dict("1.1.0") == prev


def test_a_broken_prev_result_does_not_stop_del() -> None:
    request = parse_request(env("DEL"), conf(prevResult={"ips": [{}]}))
    assert request.prev_result is None


@pytest.mark.parametrize("ipam_type", ["static", "nodeagent-ipam"])
def test_cni_args_scoped_ip_is_an_environment_error(tmp_path: Path, ipam_type: str) -> None:
    ipam_conf: dict[str, Any] = {"type": ipam_type}
    if ipam_type != "static":
        ipam_conf.update(range="fe80::/64", datastore="file")
    request = parse_request(env("ADD", CNI_ARGS="IP=fe80::1%eth0/64"), conf(ipam=ipam_conf))
    with pytest.raises(CniError) as info:
        if ipam_type == "static":
            cni_ipam.static_result(request, ipam_conf)
        else:
            parse_config(request.config, request.args)
    assert info.value.code == 4 and "CNI_ARGS" in info.value.msg


def test_cni_args_follow_libcni() -> None:
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p") == {
        "IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "p"}
    # nothing trimmed: " K8S_POD_NAME" is another (unknown) key, as in libcni
    assert parse_cni_args("IP=10.0.0.5/24; K8S_POD_NAME=x") == {"IP": "10.0.0.5/24",
                                                                 " K8S_POD_NAME": "x"}
    for bad in ("K8S_POD_NAME=a=b", "A=1;", "A=1;;B=2", "novalue"):
        with pytest.raises(CniError) as info:
            parse_cni_args(bad)
        assert info.value.code == 4 and "CNI_ARGS" in info.value.msg


def test_the_log_and_ipam_see_the_same_pod(tmp_path: Path) -> None:
    # once the log saw pod "ns" (no name) and nodeagent-ipam "ns/x", from one CNI_ARGS
    args = "IP=10.0.0.5/24; K8S_POD_NAME=x;K8S_POD_NAMESPACE=ns"
    environ = env("ADD", CNI_ARGS=args)
    request = parse_request(environ,
                            conf(ipam={"type": "nodeagent-ipam", "range": "10.0.0.0/24"}))
    attachment = cni_ipam._library_args(request)[1]
    assert attachment is request.attachment
    assert attachment.pod_name == "" and attachment.pod == ""
    assert observe.env_fields(environ)["pod"] == "ns" and "pod=ns " in request.describe() + " "


@pytest.mark.parametrize(("variable", "value"), [
    ("CNI_CONTAINERID", "c0ffee\n"),      # a trailing newline once passed a `$` regex
    ("CNI_CONTAINERID", "-c"),
    ("CNI_CONTAINERID", "c" * 201),
    ("CNI_IFNAME", "net1\n"),
    ("CNI_IFNAME", "net\u00a01"),         # non-ASCII whitespace
    ("CNI_IFNAME", "n" * 16),
    ("CNI_IFNAME", "é" * 8),              # 16 bytes
    ("CNI_ARGS", "K8S_POD_NAME=web\n"),
    ("CNI_ARGS", "K8S_POD_NAMESPACE=a/b"),
])
def test_identifiers_are_matched_whole(variable: str, value: str) -> None:
    with pytest.raises(CniError) as info:
        parse_request(env("ADD", **{variable: value}), conf())
    assert info.value.code == 4 and variable in info.value.msg


def test_one_ifname_rule_for_the_request_and_the_library() -> None:
    for name in ("net1", "e" * 15, "ñ" * 7, ".", "..", "a/b", "a:b", "a b", "a\tb", "", "x" * 16,
                 "\u2028"):
        try:
            validate_ifname(name)
            edge = True
        except CniError:
            edge = False
        try:
            Attachment("c1", name)
            library = True
        except CniError:
            library = False
        assert edge == library, name


def test_runtime_config_must_be_an_object(ctx) -> None:
    doc = answer(ctx, env("ADD"), conf(runtimeConfig=[1]))
    assert doc["code"] == 7 and "runtimeConfig" in doc["msg"]


def test_cni_version_must_be_a_supported_string(ctx) -> None:
    assert answer(ctx, env("ADD"), conf(cniVersion=["1.0.0"]))["code"] == 1


@pytest.mark.parametrize(("route", "field"), [
    ({"dst": "0.0.0.0/0", "scope": 256}, "ipam.routes[0].scope"),
    ({"dst": "0.0.0.0/0", "table": 1 << 32}, "ipam.routes[0].table"),
    ({"dst": "0.0.0.0/0", "mtu": True}, "ipam.routes[0].mtu"),
    ({"dst": "fe80::/64", "gw": "fe80::1%eth0"}, "ipam.routes[0].gw"),
])
def test_route_attributes_fit_the_kernel(route: dict, field: str) -> None:
    ipam_conf = {"type": "static", "addresses": [{"address": "10.0.0.5/24"}], "routes": [route]}
    request = parse_request(env("ADD"), conf(ipam=ipam_conf))
    with pytest.raises(CniError) as info:
        cni_ipam.static_result(request, ipam_conf)
    assert info.value.code == 7 and field in info.value.msg


@pytest.mark.parametrize("name", ["blue\n", "-blue", "a b", "x" * 254])
def test_network_name_follows_the_spec(ctx, name: str) -> None:
    doc = answer(ctx, env("ADD"), conf(name=name))
    assert doc["code"] == 7 and "name" in doc["msg"]


def test_ipam_range_count_is_bounded() -> None:
    ipam_conf = {"type": "nodeagent-ipam",
                 "ipRanges": [{"range": f"10.{i // 256}.{i % 256}.0/24"} for i in range(300)]}
    with pytest.raises(CniError) as info:
        parse_config(conf(ipam=ipam_conf))
    assert info.value.code == 7 and "more than 256 ranges" in info.value.msg
