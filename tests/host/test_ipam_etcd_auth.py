"""The etcd store against a real etcd that wants TLS, client certificates or a user/password.

Certificates are made per run (tests/ipam_etcd.py ``make_pki``). Each refusal must be a CNI
error with code 11 that reserves nothing, and come at once rather than after ``etcd_timeout``
(set long here, so waiting it out shows).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.cnitypes.request import Attachment
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.configtypes import IPAMConfig
from nodeagent.ipam.errors import TRY_AGAIN_LATER, IpamError
from nodeagent.ipam.etcd.client import EtcdClient
from nodeagent.ipam.etcd.store import prefix_end
from tests import ipam_etcd

pytestmark = pytest.mark.skipif(
    not ipam_etcd.available(), reason="etcd not installed (Debian package etcd-server)"
)

TIMEOUT = 10.0  # etcd_timeout of every config here
FAST = TIMEOUT / 2  # a refusal comes well before the deadline


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ipam_etcd.Pki:
    return ipam_etcd.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_etcd(pki: ipam_etcd.Pki) -> Iterator[ipam_etcd.EtcdServer]:
    """TLS for clients; any client may connect."""
    with ipam_etcd.EtcdServer(pki=pki) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_etcd(pki: ipam_etcd.Pki) -> Iterator[ipam_etcd.EtcdServer]:
    """TLS, and only clients with a certificate of the test CA."""
    with ipam_etcd.EtcdServer(pki=pki, client_cert_auth=True) as server:
        yield server


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"/test/{request.node.name.replace('[', '-').replace(']', '')}"


def config(hosts: str, prefix: str, **ipam: Any) -> IPAMConfig:
    doc = {
        "type": "whereabouts",
        "range": "10.0.0.0/24",
        "network_name": "pool1",
        "datastore": "etcd",
        "etcd_host": hosts,
        "etcd_prefix": prefix,
        "etcd_timeout": TIMEOUT,
        **{k: str(v) if isinstance(v, Path) else v for k, v in ipam.items()},
    }
    return parse_config({"cniVersion": "1.1.0", "name": "net1", "ipam": doc})


def stored(server: ipam_etcd.EtcdServer, prefix: str, user: str = "") -> dict[str, str]:
    """Address -> container ID, read from etcd with credentials the server accepts."""
    cfg = server.client_config(timeout=TIMEOUT)
    if user:
        name, _, password = user.partition(":")
        cfg = dataclasses.replace(cfg, username=name, password=password)
    client = EtcdClient(cfg)
    root = f"{prefix}/pool1/ip4/".encode()
    try:
        return {
            (doc := json.loads(kv.value))["ip"]: doc["id"]
            for kv in client.range_all(root, prefix_end(root))
        }
    finally:
        client.close()


def allocate(c: IPAMConfig, container: str) -> list[str]:
    ipam = Ipam("/nonexistent")
    try:
        return [str(ip.address) for ip in ipam.allocate(c, Attachment(container, "eth0")).ips]
    finally:
        ipam.close()


def refused(c: IPAMConfig, container: str) -> IpamError:
    """The error of an ADD that must fail at once."""
    began = time.monotonic()
    with pytest.raises(IpamError) as info:
        allocate(c, container)
    assert time.monotonic() - began < FAST, "waited for the deadline instead of failing"
    assert info.value.code == TRY_AGAIN_LATER, info.value
    return info.value


def test_tls_with_the_servers_ca(
    tls_etcd: ipam_etcd.EtcdServer, pki: ipam_etcd.Pki, prefix: str
) -> None:
    c = config(tls_etcd.url, prefix, etcd_ca_cert_file=pki.ca)
    assert allocate(c, "good") == ["10.0.0.1/24"]
    assert stored(tls_etcd, prefix) == {"10.0.0.1": "good"}


def test_tls_with_a_wrong_ca_is_refused_and_reserves_nothing(
    tls_etcd: ipam_etcd.EtcdServer, pki: ipam_etcd.Pki, prefix: str
) -> None:
    error = refused(config(tls_etcd.url, prefix, etcd_ca_cert_file=pki.other_ca), "wrong-ca")
    assert "TLS failed" in error.msg and "etcd_ca_cert_file" in error.msg
    assert tls_etcd.endpoint in error.msg
    assert "CERTIFICATE_VERIFY_FAILED" in error.details.upper().replace(" ", "_")
    assert stored(tls_etcd, prefix) == {}


def test_plain_grpc_against_a_tls_server_is_refused(
    tls_etcd: ipam_etcd.EtcdServer, prefix: str
) -> None:
    error = refused(config(tls_etcd.endpoint, prefix), "plaintext")  # no https://, no files
    assert tls_etcd.endpoint in error.msg
    assert stored(tls_etcd, prefix) == {}


def test_client_certificate_auth(
    mtls_etcd: ipam_etcd.EtcdServer, pki: ipam_etcd.Pki, prefix: str
) -> None:
    files = {
        "etcd_ca_cert_file": pki.ca,
        "etcd_cert_file": pki.client,
        "etcd_key_file": pki.client_key,
    }
    assert allocate(config(mtls_etcd.url, prefix, **files), "with-cert") == ["10.0.0.1/24"]
    error = refused(config(mtls_etcd.url, prefix, etcd_ca_cert_file=pki.ca), "without-cert")
    assert mtls_etcd.endpoint in error.msg and "TLS failed" in error.msg
    assert stored(mtls_etcd, prefix) == {"10.0.0.1": "with-cert"}


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not installed (etcd-client)")
def test_username_password_over_tls(pki: ipam_etcd.Pki, prefix: str) -> None:
    with ipam_etcd.EtcdServer(pki=pki) as server:
        server.etcdctl("user", "add", "root:rootpw")
        server.etcdctl("auth", "enable")
        tls = {"etcd_ca_cert_file": pki.ca}
        good = config(server.url, prefix, etcd_username="root", etcd_password="rootpw", **tls)
        assert allocate(good, "a") == ["10.0.0.1/24"]
        # The first endpoint is down: authentication fails over like every other call.
        dead = f"https://127.0.0.1:{ipam_etcd.free_port()}"
        failover = config(
            f"{dead},{server.url}", prefix, etcd_username="root", etcd_password="rootpw", **tls
        )
        assert allocate(failover, "b") == ["10.0.0.2/24"]

        bad = config(server.url, prefix, etcd_username="root", etcd_password="nope", **tls)
        error = refused(bad, "wrong-password")
        assert "refused etcd_username 'root'" in error.msg and "nope" not in str(
            error.to_dict("1.1.0")
        )
        assert "authentication failed" in error.details
        error = refused(config(server.url, prefix, **tls), "anonymous")
        assert "rejected" in error.msg and "user name is empty" in error.details
        assert stored(server, prefix, user="root:rootpw") == {"10.0.0.1": "a", "10.0.0.2": "b"}
