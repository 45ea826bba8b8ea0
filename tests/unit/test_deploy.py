"""The deployment: the Helm chart rendered offline and validated against the Kubernetes schemas,
its CRD and the examples against their own schemas and the agent's own parsers, the Dockerfile
against the tree it builds from."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cni import ipam as cni_ipam
from cni.install import TAKEOVER_NAMES, parse_names
from cni.kinds import bond, ipvlan, macvlan, sriov, vlan, vxlan
from cni.protocol import CniRequest, parse_request
from deviceplugin import config as dp_config
from nodeagent.cli import build_parser
from nodeagent.cnitypes.errors import CniError
from nodeagent.ipam.config import parse_config
from nodeagent.provision.policy import parse as parse_policy
from tests.deploy_render import (
    CHART,
    EXAMPLES,
    NAD_SCHEMA,
    ROOT,
    crd_validator,
    crds,
    documents,
    example_objects,
    find,
    lint,
    nad_config,
    render,
)

#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())

#: The agent's rights, from the shared contract: (API group, resource, verb).
CONTRACT_RIGHTS = {
    ("", "nodes", "get"),
    *(("nodeagent.io", "nodenetworkstates", v) for v in ("get", "create")),
    ("nodeagent.io", "nodenetworkstates/status", "update"),
    ("", "events", "create"), ("", "events", "patch"),
    ("", "pods", "list"), ("", "pods", "watch"),
    *(("whereabouts.cni.cncf.io", r, v) for r in ("ippools", "overlappingrangeipreservations")
      for v in ("list", "watch")),
    # MultiNetworkPolicy enforcement (agent.networkPolicy)
    *(("k8s.cni.cncf.io", r, v) for r in ("multi-networkpolicies",
                                          "network-attachment-definitions")
      for v in ("list", "watch")),
    ("", "namespaces", "list"), ("", "namespaces", "watch"), ("", "pods", "get"),
}

#: Host paths the agent mounts (contract), for the default values.
CONTRACT_HOST_PATHS = {
    "/sys", "/dev/vfio", "/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources",
    "/opt/cni/bin", "/etc/cni/net.d", "/run/netns", "/run/nodeagent", "/var/lib/nodeagent",
}
#: /opt/cni/bin: the preStop hook's `cni uninstall` (cni.uninstallOnRemoval).
WRITABLE = {"/sys", "/var/lib/kubelet/device-plugins", "/run/nodeagent", "/var/lib/nodeagent",
            "/opt/cni/bin"}

OPENSHIFT = yaml.safe_load((CHART / "values-openshift.yaml").read_text())
POLICY = {"pfs": [{"name": "fronthaul", "nicSelector": {"pfNames": ["ens1f0"]}, "numVfs": 8,
                   "vfGroups": [{"vfs": "0-3", "driver": "vfio-pci"}]}]}
EXTRA_NAD = {"name": "storage-net", "namespace": "storage", "config": {
    "type": "macvlan", "master": "ens3", "ipam": {"type": "whereabouts", "range": "10.9.0.0/24"}}}

VALUE_SETS = {
    "defaults": {},
    "openshift": OPENSHIFT,
    "everything": {
        "policy": POLICY, "networkAttachmentDefinitions": {"examples": True, "extra": [EXTRA_NAD]},
        "agent": {"privileged": True, "hostPID": True, "publishNodeState": False,
                  "extraArgs": ["--allocation-policy=spread"],
                  "extraEnv": [{"name": "NODEAGENT_TIMEOUT", "value": "5"}]},
        "metrics": {"port": 19808, "host": "127.0.0.1", "annotations": False},
        "nodeSelector": None, "image": {"repository": "registry.example/nodeagent", "tag": "dev",
                                      "pullSecrets": [{"name": "regcred"}]},
        "kubelet": {"rootDir": "/var/lib/k0s/kubelet"}, "log": {"level": "debug"},
        "ipam": {"etcd": {"deploy": True, "storage": {"storageClassName": "fast"}},
                 "clusterName": "lab"},
    },
    "nothing-optional": {"devicePlugin": {"resourceList": []}, "cni": {"install": False},
                         "namespace": {"create": False, "name": ""}},
}


def agent_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(objects, "DaemonSet")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "nodeagent"]
    return container


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "DaemonSet")["spec"]["template"]["spec"]


def mounts(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, dict]:
    """mountPath -> the mount plus its volume's hostPath (None for other volumes)."""
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    return {m["mountPath"]: {**m, "hostPath": volumes[m["name"]].get("hostPath", {}).get("path")}
            for m in container["volumeMounts"]}


def flag(objects: list[dict[str, Any]], name: str) -> str | None:
    """The value of ``--name=VALUE`` in the agent's arguments (the last one wins, as in the
    CLI)."""
    values = [a.split("=", 1)[1] for a in agent_container(objects)["args"]
              if a.startswith(f"--{name}=")]
    return values[-1] if values else None


def daemon_args(objects: list[dict[str, Any]], node: str = "worker-1") -> Any:
    """The agent's command line as the real CLI parses it ($(NODE_NAME) as the kubelet fills
    it in); fails naming any flag the CLI does not know."""
    container = agent_container(objects)
    argv = [a.replace("$(NODE_NAME)", node) for a in container["args"]]
    assert container["command"] == ["nodeagent"]
    args, unknown = build_parser().parse_known_args(argv)
    assert unknown == [], f"flags the agent does not accept: {unknown}"
    return args


