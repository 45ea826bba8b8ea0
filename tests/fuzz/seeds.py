"""Real documents the generators start from: the shipped examples, the Helm defaults, and
configurations written like the tests' (every link type, every IPAM type, every verb)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml

from tests.fuzz import cases

REPO = Path(__file__).resolve().parents[2]

#: The fuzzer's own links: ``fzh0`` carries the default route of its stand-in host namespace,
#: ``fzm0`` is a master inside its pod namespace (``linkInContainer``).
HOST_MASTER = "fzh0"
POD_MASTER = "fzm0"

_RANGES = {"type": "nodeagent-ipam", "ranges": [[{"subnet": "10.10.0.0/24",
                                                  "rangeStart": "10.10.0.10",
                                                  "rangeEnd": "10.10.0.20",
                                                  "gateway": "10.10.0.1"}]],
           "routes": [{"dst": "10.20.0.0/16"}], "dns": {"nameservers": ["10.10.0.2"]}}

HANDWRITTEN: list[dict[str, Any]] = [
    {"cniVersion": "1.1.0", "name": "fz-macvlan", "type": "macvlan", "master": HOST_MASTER,
     "mode": "bridge", "ipam": _RANGES},
    {"cniVersion": "1.0.0", "name": "fz-macvlan-in", "type": "macvlan", "master": POD_MASTER,
     "linkInContainer": True, "mtu": 1400, "mac": "02:11:22:33:44:55",
     "ipam": {"type": "static", "addresses": [{"address": "10.11.0.5/24",
                                               "gateway": "10.11.0.1"}],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"cniVersion": "1.1.0", "name": "fz-default", "type": "macvlan",
     "ipam": {"type": "whereabouts", "range": "10.12.0.0/28", "gateway": "10.12.0.1"}},
    {"cniVersion": "1.0.0", "name": "fz-static", "type": "macvlan", "master": HOST_MASTER,
     "capabilities": {"ips": True, "mac": True}, "ipam": {"type": "static"},
     "runtimeConfig": {"ips": ["10.13.0.7/24"], "mac": "02:00:00:00:00:07"}},
    {"cniVersion": "1.1.0", "name": "fz-ipvlan", "type": "ipvlan", "master": HOST_MASTER,
     "mode": "l2", "ipam": {"type": "static", "addresses": [{"address": "fd00::5/64"}]}},
    {"cniVersion": "1.1.0", "name": "fz-vlan", "type": "vlan", "master": HOST_MASTER,
     "vlanId": 100, "ipam": {}},
    {"cniVersion": "1.0.0", "name": "fz-sriov", "type": "sriov", "deviceID": "0000:3b:01.0",
     "vlan": 100, "spoofchk": "on", "trust": "off", "link_state": "auto",
     "ipam": {"type": "static", "addresses": [{"address": "10.14.0.5/24"}]}},
    {"cniVersion": "1.1.0", "name": "fz-delegate", "type": "macvlan", "master": HOST_MASTER,
     "ipam": {"type": "fzipam-ok"}},
    {"cniVersion": "1.1.0", "name": "fz-delegate-bad", "type": "macvlan", "master": HOST_MASTER,
     "ipam": {"type": "fzipam-code"}},
    {"cniVersion": "1.1.0", "name": "fz-macvlan", "type": "macvlan", "master": HOST_MASTER,
     "ipam": _RANGES, "cni.dev/valid-attachments": [{"containerID": "fz1", "ifname": "net1"}]},
    {"cniVersion": "1.1.0", "name": "fz-macvlan", "type": "macvlan", "master": HOST_MASTER,
     "ipam": _RANGES, "prevResult": "$PREV_RESULT"},
    {"cniVersion": "1.0.0", "name": "fz-check", "type": "macvlan", "master": HOST_MASTER,
     "ipam": {"type": "static", "addresses": [{"address": "10.15.0.5/24"}]},
     "prevResult": {"cniVersion": "1.0.0",
                    "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:01",
                                    "sandbox": "/var/run/netns/x"}],
                    "ips": [{"address": "10.15.0.5/24", "interface": 0}],
                    "routes": [{"dst": "0.0.0.0/0", "gw": "10.15.0.1"}],
                    "dns": {}}},
    {"cniVersion": "1.1.0", "name": "fz-ipam", "ipam": _RANGES},
    {"cniVersion": "1.1.0", "name": "fz-sbr", "type": "macvlan", "master": HOST_MASTER,
     "ipam": _RANGES, "sbr": {"gateways": ["10.10.0.1"], "addSourceHints": True}},
    {"cniVersion": "1.1.0", "name": "fz-macvlan", "type": "sbr", "table": 100,
     "prevResult": "$PREV_RESULT"},
    {"cniVersion": "1.0.0", "name": "fz-macvlan", "type": "sbr", "prevResult": "$PREV_RESULT"},
    {"cniVersion": "1.1.0", "name": "fz-etcd", "type": "macvlan", "master": HOST_MASTER,
     "ipam": {"type": "whereabouts", "datastore": "etcd", "etcd_host": "127.0.0.1:1",
              "range": "10.16.0.0/24"}},
]


def _nad_configs() -> list[dict[str, Any]]:
    out = []
    for path in sorted((REPO / "deploy" / "examples").glob("nad-*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            config = (doc or {}).get("spec", {}).get("config")
            if config:
                out.append(json.loads(config))
    return out


@functools.cache
def cni_configs() -> tuple[dict[str, Any], ...]:
    """Network configurations: examples, hand-written, and the JSON stdins of the corpus."""
    found = _nad_configs() + HANDWRITTEN
    for target in ("cni", "shim"):
        for path in cases.corpus_files(target):
            _, case = cases.load(path)
            for call in case.get("calls", []):
                stdin = call.get("stdin")
                if isinstance(stdin, dict) and isinstance(stdin.get("json"), dict):
                    found.append(stdin["json"])
    return tuple(found)


@functools.cache
def ipam_configs() -> tuple[dict[str, Any], ...]:
    return tuple(c for c in cni_configs() if isinstance(c.get("ipam"), dict))


@functools.cache
def device_plugin_configs() -> tuple[dict[str, Any], ...]:
    values = yaml.safe_load((REPO / "deploy/helm/nodeagent/values.yaml").read_text())
    return (
        values["devicePlugin"],
        {"resourceList": [
            {"resourceName": "sriov_net", "selectors": {"pfNames": ["ens1f0#0-3"]}},
            {"resourceName": "plain", "resourcePrefix": "example.org", "excludeTopology": True,
             "deviceType": "accelerator",
             "selectors": [{"rootDevices": ["0000:86:00.0#1,3-4"], "vendors": ["8086"]},
                           {"devices": ["0x154c"], "needVhostNet": True}]},
        ]},
    )


POLICY_EXAMPLE = """
resourcePrefix: example.com
pfs:
  - name: fronthaul
    nicSelector: {pfNames: [ens1f0], vendor: "0x8086"}
    numVfs: 6
    mtu: 9000
    vfDefaults: {mac: derived, spoofchk: true, trust: false, vlan: 100, qos: 2}
    vfGroups:
      - {vfs: "0-1,4", driver: vfio-pci, trust: true, resourceName: dpdk}
  - name: midhaul
    nicSelector: {rootDevices: ["0000:81:00.0"]}
    numVfs: 2
    externallyManaged: true
"""


@functools.cache
def policies() -> tuple[Any, ...]:
    return (yaml.safe_load(POLICY_EXAMPLE),
            {"pfs": [{"nicSelector": {"pfNames": ["ens2"]}, "numVfs": 1}]})
