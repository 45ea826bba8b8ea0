"""The batch VF setter (nodeagent.vfbatch over native/vfset.c): what it puts on the wire, what it
refuses before sending, and its per-VF, per-setting answers from this host's kernel (a veth in
a namespace the test creates: no SR-IOV, so the kernel refuses every setting)."""

from __future__ import annotations

import errno
import re
import secrets
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodeagent._vfset import ffi, lib
from pyroute2 import IPRoute, netns
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from nodeagent import vfbatch
from nodeagent.model import VfConfig, VfDesired
from nodeagent.netlink import vf_configs_from_msg
from nodeagent.vfbatch import VfBatchError, VfUpdate

NATIVE = Path(__file__).resolve().parents[2] / "native"
RTM_SETLINK, NLM_F_REQUEST_ACK = 19, 0x5
IFLA_VFINFO_LIST, IFLA_VF_INFO, IFLA_VF_VLAN_LIST = 22, 1, 12
EVERYTHING = VfUpdate(3, mac="02:00:5E:00:53:01", vlan=100, qos=3, vlan_proto="802.1ad",
                        spoofchk=True, trust=False, min_tx_rate=10, max_tx_rate=200,
                        link_state="disable")


def decode(data: bytes):
    (msg,) = MarshalRtnl().parse(data)
    return msg


def vf_attrs(msg) -> dict[str, dict]:
    (info,) = msg.get_attr("IFLA_VFINFO_LIST").get_attrs("IFLA_VF_INFO")
    return {name: value for name, value in info["attrs"]}


