"""macvlan attachments end to end: the installed shim, a running agent, real namespaces."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from tests.host.cni_helpers import REFERENCE_BIN, Outcome, run_plugin, running_agent
from tests.host.conftest import unique

VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[dict]:
    """A running agent socket and the shim installed into a CNI bin dir."""
    with running_agent(tmp_path_factory.mktemp("agent"), ("host-local", "static")) as agent:
        yield agent


@pytest.fixture
def pod(test_netns: str) -> str:
    return f"/run/netns/{test_netns}"


def cni(agent: dict, command: str, conf, pod: str = "", **kw) -> Outcome:
    env = {"NODEAGENT_SOCKET": agent["socket"], "NODEAGENT_STATE_DIR": str(agent["state"]),
           **kw.pop("env", {})}
    return run_plugin(agent["bin"] / "macvlan", command, conf, netns=pod, path=agent["bin"],
                      env=env, **kw)


def conf(master: str, version: str = "1.1.0", **extra) -> dict:
    return {"cniVersion": version, "name": "macnet", "type": "macvlan", "master": master,
            "ipam": {"type": "static",
                     "addresses": [{"address": "10.77.0.5/24", "gateway": "10.77.0.1"}],
                     "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.77.0.53"]}},
            **extra}


def pod_links(pod: str) -> dict[str, dict]:
    with IPRoute(netns=pod) as ipr:
        links = {link.get("IFLA_IFNAME"): link for link in ipr.get_links()}
        addrs = {}
        for a in ipr.get_addr():
            if a.get("IFA_ADDRESS", "").startswith("fe80:"):
                continue  # the kernel's own link-local address
            addrs.setdefault(a["index"], []).append(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
        routes = [(r.get("RTA_DST"), r.get("RTA_GATEWAY")) for r in ipr.get_routes(family=2)]
    return {name: {"index": link["index"], "mac": link.get("IFLA_ADDRESS"),
                   "mtu": link.get("IFLA_MTU"),
                   "kind": link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
                   "mode": link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA",
                                           "IFLA_MACVLAN_MODE"),
                   "state": link.get("IFLA_OPERSTATE"), "addrs": addrs.get(link["index"], []),
                   "routes": routes}
            for name, link in links.items()}


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_in_every_spec_version(agent, master, pod, version) -> None:
    c = conf(master, version)

    added = cni(agent, "ADD", c, pod)

    assert added.status == 0, added.stdout + added.stderr
    result = added.doc
    assert result["cniVersion"] == version
    (iface,) = result["interfaces"]
    assert iface["name"] == "net1" and iface["sandbox"] == pod
    (ip,) = result["ips"]
    assert ip["address"] == "10.77.0.5/24" and ip["gateway"] == "10.77.0.1"
    assert ip["interface"] == 0
    assert ("version" in ip) == version.startswith("0."), "0.x results name the IP family"
    assert result["routes"] == [{"dst": "0.0.0.0/0"}]
    assert result["dns"] == {"nameservers": ["10.77.0.53"]}
    link = pod_links(pod)["net1"]
    assert link["kind"] == "macvlan" and link["mac"] == iface["mac"]
    assert link["addrs"] == ["10.77.0.5/24"] and link["state"] in ("UP", "UNKNOWN")
    assert (None, "10.77.0.1") in link["routes"]

    if version != "0.3.0" and version != "0.3.1":
        checked = cni(agent, "CHECK", {**c, "prevResult": result}, pod)
        assert checked.status == 0, checked.stdout

    assert cni(agent, "DEL", c, pod).status == 0
    assert "net1" not in pod_links(pod)
    assert cni(agent, "DEL", c, pod).status == 0, "a second DEL must succeed"


def test_version_lists_every_supported_version(agent) -> None:
    out = cni(agent, "VERSION", {"cniVersion": "1.0.0"})
    assert out.status == 0
    assert out.doc == {"cniVersion": "1.0.0", "supportedVersions": list(VERSIONS)}


@pytest.mark.parametrize("mode", ["bridge", "private", "vepa", "passthru"])
def test_modes(agent, master, pod, mode) -> None:
    assert cni(agent, "ADD", conf(master, mode=mode), pod).status == 0
    assert pod_links(pod)["net1"]["mode"] == mode


def test_mtu_and_mac_sources_in_order_of_precedence(agent, master, pod) -> None:
    c = conf(master, mtu=1400, mac="02:00:00:00:00:01",
             runtimeConfig={"mac": "02:00:00:00:00:03"})
    out = cni(agent, "ADD", c, pod, args="IgnoreUnknown=1;MAC=02:00:00:00:00:02")
    assert out.status == 0, out.stdout
    link = pod_links(pod)["net1"]
    assert link["mac"] == "02:00:00:00:00:03" and link["mtu"] == 1400

    assert cni(agent, "DEL", c, pod).status == 0
    del c["runtimeConfig"]
    assert cni(agent, "ADD", c, pod, args="MAC=02:00:00:00:00:02").status == 0
    assert pod_links(pod)["net1"]["mac"] == "02:00:00:00:00:02"


def test_fixed_ips_are_configured_in_the_pod(agent, master, pod) -> None:
    out = cni(agent, "ADD", conf(master), pod, args="IP=10.79.0.9/24;GATEWAY=10.79.0.1")
    assert out.status == 0, out.stdout
    assert sorted(ip["address"] for ip in out.doc["ips"]) == ["10.77.0.5/24", "10.79.0.9/24"]
    assert sorted(pod_links(pod)["net1"]["addrs"]) == ["10.77.0.5/24", "10.79.0.9/24"]


def test_cni_1_1_route_attributes_are_applied_and_reported(agent, master, pod) -> None:
    route = {"dst": "10.200.0.0/16", "gw": "10.77.0.254", "mtu": 1400, "advmss": 1360,
             "priority": 42, "table": 100}
    c = conf(master)
    c["ipam"]["addresses"] = [{"address": "10.77.0.5/24"}]  # no gateway: a link-scope route
    c["ipam"]["routes"] = [route, {"dst": "10.201.0.0/16", "scope": 253}]
    out = cni(agent, "ADD", c, pod)
    assert out.status == 0, out.stdout
    assert out.doc["routes"] == [route, {"dst": "10.201.0.0/16", "scope": 253}]
    with IPRoute(netns=pod) as ipr:
        (r,) = ipr.get_routes(family=2, table=100)
        metrics = dict(r.get("RTA_METRICS")["attrs"])
        assert (r.get("RTA_DST"), r["dst_len"], r.get("RTA_GATEWAY"), r.get("RTA_PRIORITY"),
                metrics["RTAX_MTU"], metrics["RTAX_ADVMSS"]) == (
            "10.200.0.0", 16, "10.77.0.254", 42, 1400, 1360)
        direct = [x for x in ipr.get_routes(family=2)
                  if (x.get("RTA_DST"), x["dst_len"]) == ("10.201.0.0", 16)]
        assert [(x["scope"], x.get("RTA_GATEWAY")) for x in direct] == [(253, None)]
    assert cni(agent, "DEL", c, pod).status == 0
    older = conf(master, "1.0.0")
    older["ipam"]["routes"] = [route]
    out = cni(agent, "ADD", older, pod)
    assert out.status == 0 and out.doc["routes"] == [{"dst": "10.200.0.0/16",
                                                      "gw": "10.77.0.254"}], \
        "a 1.0.0 result has no 1.1 route attributes"
    assert cni(agent, "DEL", older, pod).status == 0


def test_link_in_container(agent, pod) -> None:
    with IPRoute(netns=pod) as ipr:
        ipr.link("add", ifname="inner0", kind="veth", peer="inner1")
        ipr.link("set", index=ipr.link_lookup(ifname="inner0")[0], state="up")
    out = cni(agent, "ADD", conf("inner0", linkInContainer=True), pod)
    assert out.status == 0, out.stdout
    assert pod_links(pod)["net1"]["kind"] == "macvlan"


@pytest.mark.parametrize("sources", ["addresses", "addresses+args", "addresses+runtime",
                                     "addresses+args+runtime", "args+runtime"])
def test_static_ipam_matches_the_reference_static_plugin(agent, master, pod, sources) -> None:
    # Debian's reference plugins (1.1.1) speak CNI up to 1.0.0.
    c = conf(master, "1.0.0")
    c["ipam"]["routes"].append({"dst": "192.168.0.0/16", "gw": "10.77.0.254"})
    if "addresses" in sources:
        c["ipam"]["addresses"].append({"address": "fd00:77::5/64", "gateway": "fd00:77::1"})
    else:
        c["ipam"]["addresses"] = []
    if "runtime" in sources:
        c["runtimeConfig"] = {"ips": ["10.78.0.9/24", "fd00:78::9/64"]}
    args = "IP=10.79.0.9/24;GATEWAY=10.79.0.1" if "args" in sources else ""

    ours = cni(agent, "ADD", c, pod, args=args)
    reference = run_plugin(REFERENCE_BIN / "static", "ADD", c, netns=pod, args=args)

    assert ours.status == 0 and reference.status == 0, ours.stdout + reference.stdout
    for key in ("routes", "dns"):
        assert ours.doc[key] == reference.doc[key]
    strip = [{k: v for k, v in ip.items() if k != "interface"} for ip in ours.doc["ips"]]
    assert strip == reference.doc["ips"]


def test_delegated_ipam_reserves_and_releases(agent, master, pod, tmp_path) -> None:
    c = conf(master, "1.0.0")
    c["ipam"] = {"type": "host-local", "dataDir": str(tmp_path),
                 "ranges": [[{"subnet": "10.80.0.0/24", "gateway": "10.80.0.1"}]]}

    out = cni(agent, "ADD", c, pod)

    assert out.status == 0, out.stdout
    assert out.doc["ips"][0]["address"] == "10.80.0.2/24"
    assert (tmp_path / "macnet" / "10.80.0.2").exists()
    assert cni(agent, "DEL", c, pod).status == 0
    assert not (tmp_path / "macnet" / "10.80.0.2").exists()


def test_failed_add_leaves_nothing_behind(agent, master, pod, tmp_path) -> None:
    c = conf(master, "1.0.0")
    # The route's gateway is outside every subnet of the interface: the kernel refuses it
    # after the link exists and the address is reserved.
    c["ipam"] = {"type": "host-local", "dataDir": str(tmp_path),
                 "ranges": [[{"subnet": "10.81.0.0/24"}]],
                 "routes": [{"dst": "10.200.0.0/16", "gw": "10.99.0.1"}]}

    out = cni(agent, "ADD", c, pod)

    assert out.status != 0 and out.doc["code"] == 5, out.stdout
    assert "10.200.0.0/16" in out.doc["msg"]
    assert set(pod_links(pod)) == {"lo"}
    assert not list((tmp_path / "macnet").glob("10.81.*"))


BAD = [
    ("malformed JSON", b"{not json", {}, 6),
    ("over 1 MiB", b'{"x": "' + b"a" * (1 << 20) + b'"}', {}, 6),
    ("unsupported version", {"cniVersion": "0.2.0"}, {}, 1),
    ("mtu of the wrong type", {"mtu": "9000"}, {}, 7),
    ("unknown mode", {"mode": "funky"}, {}, 7),
    ("ifname over 15 characters", {}, {"ifname": "x" * 16}, 4),
    ("ifname with a slash", {}, {"ifname": "a/b"}, 4),
    ("multicast MAC", {"mac": "01:00:5e:00:00:01"}, {}, 7),
    ("master that does not exist", {"master": "nat-nosuch0"}, {}, 7),
    ("netns that does not exist", {}, {"pod": "/run/netns/nat-no-such-ns"}, 3),
    ("address without a prefix", {"ipam": {"type": "static",
                                           "addresses": [{"address": "10.1.1.1"}]}}, {}, 7),
    ("deeply nested", b"[" * 100_000, {}, 6),
    ("invalid UTF-8", b'{"name": "\xff"}', {}, 6),
    ("runtimeConfig.ips not addresses", {"ipam": {"type": "static"},
                                         "runtimeConfig": {"ips": [5]}}, {}, 7),
    ("prevResult not a result", {"prevResult": {"ips": [{}]}}, {}, 7),
]


@pytest.mark.parametrize("case,override,where,code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_cni_error_and_creates_nothing(agent, master, pod, case, override,
                                                      where, code) -> None:
    c = override if isinstance(override, bytes) else {**conf(master), **override}
    if isinstance(c, dict) and "cniVersion" in override:
        c["cniVersion"] = override["cniVersion"]
    target = where.get("pod", pod)

    out = cni(agent, "ADD", c, target, ifname=where.get("ifname", "net1"))

    assert out.status == 1
    assert out.doc["code"] == code, out.doc
    assert out.doc["msg"]
    assert set(pod_links(pod)) == {"lo"}


def test_fallback_when_the_agent_is_down(agent, master, pod) -> None:
    down = {"NODEAGENT_SOCKET": str(Path(agent["socket"]).with_name("absent.sock"))}
    added = cni(agent, "ADD", conf(master), pod, env=down)
    assert added.status == 0, added.stdout + added.stderr
    assert pod_links(pod)["net1"]["addrs"] == ["10.77.0.5/24"]
    assert cni(agent, "DEL", conf(master), pod, env=down).status == 0
    assert "net1" not in pod_links(pod)


def test_status_and_gc(agent, master) -> None:
    assert cni(agent, "STATUS", conf(master)).status == 0
    gc = {**conf(master), "cni.dev/valid-attachments": []}
    assert cni(agent, "GC", gc).status == 0


def test_concurrent_adds_and_dels_of_different_pods(agent, master) -> None:
    names = [unique(f"c{i}") for i in range(100)]
    for name in names:
        netns.create(name)
    try:
        def attach(i: int) -> Outcome:
            c = conf(master)
            c["ipam"]["addresses"] = [{"address": f"10.90.0.{i + 10}/24"}]
            c["ipam"]["routes"] = []
            return cni(agent, "ADD", c, f"/run/netns/{names[i]}", container_id=f"pod{i}")

        with ThreadPoolExecutor(50) as pool:
            outcomes = list(pool.map(attach, range(len(names))))
        assert all(o.status == 0 for o in outcomes), [o.stdout for o in outcomes if o.status]
        macs = {o.doc["interfaces"][0]["mac"] for o in outcomes}
        assert len(macs) == len(names)
        for i, name in enumerate(names):
            assert pod_links(f"/run/netns/{name}")["net1"]["addrs"] == [f"10.90.0.{i + 10}/24"]

        def detach(i: int) -> Outcome:
            return cni(agent, "DEL", conf(master), f"/run/netns/{names[i]}",
                       container_id=f"pod{i}")

        with ThreadPoolExecutor(50) as pool:
            assert all(o.status == 0 for o in pool.map(detach, range(len(names))))
    finally:
        for name in names:
            netns.remove(name)


def test_socket_is_root_only(agent) -> None:
    st = os.stat(agent["socket"])
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == 0
    assert os.stat(os.path.dirname(agent["socket"])).st_mode & 0o777 == 0o700


def test_requests_from_other_users_are_refused(agent, tmp_path_factory) -> None:
    def as_nobody() -> None:
        os.setgid(65534)
        os.setuid(65534)

    public = Path(tempfile.mkdtemp(prefix="natshim"))
    try:
        public.chmod(0o755)
        shim = public / "macvlan"
        shutil.copy(agent["bin"] / "macvlan", shim)
        proc = subprocess.run(
            [str(shim)], input=json.dumps({"cniVersion": "1.0.0"}).encode(),
        env={"CNI_COMMAND": "VERSION", "NODEAGENT_SOCKET": agent["socket"],
             "NODEAGENT_CNI_FALLBACK": "/nonexistent"},
            preexec_fn=as_nobody, capture_output=True, timeout=30, check=False)
    finally:
        shutil.rmtree(public)
    assert proc.returncode != 0
    assert json.loads(proc.stdout)["code"] == 11


@pytest.mark.parametrize("kind,extra", [("ipvlan", {"mode": "l2"}), ("vlan", {"vlanId": 100})])
def test_kinds_this_kernel_lacks_fail_cleanly(agent, master, pod, kind, extra) -> None:
    """ipvlan and 802.1q are not built into this host's kernel (the lab suite runs them): the
    attachment fails with a clear error and leaves nothing behind."""
    c = {**conf(master), "type": kind, **extra}

    out = run_plugin(agent["bin"] / kind, "ADD", c, netns=pod, path=agent["bin"],
                     env={"NODEAGENT_SOCKET": agent["socket"]})

    assert out.status == 1 and out.doc["code"] == 7, out.stdout
    assert f"cannot create {kind} links" in out.doc["msg"]
    assert set(pod_links(pod)) == {"lo"}


@pytest.mark.parametrize("vlan_id", [4095, -1, "100", None])
def test_vlan_id_out_of_range_is_refused(agent, master, pod, vlan_id) -> None:
    c = {**conf(master), "type": "vlan", "vlanId": vlan_id}
    out = run_plugin(agent["bin"] / "vlan", "ADD", c, netns=pod, path=agent["bin"],
                     env={"NODEAGENT_SOCKET": agent["socket"]})
    assert out.status == 1 and out.doc["code"] == 7
    assert "vlanId" in out.doc["msg"]


def whereabouts(master: str, data_dir: Path, version: str = "1.0.0") -> dict:
    c = conf(master, version)
    c["ipam"] = {"type": "whereabouts", "range": "10.91.0.0/29", "gateway": "10.91.0.1",
                 "exclude": ["10.91.0.2/32"], "dataDir": str(data_dir),
                 "datastore": "file"}
    return c


def test_whereabouts_ipam_runs_in_the_agent(agent, master, pod, tmp_path) -> None:
    c = whereabouts(master, tmp_path)
    other = unique("o")
    netns.create(other)
    try:
        first = cni(agent, "ADD", c, pod, container_id="podA")
        second = cni(agent, "ADD", c, f"/run/netns/{other}", container_id="podB")
        assert first.status == 0 and second.status == 0, first.stdout + second.stdout
        # .0 network, .1 gateway and the excluded .2 are never handed out.
        assert [o.doc["ips"][0]["address"] for o in (first, second)] == [
            "10.91.0.3/29", "10.91.0.4/29"]
        assert pod_links(pod)["net1"]["addrs"] == ["10.91.0.3/29"]

        assert cni(agent, "DEL", c, pod, container_id="podA").status == 0
        again = cni(agent, "ADD", c, pod, container_id="podC")
        assert again.doc["ips"][0]["address"] == "10.91.0.3/29", "released addresses are reused"
    finally:
        netns.remove(other)


@pytest.mark.parametrize("through", ["agent", "fallback"])
def test_the_shim_serves_as_ipam_plugin_for_other_plugins(agent, master, pod, tmp_path,
                                                          through) -> None:
    """Debian's macvlan plugin delegating IPAM to `whereabouts` from our bin dir."""
    c = whereabouts(master, tmp_path)
    socket_path = agent["socket"] if through == "agent" else str(tmp_path / "absent.sock")
    env = {"NODEAGENT_SOCKET": socket_path}

    added = run_plugin(REFERENCE_BIN / "macvlan", "ADD", c, netns=pod, path=agent["bin"],
                       env=env)

    assert added.status == 0, added.stdout + added.stderr
    assert added.doc["ips"][0]["address"] == "10.91.0.3/29"
    assert pod_links(pod)["net1"]["addrs"] == ["10.91.0.3/29"]
    assert run_plugin(REFERENCE_BIN / "macvlan", "DEL", c, netns=pod, path=agent["bin"],
                      env=env).status == 0
    reused = run_plugin(REFERENCE_BIN / "macvlan", "ADD", c, netns=pod, path=agent["bin"],
                        env=env, container_id="other")
    assert reused.doc["ips"][0]["address"] == "10.91.0.3/29"


