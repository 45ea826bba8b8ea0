"""Metric values as Prometheus scrapes them: counters, and state read at scrape time."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent import __version__
from nodeagent.cnitypes.request import Attachment
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.config import parse_config
from nodeagent.metrics import Metrics
from nodeagent.status import PfStatus, StatusBoard


def scrape(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def test_cni_requests_are_counted_by_verb_type_and_result_and_timed() -> None:
    m = Metrics()
    m.cni_request("ADD", "macvlan", "ok", 0.004)
    m.cni_request("ADD", "macvlan", "ok", 0.2)
    m.cni_request("ADD", "macvlan", "7", 0.001)
    m.cni_request("DEL", "sriov", "ok", 3.0)

    s = scrape(m)

    total = "nodeagent_cni_requests_total"
    assert value(s, total, verb="ADD", type="macvlan", result="ok") == 2
    assert value(s, total, verb="ADD", type="macvlan", result="7") == 1
    assert value(s, total, verb="DEL", type="sriov", result="ok") == 1
    hist = "nodeagent_cni_request_duration_seconds"
    assert value(s, hist + "_count", verb="ADD", type="macvlan") == 3
    assert value(s, hist + "_bucket", verb="ADD", type="macvlan", le="0.005") == 2
    assert value(s, hist + "_bucket", verb="DEL", type="sriov", le="2.5") == 0
    assert value(s, hist + "_bucket", verb="DEL", type="sriov", le="5.0") == 1


def test_pools_and_pf_states_are_read_from_the_status_board_at_scrape_time() -> None:
    board = StatusBoard()
    m = Metrics(board)
    board.set_pools({"intel.com/sriov_a": {"total": 8, "allocated": 3, "unhealthy": 1}})
    board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", "applying", numvfs=0, desired_numvfs=8))

    s = scrape(m)
    assert value(s, "nodeagent_vf_pool_devices", resource="intel.com/sriov_a",
                 state="allocated") == 3
    assert value(s, "nodeagent_vf_pool_devices", resource="intel.com/sriov_a",
                 state="unhealthy") == 1
    states = {dict(labels)["state"]: v for (name, labels), v in s.items()
              if name == "nodeagent_pf_provisioning_state"}
    assert states == {"in-sync": 0, "applying": 1, "blocked": 0, "failed": 0,
                      "externally-managed": 0}

    board.set_pf(PfStatus("0000:3b:00.0", "ens1f0", "in-sync", numvfs=8, desired_numvfs=8))
    board.set_pools({"intel.com/sriov_a": {"total": 8, "allocated": 4, "unhealthy": 0}})
    s = scrape(m)
    assert value(s, "nodeagent_pf_provisioning_state", pf="0000:3b:00.0", name="ens1f0",
                 state="in-sync") == 1
    assert value(s, "nodeagent_pf_provisioning_state", pf="0000:3b:00.0", name="ens1f0",
                 state="applying") == 0
    assert value(s, "nodeagent_vf_pool_devices", resource="intel.com/sriov_a",
                 state="allocated") == 4


def test_ipam_usage_follows_allocations_and_releases(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam")
    m = Metrics()
    m.track_ipam(ipam)
    config = parse_config({"cniVersion": "1.1.0", "name": "blue", "ipam": {
        "type": "whereabouts", "range": "10.60.0.0/29", "gateway": "10.60.0.1",
        "datastore": "file"}})
    labels = {"network": "blue", "range": "10.60.0.0/29"}
    name = "nodeagent_ipam_pool_addresses"

    assert value(scrape(m), name, **labels, state="allocated") is None, "not served yet"
    ipam.allocate(config, Attachment("c1", "net1"))
    ipam.allocate(config, Attachment("c2", "net1"))
    s = scrape(m)
    # /29: .1-.6 usable; .1 is the gateway, never handed out.
    assert value(s, name, **labels, state="total") == 5
    assert value(s, name, **labels, state="allocated") == 2

    ipam.release(config, Attachment("c1", "net1"))
    assert value(scrape(m), name, **labels, state="allocated") == 1


def test_networks_sharing_a_store_namespace_are_reported_each(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "ipam")
    m = Metrics()
    m.track_ipam(ipam)
    blue = parse_config({"cniVersion": "1.1.0", "name": "blue", "ipam": {
        "type": "whereabouts", "range": "10.60.0.0/29", "datastore": "file"}})
    red = parse_config({"cniVersion": "1.1.0", "name": "red", "ipam": {
        "type": "whereabouts", "datastore": "file", "range": "10.61.0.0/24",
        "range_start": "10.61.0.10", "range_end": "10.61.0.19"}})
    assert blue.network == red.network, "both in whereabouts' default namespace"
    ipam.allocate(blue, Attachment("c1", "net1"))
    for n in range(3):
        ipam.allocate(red, Attachment(f"r{n}", "net2"))

    s = scrape(m)

    name = "nodeagent_ipam_pool_addresses"
    assert value(s, name, network="blue", range="10.60.0.0/29", state="allocated") == 1
    assert value(s, name, network="red", range="10.61.0.10-10.61.0.19", state="total") == 10
    assert value(s, name, network="red", range="10.61.0.10-10.61.0.19", state="allocated") == 3


def test_reconcile_errors_durations_and_build_info() -> None:
    m = Metrics()
    m.reconcile_error("0000:3b:00.0")
    m.reconcile_error("0000:3b:00.0")
    m.observe_reconcile(0.3)

    s = scrape(m)
    assert value(s, "nodeagent_reconcile_errors_total", pf="0000:3b:00.0") == 2
    assert value(s, "nodeagent_reconcile_duration_seconds_count") == 1
    assert value(s, "nodeagent_build_info", version=__version__) == 1


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.cni_request("DEL", "vlan", "ok", 0.01)

    assert value(scrape(a), "nodeagent_cni_requests_total", verb="DEL", type="vlan",
                 result="ok") == 1
    assert value(scrape(b), "nodeagent_cni_requests_total", verb="DEL", type="vlan",
                 result="ok") is None