def raw_attrs(data: bytes, offset: int, end: int) -> list[tuple[int, bytes]]:
    """(type, payload) of the netlink attributes in data[offset:end], by hand."""
    out = []
    while offset < end:
        length, kind = struct.unpack_from("=HH", data, offset)
        out.append((kind & 0x3FFF, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return out


# -- the wire ---------------------------------------------------------------------------------


def test_one_message_per_vf_carries_every_setting() -> None:
    data = vfbatch.encode(7, EVERYTHING, seq=42)

    msg = decode(data)
    assert (msg["header"]["type"], msg["header"]["flags"]) == (RTM_SETLINK, NLM_F_REQUEST_ACK)
    assert (msg["header"]["sequence_number"], msg["index"]) == (42, 7)
    attrs = vf_attrs(msg)
    assert attrs["IFLA_VF_MAC"]["mac"] == "02:00:5e:00:53:01"
    assert "IFLA_VF_VLAN" not in attrs, "802.1ad goes only in IFLA_VF_VLAN_LIST"
    (ivvi,) = attrs["IFLA_VF_VLAN_LIST"]["attrs"]
    assert ivvi[0] == "IFLA_VF_VLAN_INFO"
    assert (ivvi[1]["vf"], ivvi[1]["vlan"], ivvi[1]["qos"], ivvi[1]["proto"]) == (
        3, 100, 3, 0x88A8)
    assert attrs["IFLA_VF_SPOOFCHK"]["spoofchk"] == 1 and attrs["IFLA_VF_TRUST"]["trust"] == 0
    assert (attrs["IFLA_VF_RATE"]["min_tx_rate"], attrs["IFLA_VF_RATE"]["max_tx_rate"]) == (
        10, 200)
    assert attrs["IFLA_VF_LINK_STATE"]["link_state"] == 2
    assert {v["vf"] for k, v in attrs.items() if k != "IFLA_VF_VLAN_LIST"} == {3}


def test_vlan_info_is_the_kernels_16_byte_struct_with_the_protocol_big_endian() -> None:
    """Kernels check IFLA_VF_VLAN_INFO is at least sizeof(struct ifla_vf_vlan_info), 16 bytes
    with its tail padding (pyroute2 packs 14, which the kernel refuses with EINVAL)."""
    data = vfbatch.encode(7, VfUpdate(1, vlan=5, vlan_proto="802.1ad"))
    (vfinfo_list,) = raw_attrs(data, 32, len(data))
    assert vfinfo_list[0] == IFLA_VFINFO_LIST
    (vf_info,) = raw_attrs(vfinfo_list[1], 0, len(vfinfo_list[1]))
    (vlan_list,) = raw_attrs(vf_info[1], 0, len(vf_info[1]))
    assert vlan_list[0] == IFLA_VF_VLAN_LIST
    (info,) = raw_attrs(vlan_list[1], 0, len(vlan_list[1]))
    assert len(info[1]) == 16
    assert struct.unpack("=III", info[1][:12]) == (1, 5, 0) and info[1][12:14] == b"\x88\xa8"


def test_8021q_goes_as_ifla_vf_vlan_which_every_driver_knows() -> None:
    attrs = vf_attrs(decode(vfbatch.encode(7, VfUpdate(2, vlan=100, qos=1))))
    assert set(attrs) == {"IFLA_VF_VLAN"}
    assert (attrs["IFLA_VF_VLAN"]["vlan"], attrs["IFLA_VF_VLAN"]["qos"]) == (100, 1)


def test_a_single_setting_message_carries_only_that_setting() -> None:
    attrs = vf_attrs(decode(vfbatch.encode(7, EVERYTHING, only=["trust"])))
    assert set(attrs) == {"IFLA_VF_TRUST"}


def test_what_is_sent_reads_back_through_discoverys_decoder() -> None:
    """The encoder and nodeagent.netlink's decoder agree on every field, 802.1ad included."""
    msg = decode(vfbatch.encode(7, EVERYTHING))
    assert vf_configs_from_msg(msg) == {3: VfConfig(
        mac="02:00:5e:00:53:01", vlan=100, qos=3, vlan_proto="802.1ad", spoofchk=True,
        trust=False, min_tx_rate=10, max_tx_rate=200, link_state="disable")}


def test_a_vlan_protocol_of_zero_reads_as_8021q() -> None:
    """netdevsim reports protocol 0 for a VF that never had a VLAN: the kernel default."""
    msg = ifinfmsg()
    msg["header"]["type"] = 16  # RTM_NEWLINK, as a dump answers
    msg["attrs"] = [("IFLA_VFINFO_LIST", {"attrs": [("IFLA_VF_INFO", {"attrs": [
        ("IFLA_VF_MAC", {"vf": 0, "mac": "02:00:5e:00:53:01"}),
        ("IFLA_VF_VLAN_LIST", {"attrs": [("IFLA_VF_VLAN_INFO",
                                          {"vf": 0, "vlan": 0, "qos": 0, "proto": 0})]}),
    ]})]})]
    msg.encode()
    assert vf_configs_from_msg(decode(msg.data))[0].vlan_proto == "802.1Q"


def test_only_max_tx_rate_sends_min_as_zero() -> None:
    attrs = vf_attrs(decode(vfbatch.encode(7, VfUpdate(0, max_tx_rate=300))))
    assert (attrs["IFLA_VF_RATE"]["min_tx_rate"], attrs["IFLA_VF_RATE"]["max_tx_rate"]) == (0, 300)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "problem"), [
    ({"vf": -1}, "VF index"),
    ({"vf": True}, "VF index"),
    ({"vf": 0, "mac": "02:00:5e:00:53"}, "not a MAC address"),
    ({"vf": 0, "mac": "02:00:5e:00:53:zz"}, "not a MAC address"),
    ({"vf": 0, "mac": "01:00:5e:00:00:01"}, "multicast"),
    ({"vf": 0, "vlan": 4096}, "vlan 4096"),
    ({"vf": 0, "vlan": 1, "qos": 8}, "qos 8"),
    ({"vf": 0, "vlan": 1, "vlan_proto": "802.1x"}, "802.1Q or 802.1ad"),
    ({"vf": 0, "qos": 2}, "need a vlan"),
    ({"vf": 0, "vlan_proto": "802.1ad"}, "need a vlan"),
    ({"vf": 0, "spoofchk": "on"}, "spoofchk 'on'"),
    ({"vf": 0, "min_tx_rate": 300, "max_tx_rate": 200}, "above max_tx_rate"),
    ({"vf": 0, "max_tx_rate": 1 << 32}, "max_tx_rate"),
    ({"vf": 0, "link_state": "up"}, "auto, enable, disable"),
])
def test_malformed_settings_are_refused_with_the_field_named(fields, problem) -> None:
    with pytest.raises(VfBatchError, match=re.escape(problem)):
        VfUpdate(**fields)