# -- rendering and the Kubernetes schemas ---------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_objects_validate_against_kubernetes_schemas(name: str) -> None:
    objects = render(VALUE_SETS[name])
    kinds = {o["kind"] for o in objects}
    assert {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
            "ConfigMap", "DaemonSet"} <= kinds
    for obj in objects:
        if obj["apiVersion"] == "k8s.cni.cncf.io/v1":
            continue  # a CRD's object: checked against its CRD below
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(map(str, exc.path))
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} against {version}:"
                            f" {where}: {exc.message}")


@pytest.mark.parametrize("name", ["defaults", "everything"])
def test_helm_lint_finds_nothing_above_info(name: str) -> None:
    findings = lint(VALUE_SETS[name])
    assert [f for f in findings if f["severity"] > 1] == []


def test_everything_in_the_default_install_lands_in_the_agent_namespace() -> None:
    objects = render(namespace="default")
    ns = find(objects, "Namespace")
    assert ns["metadata"]["name"] == "nodeagent"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    namespaced = [o for o in objects if o["kind"] in ("ServiceAccount", "ConfigMap", "DaemonSet")]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"nodeagent"}
    binding = find(objects, "ClusterRoleBinding")
    sa = find(objects, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "nodeagent"}]
    assert binding["roleRef"]["name"] == find(objects, "ClusterRole")["metadata"]["name"]
    assert pod_spec(objects)["serviceAccountName"] == sa["metadata"]["name"]


def test_an_existing_namespace_is_used_as_it_is() -> None:
    objects = render({"namespace": {"create": False, "name": ""}}, namespace="kube-system")
    assert "Namespace" not in {o["kind"] for o in objects}
    assert find(objects, "DaemonSet")["metadata"]["namespace"] == "kube-system"
    assert find(objects, "ClusterRoleBinding")["subjects"][0]["namespace"] == "kube-system"


@pytest.mark.parametrize(("values", "complaint"), [
    ({"metrics": {"port": 0}}, "/metrics/port"),
    ({"nodeSelecter": {"a": "b"}}, "nodeSelecter"),
    ({"cni": {"binDir": "opt/cni/bin"}}, "/cni/binDir"),
    ({"cni": {"takeOver": ["macvlan", "bridge"]}}, "/cni/takeOver/1"),
    ({"log": {"format": "xml"}}, "/log/format"),
    ({"agent": {"allocationPolicy": "random"}}, "/agent/allocationPolicy"),
    ({"networkAttachmentDefinitions": {"extra": [{"name": "x"}]}}, "config"),
    ({"ipam": {"etcd": {"endpoints": ["https://a:2379, b:2379"]}}}, "/ipam/etcd/endpoints"),
    ({"ipam": {"etcd": {"replicas": 2}}}, "/ipam/etcd/replicas"),
    ({"ipam": {"clusterName": "a/b"}}, "/ipam/clusterName"),
])
def test_bad_values_are_refused_naming_the_value(values: dict, complaint: str) -> None:
    from helm_python import HelmError

    with pytest.raises(HelmError) as info:
        render(values)
    assert complaint in str(info.value)


def test_chart_and_image_versions_follow_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and chart["appVersion"] == version.group(1)
    container = agent_container(render())
    assert container["image"] == f"nodeagent:{version.group(1)}"
    assert agent_container(render({"image": {"tag": "dev"}}))["image"] == "nodeagent:dev"


# -- the DaemonSet ------------------------------------------------------------------------


