"""The metrics and health endpoint, over real HTTP on the loopback."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from nodeagent.httpserver import HttpServer, parse_address


def get(server: HttpServer, path: str) -> tuple[int, str, str]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read().decode()


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("nodeagent_test_things", "things", registry=registry).inc(3)
    return registry


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[HttpServer]:
    server = HttpServer("127.0.0.1:0", registry)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_port_zero_binds_a_free_port_and_serves_the_registry(server) -> None:
    assert server.port > 0

    status, ctype, body = get(server, "/metrics")

    assert status == 200 and ctype.startswith("text/plain")
    assert "nodeagent_test_things_total 3.0" in body.splitlines()


def test_healthy_and_ready_without_checks(server) -> None:
    assert get(server, "/healthz")[::2] == (200, "ok\n")
    assert get(server, "/readyz")[::2] == (200, "ok\n")


def test_readiness_waits_for_every_check_and_names_the_failing_ones(server) -> None:
    state = {"inventory": False, "cni-socket": False}
    server.add_readiness("inventory", lambda: state["inventory"])
    server.add_readiness("cni-socket", lambda: state["cni-socket"])

    assert get(server, "/readyz")[::2] == (503, "not ready: inventory, cni-socket\n")
    state["inventory"] = True
    assert get(server, "/readyz")[::2] == (503, "not ready: cni-socket\n")
    assert get(server, "/healthz")[0] == 200, "not ready is not dead"
    state["cni-socket"] = True
    assert get(server, "/readyz")[::2] == (200, "ok\n")


def test_liveness_fails_when_a_check_fails_or_raises(server) -> None:
    alive = {"cni-accept": True}
    server.add_liveness("cni-accept", lambda: alive["cni-accept"])

    def broken() -> bool:
        raise RuntimeError("thread gone")

    assert get(server, "/healthz")[0] == 200
    alive["cni-accept"] = False
    assert get(server, "/healthz")[::2] == (503, "not alive: cni-accept\n")
    alive["cni-accept"] = True
    server.add_liveness("watch", broken)
    assert get(server, "/healthz")[::2] == (503, "not alive: watch\n")


def test_other_paths_are_not_found(server) -> None:
    status, _, body = get(server, "/")
    assert status == 404 and "/metrics" in body


def test_stop_closes_the_port(registry) -> None:
    server = HttpServer("127.0.0.1:0", registry)
    server.start()
    port = server.port
    server.stop()

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_all_addresses_serves_the_ipv4_loopback(registry) -> None:
    server = HttpServer(":0", registry)
    server.start()
    try:
        assert get(server, "/healthz")[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize(("text", "parsed"), [
    (":9808", ("", 9808)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:9808", ("::1", 9808)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_address(text, parsed) -> None:
    assert parse_address(text) == parsed


@pytest.mark.parametrize("text", ["9808", "host:", ":70000", "::1:9808", "host:http"])
def test_bad_addresses_are_refused_with_the_expected_form(text) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|IPv6"):
        parse_address(text)
