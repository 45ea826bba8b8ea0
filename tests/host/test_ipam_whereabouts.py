"""whereabouts configurations on the agent's cluster store (a real etcd), never node-local by
accident; whereabouts' own reservations (IPPools, OverlappingRangeIPReservations served by the
replay API) honoured while both run, and imported by `nodeagent ipam import`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeagent import cli
from nodeagent import settings as agent_settings
from nodeagent.cnitypes.request import Attachment
from nodeagent.ipam import ops
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.errors import ADDRESS_IN_USE, INVALID_CONFIG, TRY_AGAIN_LATER, IpamError
from nodeagent.ipam.whereabouts import WhereaboutsWatch
from nodeagent.k8s.client import build_client
from nodeagent.settings import ClusterStore, Settings
from tests import ipam_etcd
from tests.k8s_replay import ReplayApiServer
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(
    not ipam_etcd.available(), reason="etcd not installed (Debian package etcd-server)"
)

CID = "4f9ec6a1d9b4c1d7e1b0c8f2a3e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2"



@pytest.fixture
def settings(etcd: ipam_etcd.EtcdServer, request: pytest.FixtureRequest,
             tmp_path: Path) -> Settings:
    """The agent's settings with the cluster store under a key prefix of this test's own."""
    prefix = "/test/" + request.node.name.replace("[", "-").replace("]", "")
    store = ClusterStore(dataclasses.replace(etcd.client_config(1.0), prefix=prefix))
    return Settings(state_dir=tmp_path / "state", ipam_state_dir=tmp_path / "ipam",
                    cluster_store=store)


@pytest.fixture
def api() -> Iterator[ReplayApiServer]:
    with ReplayApiServer() as server:
        yield server


def netconf(**ipam: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "net1", "type": "macvlan",
            "ipam": {"type": "whereabouts", "range": "10.0.0.0/24", **ipam}}


def allocation(cid: str, pod: str, ifname: str = "net1") -> dict[str, str]:
    return {"id": cid, "podref": pod, "ifname": ifname}


def first_ip(result: Any) -> str:
    return str(result.ips[0].address.ip)


def test_no_cluster_store_is_refused_naming_what_to_configure(tmp_path: Path) -> None:
    ipam = agent_settings.ipam_for(Settings(ipam_state_dir=tmp_path / "ipam"))
    config = parse_config(netconf())

    with pytest.raises(IpamError) as info:
        ipam.allocate(config, Attachment("c1", "net1"))

    e = info.value
    assert e.code == INVALID_CONFIG
    for needle in ("cluster store", "ipam.etcd", "--ipam-etcd-endpoints", '"datastore": "file"'):
        assert needle in e.msg
    assert not (tmp_path / "ipam").exists(), "nothing reserved, nothing written"
    node_local = parse_config(netconf(datastore="file"))
    assert first_ip(ipam.allocate(node_local, Attachment("c1", "net1"))) == "10.0.0.1"
    assert (tmp_path / "ipam" / "_unnamed" / "reservations.json").exists()


def test_whereabouts_configs_are_unique_across_nodes(settings: Settings) -> None:
    nodes = [agent_settings.ipam_for(settings, whereabouts=None) for _ in range(3)]
    config = parse_config(netconf())
    try:
        def attach(i: int) -> str:
            return first_ip(nodes[i % 3].allocate(config, Attachment(f"c{i}", "net1")))

        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(attach, range(30)))
        assert len(set(got)) == 30, "no address twice across nodes"
        usage = ops.show(config, nodes[0])
        assert usage.datastore == "cluster" and len(usage.reservations) == 30
        assert not settings.ipam_state_dir.exists(), "nothing node-local"
        nodes[1].release(config, Attachment("c0", "net1"))
        assert len(ops.show(config, nodes[2]).reservations) == 29
    finally:
        for n in nodes:
            n.close()


def test_addresses_an_ippool_holds_are_never_handed_out(settings: Settings,
                                                        api: ReplayApiServer) -> None:
    # whereabouts' state for 10.0.0.0/24: .1, .2 and .4 in the IPPool, .3 held by an
    # overlapping range of the same (unnamed) network.
    api.add_ippool("kube-system", "10.0.0.0-24", "10.0.0.0/24", {
        "1": allocation(CID, "default/client-0"),
        "2": allocation("c-wb-2", "default/client-1"),
        "4": allocation("c-wb-4", "default/client-2", ifname="net2")})
    api.add_overlapping_reservation("kube-system", "10.0.0.3", {
        "containerid": "c-wb-3", "podref": "default/other", "ifname": "net1"})
    client = build_client(host=api.url)
    ipam = agent_settings.ipam_for(settings, api=client)  # the fallback's one-shot read
    config = parse_config(netconf())
    try:
        assert first_ip(ipam.allocate(config, Attachment("c-new", "net1"))) == "10.0.0.5"
        # The pod whereabouts attached keeps its address when its ADD comes here.
        mine = ipam.allocate(config, Attachment(CID, "net1", "default", "client-0"))
        assert first_ip(mine) == "10.0.0.1"
        fixed = parse_config({**netconf(), "runtimeConfig": {"ips": ["10.0.0.2/24"]}})
        with pytest.raises(IpamError) as info:
            ipam.allocate(fixed, Attachment("c-thief", "net1"))
        assert info.value.code == ADDRESS_IN_USE and "default/client-1" in info.value.msg
        held = {str(r.ip): r.owner.pod for r in ops.show(config, ipam).reservations}
        assert held == {"10.0.0.1": "default/client-0", "10.0.0.2": "default/client-1",
                        "10.0.0.3": "default/other", "10.0.0.4": "default/client-2",
                        "10.0.0.5": ""}

        # Another node follows the IPPools with a watch: whereabouts (still running on other
        # nodes) takes .6; that node's next address skips it.
        watch = WhereaboutsWatch(client, watch_timeout=30).start()
        other = agent_settings.ipam_for(settings, whereabouts=watch.objects)
        try:
            assert watch.wait_synced(5)
            api.add_ippool("kube-system", "10.0.0.0-24", "10.0.0.0/24", {
                "1": allocation(CID, "default/client-0"),
                "2": allocation("c-wb-2", "default/client-1"),
                "4": allocation("c-wb-4", "default/client-2", ifname="net2"),
                "6": allocation("c-wb-6", "default/late")})
            assert wait_until(lambda: len(watch.objects().holdings(config)) == 5, 5)
            assert first_ip(other.allocate(config, Attachment("c-next", "net1"))) == "10.0.0.7"
        finally:
            other.close()
            watch.stop()
    finally:
        ipam.close()
        client.close()


def test_ippools_unreadable_means_no_address_yet(settings: Settings,
                                                 api: ReplayApiServer) -> None:
    api.down()
    watch = WhereaboutsWatch(build_client(host=api.url)).start()
    ipam = agent_settings.ipam_for(settings, whereabouts=lambda: watch.objects(0.2))
    config = parse_config(netconf())
    try:
        with pytest.raises(IpamError) as info:
            ipam.allocate(config, Attachment("c1", "net1"))
        assert info.value.code == TRY_AGAIN_LATER and "IPPools" in info.value.msg
        plain = agent_settings.ipam_for(settings, whereabouts=None)
        assert ops.show(config, plain).reservations == (), "nothing reserved"
        plain.close()
    finally:
        watch.stop()
        ipam.close()


def _cli_files(tmp_path: Path, settings: Settings, api: ReplayApiServer) -> dict[str, str]:
    files = {"settings": tmp_path / "agent.yaml", "config": tmp_path / "net1.conf",
             "kubeconfig": tmp_path / "kubeconfig"}
    files["settings"].write_text(yaml.safe_dump(settings.to_doc()))
    files["config"].write_text(json.dumps(netconf()))
    files["kubeconfig"].write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": api.url}}],
        "users": [{"name": "admin", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "admin"}}]}))
    return {k: str(v) for k, v in files.items()}


def test_import_from_whereabouts_is_idempotent_with_dry_run_and_summary(
        settings: Settings, api: ReplayApiServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    api.add_ippool("kube-system", "10.0.0.0-24", "10.0.0.0/24", {
        "1": allocation(CID, "default/client-0"), "2": allocation("c-wb-2", "default/c1")})
    api.add_overlapping_reservation("kube-system", "10.0.0.1", {
        "containerid": CID, "podref": "default/client-0", "ifname": "net1"})
    api.add_overlapping_reservation("kube-system", "10.0.0.3", {
        "containerid": "c-wb-3", "podref": "default/c3", "ifname": "net1"})
    api.add_ippool("kube-system", "10.9.0.0-24", "10.9.0.0/24", {"1": allocation("x", "a/b")})
    f = _cli_files(tmp_path, settings, api)
    argv = ["ipam", "import", "--from-whereabouts", "--config", f["config"],
            "--settings", f["settings"], "--kubeconfig", f["kubeconfig"]]

    def reservations() -> dict[str, str]:
        plain = agent_settings.ipam_for(settings, whereabouts=None)
        try:
            return {str(r.ip): r.owner.container_id
                    for r in ops.show(parse_config(netconf()), plain).reservations}
        finally:
            plain.close()

    assert cli.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would import 3, already present 0, conflicts 0" in out
    assert "10.0.0.1 for default/client-0" in out and "10.9.0.1" not in out
    assert reservations() == {}, "a dry run writes nothing"

    assert cli.main(argv) == 0
    assert "imported 3, already present 0, conflicts 0" in capsys.readouterr().out
    assert reservations() == {"10.0.0.1": CID, "10.0.0.2": "c-wb-2", "10.0.0.3": "c-wb-3"}

    assert cli.main(argv) == 0
    assert "imported 0, already present 3, conflicts 0" in capsys.readouterr().out
    # `ipam show` with the same settings sees them in the cluster store, with their pods.
    assert cli.main(["ipam", "show", "--config", f["config"], "--settings", f["settings"]]) == 0
    shown = capsys.readouterr().out
    assert "(cluster)" in shown and "default/client-0" in shown and "default/c3" in shown

    # An address the store already gave to someone else is reported, never overwritten.
    node = agent_settings.ipam_for(settings, whereabouts=None)
    assert first_ip(node.allocate(parse_config(netconf()), Attachment("c-ours", "net1"))) \
        == "10.0.0.4"
    node.close()
    api.add_overlapping_reservation("kube-system", "10.0.0.4", {
        "containerid": "c-wb-4", "podref": "default/c4", "ifname": "net1"})
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "conflicts 1" in out and "CONFLICT 10.0.0.4" in out and "c-ours" in out
    assert reservations()["10.0.0.4"] == "c-ours"


def test_a_reservation_without_a_container_id_still_holds_its_address(
        settings: Settings, api: ReplayApiServer) -> None:
    # containerid is omitempty in whereabouts' type; ifname may be missing in older ones.
    api.add_overlapping_reservation("kube-system", "10.0.0.1", {"podref": "default/bare"})
    api.add_ippool("kube-system", "10.0.0.0-24", "10.0.0.0/24",
                   {"2": {"id": "c-old", "podref": "default/old"}})
    client = build_client(host=api.url)
    ipam = agent_settings.ipam_for(settings, api=client)
    config = parse_config(netconf())
    try:
        assert first_ip(ipam.allocate(config, Attachment("c-new", "net1"))) == "10.0.0.3"
        held = {str(r.ip): (r.owner.container_id, r.owner.ifname, r.owner.pod)
                for r in ops.show(config, ipam).reservations}
        assert held["10.0.0.1"] == ("whereabouts-10.0.0.1", "", "default/bare")
        assert held["10.0.0.2"] == ("c-old", "", "default/old")
    finally:
        ipam.close()
        client.close()