def test_one_vf_twice_in_a_batch_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(VfBatchError, match="VF 2 appears twice"):
        vfbatch.apply(1, [VfUpdate(2, trust=True), VfUpdate(1), VfUpdate(2, mac=None)])


@pytest.mark.parametrize("pf_index", [0, -3, "eth0"])
def test_a_pf_that_is_no_interface_index_is_refused(pf_index) -> None:
    with pytest.raises(VfBatchError, match="PF interface index"):
        vfbatch.apply(pf_index, [VfUpdate(0, trust=True)])


def c_entry(**fields):
    entry = ffi.new("vfset_vf_t[]", 2)
    for name, value in fields.items():
        setattr(entry[0], name, value)
    return entry


@pytest.mark.parametrize(("fields", "bad"), [
    ({"mask": lib.VFSET_VLAN, "vlan": 4096, "vlan_proto": 0x8100}, lib.VFSET_VLAN),
    ({"mask": lib.VFSET_VLAN, "vlan": 1, "vlan_proto": 0x0800}, lib.VFSET_VLAN),
    ({"mask": lib.VFSET_MAC, "mac": b"\xff" * 6}, lib.VFSET_MAC),
    ({"mask": lib.VFSET_LINK_STATE, "link_state": 3}, lib.VFSET_LINK_STATE),
    ({"mask": 1 << 9}, lib.VFSET_BAD_MASK),
    ({"mask": lib.VFSET_TRUST, "vf": 1 << 31}, lib.VFSET_BAD_VF),
])
def test_the_c_setter_checks_its_input_itself(fields, bad) -> None:
    """Callers of the C API other than vfbatch get the same refusals; nothing is sent."""
    entries = c_entry(**fields)
    assert lib.vfset_encode(1, entries, entries[0].mask, 1, ffi.NULL, 0) == -errno.EINVAL
    assert lib.vfset_apply(-1, 1, entries, 1) == -errno.EINVAL
    assert entries[0].bad == bad
    assert list(entries[0].err) == [lib.VFSET_NOT_SENT] * lib.VFSET_NSETTINGS


def test_the_c_setter_flags_both_entries_of_a_duplicate_vf() -> None:
    entries = ffi.new("vfset_vf_t[]", 3)
    for i, vf in enumerate((4, 5, 4)):
        entries[i].vf, entries[i].mask, entries[i].trust = vf, lib.VFSET_TRUST, 1
    assert lib.vfset_apply(-1, 1, entries, 3) == -errno.EINVAL
    assert [entries[i].bad for i in range(3)] == [lib.VFSET_BAD_VF, 0, lib.VFSET_BAD_VF]


# -- settings from what the PF reported -------------------------------------------------------


def test_settings_to_restore_come_from_the_reported_config() -> None:
    reported = VfConfig(mac="02:00:5e:00:53:09", vlan=7, qos=1, vlan_proto="802.1ad",
                        spoofchk=None, trust=True, min_tx_rate=0, max_tx_rate=50,
                        link_state="auto")
    everything = VfUpdate.restoring(4, reported)
    assert everything.requested() == ("mac", "vlan", "trust", "rate", "link_state"), (
        "spoofchk the PF reports as unsupported is left out")
    assert (everything.vlan, everything.qos, everything.vlan_proto) == (7, 1, "802.1ad")
    some = VfUpdate.restoring(4, reported, ["mac", "rate"])
    assert some == VfUpdate(4, mac="02:00:5e:00:53:09", min_tx_rate=0, max_tx_rate=50)
    with pytest.raises(VfBatchError, match="unknown VF settings"):
        VfUpdate.restoring(4, reported, ["vlan_qos"])


# -- against this host's kernel ---------------------------------------------------------------


@pytest.fixture
def veth_ns() -> Iterator[tuple[str, int]]:
    """A namespace `nvb...` holding a veth pair; (namespace, ifindex of one end)."""
    name = f"nvb{secrets.token_hex(4)}"
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("add", ifname="nvb0", kind="veth", peer="nvb1")
            yield name, ipr.link_lookup(ifname="nvb0")[0]
    finally:
        netns.remove(name)