def a_pci_function_that_is_not_a_vf() -> str:
    devices = Path("/sys/bus/pci/devices")
    return next(d.name for d in sorted(devices.iterdir()) if not (d / "physfn").exists())


SRIOV_BAD = [
    ("no deviceID", {}, "deviceID"),
    ("deviceID not a PCI address", {"deviceID": "eth0"}, "deviceID"),
    ("no such PCI device", {"deviceID": "0000:fe:1f.7"}, "no such PCI device"),
    ("not a VF", {"deviceID": "NOT_A_VF"}, "is not an SR-IOV VF"),
    ("VLAN 4095", {"deviceID": "0000:fe:1f.7", "vlan": 4095}, "vlan"),
    ("QoS without VLAN", {"deviceID": "0000:fe:1f.7", "vlanQoS": 3}, "vlanQoS needs 'vlan'"),
    ("vlanProto not 802.1q/802.1ad", {"deviceID": "0000:fe:1f.7", "vlan": 10,
                                      "vlanProto": "802.1x"}, "vlanProto"),
    ("spoofchk not on/off", {"deviceID": "0000:fe:1f.7", "spoofchk": "maybe"}, "spoofchk"),
    ("multicast MAC", {"deviceID": "0000:fe:1f.7", "mac": "33:33:00:00:00:01"}, "multicast"),
    ("min rate above max", {"deviceID": "0000:fe:1f.7", "min_tx_rate": 200,
                            "max_tx_rate": 100}, "min_tx_rate"),
]