def test_agent_runs_unprivileged_with_exactly_two_capabilities() -> None:
    objects = render()
    spec = pod_spec(objects)
    assert spec["hostNetwork"] is True
    assert spec["hostPID"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["terminationGracePeriodSeconds"] > 0
    ds = find(objects, "DaemonSet")
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    security = agent_container(objects)["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN"]}
    (init,) = spec["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in init["securityContext"]["capabilities"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_privileged_and_host_pid_only_when_asked_for() -> None:
    objects = render({"agent": {"privileged": True, "hostPID": True}})
    assert pod_spec(objects)["hostPID"] is True
    security = agent_container(objects)["securityContext"]
    assert security["privileged"] is True
    assert "capabilities" not in security


def test_every_contract_host_path_is_mounted_where_the_agent_expects_it() -> None:
    objects = render()
    got = mounts(objects, agent_container(objects))
    by_host = {m["hostPath"]: (path, m) for path, m in got.items() if m["hostPath"]}
    assert set(by_host) >= CONTRACT_HOST_PATHS
    for host_path in CONTRACT_HOST_PATHS:
        container_path, mount = by_host[host_path]
        assert container_path == host_path, f"{host_path} mounted at {container_path}"
        assert mount.get("readOnly", False) is (host_path not in WRITABLE), host_path
    assert by_host["/run/netns"][1]["mountPropagation"] == "HostToContainer"


def test_host_paths_follow_the_cni_and_kubelet_values() -> None:
    objects = render({**OPENSHIFT, "kubelet": {"rootDir": "/var/lib/k0s/kubelet/"}})
    container = agent_container(objects)
    got = mounts(objects, container)
    binary_dir, conf_dir = OPENSHIFT["cni"]["binDir"], OPENSHIFT["cni"]["confDir"]
    # IPAM plugins other than its own run from the runtime's CNI_PATH: same path inside.
    assert got[binary_dir]["hostPath"] == binary_dir
    assert got[conf_dir]["hostPath"] == conf_dir
    assert got["/var/lib/kubelet/device-plugins"]["hostPath"] == (
        "/var/lib/k0s/kubelet/device-plugins")
    assert got["/var/lib/kubelet/pod-resources"]["hostPath"] == (
        "/var/lib/k0s/kubelet/pod-resources")
    (init,) = pod_spec(objects)["initContainers"]
    init_mounts = mounts(objects, init)
    dest = init["command"][init["command"].index("--dest") + 1]
    assert init_mounts[dest]["hostPath"] == binary_dir
    assert not init_mounts[dest].get("readOnly", False)


def test_init_container_installs_the_shim_with_the_real_cli() -> None:
    (init,) = pod_spec(render())["initContainers"]
    assert init["command"][0] == "nodeagent"
    args = build_parser().parse_args(init["command"][1:])
    assert (args.command, args.cni_command, str(args.dest)) == ("cni", "install",
                                                                "/host/opt/cni/bin")
    assert args.no_fallback, "the host cannot run the image's Python: no fallback script"
    assert parse_names(args.take_over) == TAKEOVER_NAMES
    (init,) = pod_spec(render({"cni": {"takeOver": ["sriov", "whereabouts"]}}))["initContainers"]
    args = build_parser().parse_args(init["command"][1:])
    assert parse_names(args.take_over) == ("sriov", "whereabouts")
    (init,) = pod_spec(render({"cni": {"takeOver": []}}))["initContainers"]
    assert parse_names(build_parser().parse_args(init["command"][1:]).take_over) == ()
    assert "initContainers" not in pod_spec(render({"cni": {"install": False}}))


def test_the_agent_puts_the_plugins_back_when_removed_not_when_replaced() -> None:
    objects = render(OPENSHIFT)
    container = agent_container(objects)
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[0] == "nodeagent"
    args = build_parser().parse_args(hook[1:])
    assert (args.command, args.cni_command) == ("cni", "uninstall")
    assert args.if_removed, "a rolling update must keep the shim for the next agent"
    binary_dir = OPENSHIFT["cni"]["binDir"]
    assert str(args.dest) == binary_dir
    mount = mounts(objects, container)[binary_dir]
    assert mount["hostPath"] == binary_dir and not mount.get("readOnly", False)
    env = {e["name"] for e in container["env"]}
    assert {"POD_NAME", "POD_NAMESPACE", "NODE_NAME"} <= env  # what --if-removed asks about
    for values in ({"cni": {"uninstallOnRemoval": False}}, {"cni": {"install": False}}):
        objects = render(values)
        container = agent_container(objects)
        assert "lifecycle" not in container
        assert mounts(objects, container)["/opt/cni/bin"]["readOnly"] is True


def test_agent_command_line_is_accepted_by_the_agent() -> None:
    objects = render()
    args = daemon_args(objects)
    assert args.command == "daemon"
    assert args.log_level == "info"
    assert args.log_format == "json"
    assert args.node_name == "worker-1"
    assert args.metrics_address == ":9808"
    assert args.publish_node_state is True
    env = {e["name"]: e for e in agent_container(objects)["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    overridden = daemon_args(render(VALUE_SETS["everything"]))
    assert overridden.log_level == "debug"
    assert overridden.publish_node_state is False
    assert overridden.allocation_policy == "spread"  # extraArgs come last and win


def test_every_path_the_agent_is_given_is_on_a_mounted_volume() -> None:
    objects = render({"policy": POLICY})
    container = agent_container(objects)
    mounted = [p for p in mounts(objects, container) if p != "/"]
    paths = [a.split("=", 1)[1] for a in container["args"] if re.match(r"^--[\w-]+=/", a)]
    assert len(paths) >= 6
    for path in paths:
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounted), path


@pytest.mark.parametrize(("metrics", "address"), [
    ({}, ":9808"),
    ({"port": 19100}, ":19100"),
    ({"host": "127.0.0.1"}, "127.0.0.1:9808"),
    ({"host": "::1", "port": 9100}, "[::1]:9100"),
])
def test_probes_and_metrics_address_use_the_metrics_port(metrics: dict, address: str) -> None:
    objects = render({"metrics": metrics})
    container = agent_container(objects)
    assert flag(objects, "metrics-address") == address
    (port,) = container["ports"]
    assert port["containerPort"] == metrics.get("port", 9808)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = container[probe]["httpGet"]
        assert (http["path"], http["port"]) == (path, port["name"])
        assert http.get("host") == metrics.get("host")


def test_resources_have_requests_and_a_memory_limit() -> None:
    resources = agent_container(render())["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_node_selector_defaults_to_sriov_capable_nodes_and_can_be_dropped() -> None:
    label = {"feature.node.kubernetes.io/network-sriov.capable": "true"}
    assert pod_spec(render())["nodeSelector"] == label
    assert "nodeSelector" not in pod_spec(render({"nodeSelector": None}))
    assert pod_spec(render({"tolerations": []})).get("tolerations") is None


# -- RBAC -------------------------------------------------------------------------------


def rights(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_cluster_role_grants_exactly_the_contract() -> None:
    objects = render()
    role = find(objects, "ClusterRole")
    assert rights(role["rules"]) == CONTRACT_RIGHTS
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames/URLs
    # The preStop hook's question (removed or replaced?), in the agent's namespace only.
    local = find(objects, "Role")
    assert local["metadata"]["namespace"] == "nodeagent"
    assert rights(local["rules"]) == {("", "pods", "get"), ("apps", "daemonsets", "get")}
    binding = find(objects, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": local["metadata"]["name"]}
    assert binding["subjects"][0]["name"] == pod_spec(objects)["serviceAccountName"]
    off = find(render({"agent": {"networkPolicy": False}}), "ClusterRole")
    assert not {r for r in rights(off["rules"]) if r[0] == "k8s.cni.cncf.io"}
    assert "--no-network-policy" in agent_container(
        render({"agent": {"networkPolicy": False}}))["args"]
    kept = render({"cni": {"uninstallOnRemoval": False}})
    assert not {o["kind"] for o in kept} & {"Role", "RoleBinding"}


# -- the ConfigMap --------------------------------------------------------------------------


def test_config_map_carries_the_policy_and_pools_the_agent_parses() -> None:
    objects = render({"policy": POLICY})
    data = find(objects, "ConfigMap")["data"]
    assert yaml.safe_load(data["policy.yaml"]) == POLICY
    policy = parse_policy(data["policy.yaml"])
    assert [pf.num_vfs for pf in policy.pfs] == [8]
    pools = dp_config.parse(json.loads(data["config.json"]))
    assert {r.full_name for r in pools.resources} == {"intel.com/sriov_netdevice",
                                                     "intel.com/sriov_dpdk"}
    config_mount = next(m for p, m in mounts(objects, agent_container(objects)).items()
                        if m["name"] == "config")
    assert flag(objects, "policy") == f"{config_mount['mountPath']}/policy.yaml"
    assert flag(objects, "device-plugin-config") == f"{config_mount['mountPath']}/config.json"


def test_an_empty_policy_or_pool_list_leaves_the_file_out() -> None:
    data = find(render({"devicePlugin": {"resourceList": []}}), "ConfigMap")["data"]
    assert set(data) == {"agent.yaml"}  # the agent's settings are always there


def test_new_pools_roll_the_agents_and_a_new_policy_does_not() -> None:
    """The device plugin reads its pools at start; the policy is re-read live."""
    def checksum(values: dict) -> str:
        ds = find(render(values), "DaemonSet")
        return ds["spec"]["template"]["metadata"]["annotations"]["checksum/pools"]

    assert checksum({}) == checksum({"policy": POLICY})
    pools = {"devicePlugin": {"resourceList": [{"resourceName": "x",
                                                "selectors": {"drivers": ["iavf"]}}]}}
    assert checksum(pools) != checksum({})


# -- the CRD ----------------------------------------------------------------------------


def nns_crd() -> dict[str, Any]:
    return find(crds(), "CustomResourceDefinition", "nodenetworkstates.nodeagent.io")


def structural_problems(schema: dict[str, Any], where: str = "") -> list[str]:
    """What makes a CRD schema non-structural (apiextensions' rules, the ones that apply)."""
    problems = []
    free = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get(
        "x-kubernetes-int-or-string")
    if "type" not in schema and not free:
        problems.append(f"{where or '<root>'}: no type")
    forbidden_keys = ("$ref", "definitions", "dependencies", "additionalItems",
                      "patternProperties")
    for forbidden in forbidden_keys:
        if forbidden in schema:
            problems.append(f"{where}: {forbidden}")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{where}: properties and additionalProperties together")
    if schema.get("type") == "array" and "items" not in schema:
        problems.append(f"{where}: array without items")
    if schema.get("x-kubernetes-list-type") == "map":
        missing = set(schema["x-kubernetes-list-map-keys"]) - set(
            schema["items"].get("required", []))
        if missing:
            problems.append(f"{where}: list map keys {missing} not required")
    for name, sub in schema.get("properties", {}).items():
        problems += structural_problems(sub, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        problems += structural_problems(schema["items"], f"{where}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{where}{{}}")
    return problems


def test_crd_names_and_schema_follow_the_contract() -> None:
    crd = nns_crd()
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("nodeagent.io", "Cluster")
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"], names["shortNames"]) == (
        "NodeNetworkState", "nodenetworkstates", "nodenetworkstate", ["nns"])
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    assert structural_problems(schema) == []
    status = schema["properties"]["status"]["properties"]
    assert set(status) == {"observedTime", "agentVersion", "pfs", "pools", "conditions",
                           "recentErrors"}
    pf = status["pfs"]["items"]["properties"]
    assert {"pciAddress", "name", "vendor", "device", "driver", "numaNode", "linkState", "mtu",
            "totalVfs", "numVfs", "provisioning", "vfs"} == set(pf)
    assert set(pf["vfs"]["items"]["properties"]) == {
        "index", "pciAddress", "driver", "netdev", "mac", "vlan", "allocated", "pod"}
    assert pf["provisioning"]["properties"]["state"]["enum"] == [
        "in-sync", "applying", "blocked", "failed", "externally-managed"]
    assert status["recentErrors"]["maxItems"] == 20


def nns_sample() -> dict[str, Any]:
    (sample,) = [o for _, o in example_objects() if o["kind"] == "NodeNetworkState"]
    return sample


def test_node_network_state_sample_validates_against_the_crd() -> None:
    crd_validator(nns_crd()).validate(nns_sample())
    kubernetes_validate.validate(nns_crd(), K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(("path", "value"), [
    (("status", "pfs", 0, "provisioning", "state"), "done"),
    (("status", "pfs", 0, "vfs", 0, "netdev"), 7),
    (("status", "pfs", 0, "pciAddress"), "3b:00.0"),
    (("status", "observedTime"), "yesterday"),
    (("status", "conditions", 0, "status"), "Yes"),
    (("status", "recentErrors"), [{"time": "2026-01-01T00:00:00Z", "message": "m"}] * 21),
    (("spec",), {"numVfs": 4}),
])
def test_crd_refuses_a_status_off_the_contract(path: tuple, value: Any) -> None:
    sample = nns_sample()
    target = sample
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        crd_validator(nns_crd()).validate(sample)


def json_path(doc: Any, path: str) -> list[Any]:
    """The printer columns' JSONPath subset: .a.b, [*], [?(@.key=="value")]."""
    step = re.compile(r'\.([A-Za-z0-9_]+)|\[\*\]|\[\?\(@\.([A-Za-z0-9_]+)=="([^"]*)"\)\]')
    values, pos = [doc], 0
    while pos < len(path):
        match = step.match(path, pos)
        assert match, f"unsupported JSONPath {path!r} at {pos}"
        pos = match.end()
        if match.group(1):
            values = [v[match.group(1)] for v in values
                      if isinstance(v, dict) and match.group(1) in v]
        elif match.group(2):
            values = [i for v in values for i in v
                      if isinstance(i, dict) and i.get(match.group(2)) == match.group(3)]
        else:
            values = [i for v in values for i in v]
    return values


def test_printer_columns_show_pfs_vfs_and_problems() -> None:
    columns = {c["name"]: c for c in nns_crd()["spec"]["versions"][0][
        "additionalPrinterColumns"]}
    sample = nns_sample()
    shown = {name: json_path(sample, c["jsonPath"]) for name, c in columns.items()}
    assert shown["PFs"] == ["ens1f0", "ens2f0"]
    assert shown["VFs"] == [2, 0]
    assert shown["In-Sync"] == ["False"]
    assert shown["Problems"] == ["PfBlocked"]
    assert columns["Age"]["type"] == "date"


# -- NetworkAttachmentDefinitions and the Pod example ----------------------------------------

PARSERS = {"sriov": sriov.parse, "macvlan": macvlan.parse, "ipvlan": ipvlan.parse,
           "vlan": vlan.parse, "vxlan": vxlan.parse, "bond": bond.parse}
#: A VF the device plugin could hand out; Multus passes it as deviceID.
DEVICE_ID = "0000:3b:02.1"


def nads() -> list[dict[str, Any]]:
    return [o for _, o in example_objects() if o["kind"] == "NetworkAttachmentDefinition"]


def pod_example() -> dict[str, Any]:
    (pod,) = [o for _, o in example_objects() if o["kind"] == "Pod"]
    return pod


def pod_ips() -> dict[str, list[str]]:
    """NAD name -> the fixed addresses the Pod example asks for on it."""
    selections = json.loads(pod_example()["metadata"]["annotations"][
        "k8s.v1.cni.cncf.io/networks"])
    return {s["name"]: s["ips"] for s in selections if "ips" in s}


def multus_request(nad: dict[str, Any], ips: list[str] | None) -> CniRequest:
    """The ADD our plugin would get from Multus for a pod on ``nad``: the resource's deviceID
    and, with the ``ips`` capability, the pod's addresses in runtimeConfig."""
    config = nad_config(nad)
    annotations = nad["metadata"].get("annotations", {})
    if "k8s.v1.cni.cncf.io/resourceName" in annotations:
        config["deviceID"] = DEVICE_ID
    if ips and config.get("capabilities", {}).get("ips"):
        config["runtimeConfig"] = {"ips": ips}
    ifname = "bond0" if config.get("type") == "bond" else "net1"  # a bond's links are net1..
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "deploytest0", "CNI_IFNAME": ifname,
           "CNI_NETNS": "/proc/self/ns/net", "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"}
    return parse_request(env, json.dumps(config).encode())


def accepted(nad: dict[str, Any], ips: list[str] | None = None) -> tuple[str, list[str]]:
    """Run ``nad``'s configuration through the plugin's own parsers; returns the IPAM type and
    the addresses static IPAM would give (raises CniError as the plugin would)."""
    jsonschema.validate(nad, NAD_SCHEMA)
    request = multus_request(nad, ips)
    kind = request.config["type"]
    if kind not in PARSERS:
        raise CniError(7, f"no plugin type {kind!r}")
    PARSERS[kind](request)
    ipam = cni_ipam.ipam_config(request)
    if ipam is None and nad["metadata"]["name"] == "sriov-bond-slave":
        return "none", []  # a bond's slave: the bond has the addresses
    assert ipam is not None, f"{nad['metadata']['name']}: no IPAM"
    if ipam["type"] == "static":
        result = cni_ipam.static_result(request, ipam)
        return "static", [str(ip.address) for ip in result.ips]
    config = parse_config(request.config, request.args)
    assert config.range_sets, f"{nad['metadata']['name']}: a pool without ranges"
    return ipam["type"], [str(r.ip) for r in config.requested]


def test_every_nad_example_is_accepted_by_the_plugin_and_ipam_parsers() -> None:
    fixed = pod_ips()
    covered = set()
    for nad in nads():
        name = nad["metadata"]["name"]
        config = nad_config(nad)
        static = config.get("ipam", {}).get("type") == "static"
        ips = fixed.get(name, ["192.0.2.10/24"] if static else None)
        ipam_type, addresses = accepted(nad, ips)
        assert config["name"] == name
        if ipam_type == "none":
            continue
        if ipam_type == "static":
            assert addresses == ips, name
        else:
            assert ipam_type == "whereabouts"
            assert config["ipam"]["datastore"] == "etcd"  # cluster-wide
            assert parse_config(config).etcd is not None
        flavour = config["type"]
        if flavour == "sriov":
            flavour += "-dpdk" if "dpdk" in nad["metadata"]["annotations"][
                "k8s.v1.cni.cncf.io/resourceName"] else "-netdevice"
        covered.add((flavour, ipam_type))
    flavours = ("sriov-netdevice", "sriov-dpdk", "macvlan", "ipvlan", "vlan", "vxlan", "bond")
    assert covered == {(f, t) for f in flavours for t in ("static", "whereabouts")}


def test_sriov_examples_ask_for_pools_the_default_values_define() -> None:
    data = find(render(), "ConfigMap")["data"]
    pools = {r.full_name for r in dp_config.parse(json.loads(data["config.json"])).resources}
    for nad in nads():
        resource = nad["metadata"].get("annotations", {}).get("k8s.v1.cni.cncf.io/resourceName")
        assert (resource is not None) == (nad_config(nad)["type"] == "sriov")
        assert resource is None or resource in pools


def test_pod_example_requests_a_vf_and_fixed_addresses_on_existing_networks() -> None:
    pod = pod_example()
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    names = {n["metadata"]["name"]: n for n in nads()}
    fixed = pod_ips()
    assert fixed, "the pod names no fixed address"
    for name, ips in fixed.items():
        nad = names[name]
        assert nad_config(nad)["capabilities"]["ips"] is True
        _, addresses = accepted(nad, ips)
        assert [a.split("/")[0] for a in addresses] == [ip.split("/")[0] for ip in ips]
        resource = nad["metadata"].get("annotations", {}).get("k8s.v1.cni.cncf.io/resourceName")
        if resource:
            limits = pod["spec"]["containers"][0]["resources"]["limits"]
            assert limits[resource] == "1"


@pytest.mark.parametrize(("nad_name", "field", "value"), [
    ("sriov-netdevice-static", "vlan", 4095),
    ("sriov-dpdk-static", "spoofchk", "yes"),
    ("macvlan-static", "mode", "bridged"),
    ("ipvlan-static", "mode", "l4"),
    ("vlan300-static", "vlanId", "300"),
    ("macvlan-pool", "type", "macvlann"),
    ("vlan301-pool", "ipam.range_start", "10.59.2.10"),
    ("sriov-netdevice-pool", "ipam.datastore", "kubernetess"),
    ("macvlan-static", "cniVersion", "0.2.0"),
    ("bond-static", "mode", "active_backup"),
    ("bond-pool", "linksInContainer", False),
])
def test_a_typo_in_a_nad_fails(nad_name: str, field: str, value: Any) -> None:
    (nad,) = [n for n in nads() if n["metadata"]["name"] == nad_name]
    config = nad_config(nad)
    target = config
    *parents, key = field.split(".")
    for parent in parents:
        target = target[parent]
    target[key] = value
    broken = copy.deepcopy(nad)
    broken["spec"]["config"] = json.dumps(config)
    with pytest.raises(CniError):
        accepted(broken, ["192.0.2.10/24"])


def test_chart_installs_the_nad_examples_only_when_asked() -> None:
    assert not [o for o in render() if o["kind"] == "NetworkAttachmentDefinition"]
    rendered = [o for o in render(VALUE_SETS["everything"])
                if o["kind"] == "NetworkAttachmentDefinition"]
    by_name = {o["metadata"]["name"]: o for o in rendered}
    for nad in nads():
        got = by_name.pop(nad["metadata"]["name"])
        assert got["metadata"]["namespace"] == "default"
        assert nad_config(got) == nad_config(nad)
        assert got["metadata"].get("annotations") == nad["metadata"].get("annotations")
    extra = by_name.pop(EXTRA_NAD["name"])
    assert by_name == {}
    assert extra["metadata"]["namespace"] == "storage"
    assert nad_config(extra) == {"cniVersion": "1.0.0", "name": "storage-net",
                                 **EXTRA_NAD["config"]}
    for nad in rendered:
        jsonschema.validate(nad, NAD_SCHEMA)
        accepted(nad)


# -- the Dockerfile -------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        instruction, _, args = (pending + stripped).partition(" ")
        out.append((instruction.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends in a continuation line"
    return out


def stages() -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for instruction, args in dockerfile():
        if instruction == "FROM":
            image, _, name = re.sub(r"(?i)\s+as\s+", " AS ", args).partition(" AS ")
            result.append({"image": image.strip(), "name": name.strip(), "steps": []})
        elif result:
            result[-1]["steps"].append((instruction, args))
    return result


def dockerignored(relative: str) -> bool:
    """Whether .dockerignore keeps ``relative`` (or a directory above it) out of the context."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if re.fullmatch(f"{regex}(/.*)?", relative):
            ignored = not negate
    return ignored


def copies(stage: dict[str, Any]) -> list[tuple[str | None, list[str], str]]:
    out = []
    for instruction, args in stage["steps"]:
        if instruction in ("COPY", "ADD"):
            words = json.loads(args) if args.startswith("[") else args.split()
            source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")),
                                None)
            words = [w for w in words if not w.startswith("--")]
            out.append((source_stage, words[:-1], words[-1]))
    return out


def test_dockerfile_stages_and_copy_sources_hold_together() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "a build stage and a runtime stage"
    build, runtime = all_stages[0], all_stages[-1]
    # The runtime gets the build's virtualenv: same base image, same interpreter path.
    assert build["image"] == runtime["image"]
    assert re.fullmatch(r"\$\{?(\w+)\}?", build["image"])
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert default and re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", default.group(1))
    names = []
    for stage in all_stages:
        for source_stage, sources, _dest in copies(stage):
            if source_stage is not None:
                assert source_stage in names, f"COPY --from={source_stage}: no such earlier stage"
                continue
            for source in sources:
                relative = source.rstrip("/")
                assert (ROOT / relative).exists(), f"COPY {source}: not in the repository"
                assert not dockerignored(relative), f"COPY {source}: excluded by .dockerignore"
        names.append(stage["name"])
    build_runs = " ".join(a for i, a in build["steps"] if i == "RUN")
    runtime_runs = " ".join(a for i, a in runtime["steps"] if i == "RUN")
    assert "gcc" in build_runs
    assert "gcc" not in runtime_runs and "libc6-dev" not in runtime_runs
    assert ("ENTRYPOINT", '["nodeagent"]') in runtime["steps"]
    assert [c for c in copies(runtime) if c[0] is None] == [], "runtime copies only from build"


def test_dockerignore_keeps_local_builds_and_the_venv_out() -> None:
    for path in (".venv", ".git", "nodeagent/_bitmap.abi3.so", "cni/bin/nodeagent-cni-shim",
                 "deviceplugin/proto/_stubs/proto.sha256",
                 "nodeagent/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(path), path
    for path in ("native/cni_shim.c", "nodeagent/cli.py", "setup.py",
                 "deviceplugin/proto/kubelet_deviceplugin_v1beta1.proto"):
        assert not dockerignored(path), path


def test_build_stage_sources_build_a_wheel_with_the_native_code(tmp_path: Path) -> None:
    """What the build stage copies is enough for the wheel, and the wheel carries the cffi
    modules, the compiled shim and the device plugin stubs the runtime stage relies on."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the native code")
    context = tmp_path / "context"
    for source_stage, sources, _dest in copies(stages()[0]):
        assert source_stage is None
        for source in sources:
            src = ROOT / source.rstrip("/")
            if src.is_dir():
                shutil.copytree(src, context / source.rstrip("/"), ignore=lambda d, names: [
                    n for n in names
                    if dockerignored(str((Path(d) / n).relative_to(ROOT)))])
            else:
                (context / src.name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, context / src.name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"), "."],
                   cwd=context, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("nodeagent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "cni/bin/nodeagent-cni-shim" in names
    assert any(re.fullmatch(r"nodeagent/_bitmap\..*so", n) for n in names)
    assert "deviceplugin/proto/_stubs/proto.sha256" in names
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "nodeagent = nodeagent.cli:main" in entry_points


def test_chart_examples_link_points_at_deploy_examples() -> None:
    link = CHART / "files" / "examples"
    assert link.is_symlink() and link.resolve() == EXAMPLES.resolve()
    assert documents((link / "nad-macvlan.yaml").read_text())


# -- the IPAM cluster store ------------------------------------------------------------------


def agent_settings_of(objects: list[dict[str, Any]]) -> Any:
    """The rendered agent.yaml as the agent parses it, checked to be the file it is given."""
    from nodeagent import settings

    assert flag(objects, "settings") == "/etc/nodeagent/agent.yaml"
    return settings.parse(yaml.safe_load(find(objects, "ConfigMap")["data"]["agent.yaml"]),
                          "agent.yaml")


def test_without_a_cluster_store_the_agent_gets_none_and_no_etcd_runs() -> None:
    objects = render()
    settings = agent_settings_of(objects)
    assert settings.cluster_store is None
    assert str(settings.ipam_state_dir) == "/var/lib/nodeagent/ipam"
    assert not {"StatefulSet", "Secret", "Service"} & {o["kind"] for o in objects}
    assert "/etc/nodeagent-etcd" not in mounts(objects, agent_container(objects))


def test_an_existing_etcd_is_given_to_the_agent_with_its_client_secret() -> None:
    objects = render({"ipam": {"etcd": {"endpoints": ["https://etcd-a:2379", "etcd-b:2379"],
                                        "clientSecret": "etcd-client", "timeout": 3}}})
    store = agent_settings_of(objects).cluster_store
    assert [e.target() for e in store.etcd.endpoints] == ["etcd-a:2379", "etcd-b:2379"]
    assert store.etcd.tls and store.etcd.timeout == 3.0
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "etcd-client")
    assert volume["secret"]["secretName"] == "etcd-client"
    mount = mounts(objects, agent_container(objects))["/etc/nodeagent-etcd"]
    assert mount["readOnly"] is True
    assert str(store.etcd.ca_cert_file).startswith("/etc/nodeagent-etcd/")
    assert "StatefulSet" not in {o["kind"] for o in objects}


def test_settings_changes_roll_the_agents() -> None:
    def checksum(values: dict) -> str:
        ds = find(render(values), "DaemonSet")
        return ds["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]

    assert checksum({}) != checksum({"ipam": {"etcd": {"endpoints": ["e:2379"]}}})
    assert checksum({}) == checksum({"policy": POLICY})


def _pem(secret: dict[str, Any], key: str) -> bytes:
    import base64

    return base64.b64decode(secret["data"][key])


def test_the_charts_etcd_is_three_members_on_tls_the_agent_can_reach() -> None:
    from cryptography import x509

    objects = render({"ipam": {"etcd": {"deploy": True}}})
    (sts,) = [o for o in objects if o["kind"] == "StatefulSet"]
    (service,) = [o for o in objects if o["kind"] == "Service"]
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    name, ns = sts["metadata"]["name"], sts["metadata"]["namespace"]
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["podManagementPolicy"] == "Parallel"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert sts["spec"]["serviceName"] == service["metadata"]["name"] == name
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in container["args"])
    members = [f"{name}-{i}.{name}.{ns}.svc" for i in range(3)]
    assert args["--initial-cluster"] == ",".join(
        f"{name}-{i}=https://{m}:2380" for i, m in enumerate(members))
    for needed in ("--client-cert-auth", "--peer-client-cert-auth"):
        assert needed in args
    for key in ("--trusted-ca-file", "--cert-file", "--key-file", "--peer-trusted-ca-file"):
        assert args[key].startswith("/etc/etcd/tls/")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]

    store = agent_settings_of(objects).cluster_store
    assert [e.target() for e in store.etcd.endpoints] == [f"{m}:2379" for m in members]
    assert store.etcd.tls and store.etcd.cert_file is not None
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "etcd-client")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert {i["path"]: i["key"] for i in volume["secret"]["items"]} == {
        "ca.crt": "ca.crt", "tls.crt": "client.crt", "tls.key": "client.key"}

    ca = x509.load_pem_x509_certificate(_pem(secret, "ca.crt"))
    member = x509.load_pem_x509_certificate(_pem(secret, "tls.crt"))
    client = x509.load_pem_x509_certificate(_pem(secret, "client.crt"))
    for cert in (member, client):
        cert.verify_directly_issued_by(ca)
    names = member.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = names.get_values_for_type(x509.DNSName)
    for m in members:  # a wildcard of the headless service covers every member
        assert f"*.{m.split('.', 1)[1]}" in dns
    usages = member.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    oids = {u.dotted_string for u in usages}
    assert {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"} <= oids, "server and peer-client use"


@pytest.mark.skipif(not shutil.which("etcd"), reason="etcd not installed (etcd-server)")
def test_the_generated_certificates_serve_a_real_etcd_and_the_agent_allocates(
        tmp_path: Path) -> None:
    """The chart's Secret as it is: etcd serves with the member certificate and demands client
    certificates; the agent's settings (endpoints pointed at it) allocate over that TLS."""
    import dataclasses

    from nodeagent import settings as agent_settings
    from nodeagent.cnitypes.request import Attachment
    from nodeagent.ipam.configtypes import EtcdEndpoint
    from tests import ipam_etcd

    objects = render({"ipam": {"etcd": {"deploy": True}}})
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    files = {}
    for key in ("ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"):
        files[key] = tmp_path / key
        files[key].write_bytes(_pem(secret, key))
    pki = ipam_etcd.Pki(ca=files["ca.crt"], server=files["tls.crt"], server_key=files["tls.key"],
                        client=files["client.crt"], client_key=files["client.key"],
                        other_ca=files["ca.crt"], client_cn="nodeagent")
    with ipam_etcd.EtcdServer(pki=pki, client_cert_auth=True) as server:
        store = agent_settings_of(objects).cluster_store
        etcd = dataclasses.replace(
            store.etcd, endpoints=(EtcdEndpoint("127.0.0.1", server.client_port),),
            ca_cert_file=files["ca.crt"], cert_file=files["client.crt"],
            key_file=files["client.key"])
        settings = agent_settings.Settings(ipam_state_dir=tmp_path / "ipam",
                                           cluster_store=dataclasses.replace(store, etcd=etcd))
        ipam = agent_settings.ipam_for(settings, whereabouts=None)
        try:
            config = parse_config({"cniVersion": "1.1.0", "name": "n", "ipam": {
                "type": "whereabouts", "range": "10.5.0.0/24"}})
            result = ipam.allocate(config, Attachment("c1", "net1"))
            assert str(result.ips[0].address) == "10.5.0.1/24"
        finally:
            ipam.close()