def test_a_link_without_sr_iov_refuses_each_setting_of_each_vf(veth_ns) -> None:
    ns, index = veth_ns
    batch = [EVERYTHING, VfUpdate(0, trust=True), VfUpdate(1, vlan=10),
             VfUpdate(9)]

    results = vfbatch.apply(index, batch, netns=ns)

    assert [r.vf for r in results] == [3, 0, 1, 9]
    assert [f.setting for f in results[0].failed] == list(vfbatch.SETTINGS)
    assert {f.errno for r in results[:3] for f in r.failed} == {errno.EOPNOTSUPP}
    assert [f.setting for f in results[1].failed] == ["trust"]
    assert str(results[2]) == "VF 1: vlan 10 qos 0 (802.1Q): Operation not supported (EOPNOTSUPP)"
    assert results[3].ok and results[3].applied == (), "nothing asked, nothing sent"
    assert vfbatch.num_vfs(index, netns=ns) is None, "a veth reports no VF count"


def test_batches_larger_than_one_send_window_get_every_answer(veth_ns) -> None:
    ns, index = veth_ns
    batch = [VfUpdate(vf, mac="02:00:5e:00:53:01", vlan=vf % 4096, spoofchk=True, trust=True)
             for vf in range(300)]

    results = vfbatch.apply(index, batch, netns=ns)

    assert [len(r.failed) for r in results] == [4] * 300
    assert all(f.errno == errno.EOPNOTSUPP for r in results for f in r.failed)


def test_a_link_that_does_not_exist_is_enodev(veth_ns) -> None:
    ns, index = veth_ns
    with pytest.raises(OSError) as caught:
        vfbatch.apply(index + 1000, [VfUpdate(0, trust=True)], netns=ns)
    assert caught.value.errno == errno.ENODEV and f"index {index + 1000}" in str(caught.value)


# -- native source hygiene --------------------------------------------------------------------


def test_cdef_matches_header() -> None:
    header = (NATIVE / "vfset.h").read_text()
    cdef = (NATIVE / "build_vfset.py").read_text()
    names = r"\b(vfset_\w+)\("
    assert set(re.findall(names, header)) == set(re.findall(names, cdef))
    consts = r"#define (VFSET_\w+)"
    assert set(re.findall(consts, header)) == set(re.findall(consts, cdef))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_source_compiles_without_warnings(tmp_path: Path) -> None:
    cmd = ["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-c", str(NATIVE / "vfset.c")]
    subprocess.run([*cmd, "-o", str(tmp_path / "vfset.o")], check=True)


def test_an_update_towards_what_is_desired_sends_only_what_differs() -> None:
    have = VfConfig(mac="02:00:5e:00:53:09", vlan=7, qos=1, vlan_proto="802.1ad",
                    spoofchk=True, trust=False, min_tx_rate=0, max_tx_rate=50,
                    link_state="auto")

    assert VfUpdate.towards(2, VfDesired(mac="02:00:5E:00:53:09", spoofchk=True, vlan=7),
                            have).requested() == (), "nothing differs (MACs in any case)"
    qos_only = VfUpdate.towards(2, VfDesired(qos=3, trust=True), have)
    assert qos_only == VfUpdate(2, vlan=7, qos=3, vlan_proto="802.1ad", trust=True), (
        "a VLAN setting partly given is completed from what the PF reports")
    assert VfUpdate.towards(2, VfDesired(min_tx_rate=10), have) == VfUpdate(
        2, min_tx_rate=10, max_tx_rate=50), "the two rates travel together"


def test_an_update_without_the_observed_state_sends_everything_asked() -> None:
    want = VfDesired(mac="02:00:5e:00:53:09", vlan=7, spoofchk=False, max_tx_rate=100,
                     link_state="disable")

    update = VfUpdate.towards(0, want)

    assert update == VfUpdate(0, mac="02:00:5e:00:53:09", vlan=7, qos=0, vlan_proto="802.1Q",
                              spoofchk=False, max_tx_rate=100, min_tx_rate=0,
                              link_state="disable")
    assert VfUpdate.towards(0, VfDesired()).requested() == ()