@pytest.mark.parametrize("case,fields,message", SRIOV_BAD, ids=[b[0] for b in SRIOV_BAD])
def test_sriov_bad_input_is_refused_before_anything_changes(agent, pod, case, fields,
                                                            message) -> None:
    if fields.get("deviceID") == "NOT_A_VF":
        fields = {**fields, "deviceID": a_pci_function_that_is_not_a_vf()}
    c = {"cniVersion": "1.0.0", "name": "sriovnet", "type": "sriov", **fields,
         "ipam": {"type": "static", "addresses": [{"address": "10.92.0.5/24"}]}}

    out = run_plugin(agent["bin"] / "sriov", "ADD", c, netns=pod, path=agent["bin"],
                     env={"NODEAGENT_SOCKET": agent["socket"]})

    assert out.status == 1 and out.doc["code"] == 7, out.stdout
    assert message in out.doc["msg"]
    assert set(pod_links(pod)) == {"lo"}
    assert not list((agent["state"] / "sriov").glob("*.json"))


@pytest.mark.parametrize("proto", ["802.1ad", "802.1Q"])
def test_sriov_vlan_proto_802_1ad_and_802_1q_are_accepted(agent, pod, proto) -> None:
    """Both pass the configuration checks (what the driver makes of them is a lab test): the
    request gets as far as looking for the device."""
    c = {"cniVersion": "1.0.0", "name": "sriovnet", "type": "sriov", "deviceID": "0000:fe:1f.7",
         "vlan": 10, "vlanProto": proto}
    out = run_plugin(agent["bin"] / "sriov", "ADD", c, netns=pod, path=agent["bin"],
                     env={"NODEAGENT_SOCKET": agent["socket"]})
    assert out.status == 1 and "no such PCI device" in out.doc["msg"], out.stdout


def test_sriov_del_of_an_unknown_attachment_succeeds(agent, pod) -> None:
    c = {"cniVersion": "1.0.0", "name": "sriovnet", "type": "sriov", "deviceID": "0000:fe:1f.7"}
    out = run_plugin(agent["bin"] / "sriov", "DEL", c, netns=pod, path=agent["bin"],
                     env={"NODEAGENT_SOCKET": agent["socket"]})
    assert out.status == 0, out.stdout


def test_addresses_are_announced_on_the_wire(agent, master, pod) -> None:
    """A gratuitous ARP and an unsolicited neighbour advertisement for the pod's addresses
    reach the master's peer, so neighbours drop stale entries for reused IPs."""
    with IPRoute() as ipr:
        (link,) = ipr.get_links(ifname=master)
        peer = ipr.get_links(index=link.get("IFLA_LINK"))[0].get("IFLA_IFNAME")
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sniffer.bind((peer, 0))
    c = conf(master)
    c["ipam"]["addresses"].append({"address": "fd00:77::5/64"})
    try:
        assert cni(agent, "ADD", c, pod).status == 0
        garp = na = False
        deadline = time.monotonic() + 5
        while not (garp and na) and time.monotonic() < deadline:
            if not select.select([sniffer], [], [], 0.2)[0]:
                continue
            frame = sniffer.recv(2048)
            ethertype = struct.unpack("!H", frame[12:14])[0]
            if ethertype == 0x0806:
                sender, target = frame[28:32], frame[38:42]
                garp |= sender == target == socket.inet_aton("10.77.0.5")
            elif ethertype == 0x86DD and frame[20] == 58 and frame[54] == 136:
                na |= frame[62:78] == socket.inet_pton(socket.AF_INET6, "fd00:77::5")
        assert garp, "no gratuitous ARP for 10.77.0.5"
        assert na, "no unsolicited neighbour advertisement for fd00:77::5"
    finally:
        sniffer.close()
