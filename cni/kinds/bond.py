"""A bond over interfaces already in the pod, configured as bond-cni is (same fields, same
meaning, same defaults): typically two VFs from two PFs that the sriov kind (or Multus) attached
earlier under the names ``links`` lists.

ADD records each slave as it is (name, MTU, MAC, up or down) before the first change, creates
the bond under CNI_IFNAME, enslaves the links (each down first, as the bonding driver wants),
and puts the IPAM addresses and routes on the bond. DEL releases the slaves and gives each its
recorded MTU, MAC and state back, so the sriov DEL that follows finds its VF as it left it, then
deletes the bond. Any failure during ADD undoes what was done. A pod namespace that is gone
takes the bond with it: DEL then only drops the record and the addresses.

Where bond-cni means something this plugin does not do, the field is refused (code 7):
``linksInContainer`` false (slaves taken from the host namespace) is not supported.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cni import ipam, links
from cni.context import FIELDS, Context, Netlink
from cni.kinds import FunctionHandler
from cni.protocol import CniRequest
from nodeagent import netns
from nodeagent.cnitypes.errors import INVALID_CONFIG, IO_FAILURE, CniError
from nodeagent.cnitypes.result import Interface, Result
from nodeagent.fileio import make_private_dir, replace_file

log = logging.getLogger(__name__)

#: The bonding driver's mode names (bond-cni's, as the kernel spells them) -> IFLA_BOND_MODE.
MODES = {"balance-rr": 0, "active-backup": 1, "balance-xor": 2, "broadcast": 3, "802.3ad": 4,
         "balance-tlb": 5, "balance-alb": 6}
#: xmit_hash_policy names -> IFLA_BOND_XMIT_HASH_POLICY.
XMIT_HASH_POLICIES = {"layer2": 0, "layer3+4": 1, "layer2+3": 2, "encap2+3": 3, "encap3+4": 4,
                      "vlan+srcmac": 5}
TLB_MODES = ("balance-tlb", "balance-alb")
#: bond-cni's default (and the bonding driver's): an MTU of 0 or none means 1500.
DEFAULT_MTU = 1500
MIN_MTU = 68
MAX_MIIMON = 2**31 - 1
MAX_LINKS = 32
IFNAME = re.compile(r"[^/\s:]{1,15}")


@dataclass(frozen=True)
class BondConf:
    mode: str
    miimon: int
    slaves: tuple[str, ...]
    mtu: int = DEFAULT_MTU
    fail_over_mac: int = 0
    all_slaves_active: int | None = None
    tlb_dynamic_lb: int | None = None
    xmit_hash_policy: str | None = None

    def link_data(self) -> list[tuple[str, Any]]:
        """The bond's IFLA_INFO_DATA."""
        data: list[tuple[str, Any]] = [("IFLA_BOND_MODE", MODES[self.mode]),
                                       ("IFLA_BOND_MIIMON", self.miimon),
                                       ("IFLA_BOND_FAIL_OVER_MAC", self.fail_over_mac)]
        if self.all_slaves_active is not None:
            data.append(("IFLA_BOND_ALL_SLAVES_ACTIVE", self.all_slaves_active))
        if self.tlb_dynamic_lb is not None:
            data.append(("IFLA_BOND_TLB_DYNAMIC_LB", self.tlb_dynamic_lb))
        if self.xmit_hash_policy is not None:
            data.append(("IFLA_BOND_XMIT_HASH_POLICY", XMIT_HASH_POLICIES[self.xmit_hash_policy]))
        return data


def parse(request: CniRequest) -> BondConf:
    """bond-cni's fields: ``mode`` and ``miimon`` (a string of digits, as bond-cni has it, or
    a number) required; ``links`` at least two ``{"name": ...}``; ``mtu`` (default 1500, at
    least 68), ``failOverMac`` 0-2 (none, active, follow; default 0), ``allSlavesActive`` 0/1,
    ``tlbDynamicLb`` 0/1 (balance-tlb and balance-alb only), ``xmitHashPolicy``."""
    c = request.config
    mode = FIELDS.choice(c, "mode", "", {m: m for m in MODES})
    if mode is None:
        FIELDS.fail("mode", f"is required: one of {', '.join(MODES)}")
    miimon = _miimon(c.get("miimon"))
    if not FIELDS.boolean(c, "linksInContainer", "", default=False):
        FIELDS.fail("linksInContainer", "must be true: this plugin bonds interfaces already in"
                    " the pod (attach them first, with the sriov kind or another network);"
                    " moving links from the host namespace is not supported")
    slaves = _links(request)
    mtu = FIELDS.integer(c, "mtu", "", 0, 65535, default=0) or DEFAULT_MTU
    if mtu < MIN_MTU:
        FIELDS.fail("mtu", f"must be at least {MIN_MTU} (or 0 for {DEFAULT_MTU}), got {mtu}")
    tlb = FIELDS.integer(c, "tlbDynamicLb", "", 0, 1)
    if tlb is not None and mode not in TLB_MODES:
        FIELDS.fail("tlbDynamicLb", f"applies to {' and '.join(TLB_MODES)} only, not {mode}")
    legacy = c.get("ifname")
    if legacy is not None and legacy != request.ifname:
        FIELDS.fail("ifname", f"{legacy!r} differs from CNI_IFNAME {request.ifname!r}: the bond"
                    " takes the interface name the runtime gives (drop 'ifname')")
    conf_ipam = c.get("ipam")
    if isinstance(conf_ipam, dict) and conf_ipam.get("type") == "bond":
        FIELDS.fail("ipam.type", "bond is not an IPAM plugin")
    return BondConf(
        mode=mode, miimon=miimon, slaves=slaves, mtu=mtu,
        fail_over_mac=FIELDS.integer(c, "failOverMac", "", 0, 2, default=0),
        all_slaves_active=FIELDS.integer(c, "allSlavesActive", "", 0, 1),
        tlb_dynamic_lb=tlb,
        xmit_hash_policy=FIELDS.choice(c, "xmitHashPolicy", "", {p: p for p in XMIT_HASH_POLICIES}),
    )


def _miimon(value: Any) -> int:
    if value is None:
        FIELDS.fail("miimon", "is required: the link monitoring interval in milliseconds,"
                    " such as \"100\"")
    if isinstance(value, str):
        text = FIELDS.text(value, "miimon", max_len=10)
        if not text.isascii() or not text.isdigit():
            FIELDS.fail("miimon", f"{text!r} is not a number of milliseconds")
        value = int(text)
    return FIELDS.int_value(value, "miimon", 0, MAX_MIIMON)


def _links(request: CniRequest) -> tuple[str, ...]:
    entries = FIELDS.items(request.config, "links", "", max_items=MAX_LINKS)
    if len(entries) < 2:
        FIELDS.fail("links", f"needs at least two entries such as {{\"name\": \"net1\"}},"
                    f" got {len(entries)}")
    names: list[str] = []
    for i, entry in enumerate(entries):
        where = f"links[{i}]"
        name = FIELDS.string(FIELDS.obj(entry, where), "name", where, pattern=IFNAME, max_len=15)
        if name in names:
            FIELDS.fail(f"{where}.name", f"{name!r} is listed twice")
        if name == request.ifname:
            FIELDS.fail(f"{where}.name", f"{name!r} is the bond's own name (CNI_IFNAME)")
        names.append(name)
    return tuple(names)


# -- what ADD changed, kept on disk so DEL can undo it -----------------------------------------


@dataclass
class Slave:
    name: str
    mtu: int
    mac: str
    up: bool


@dataclass
class BondRecord:
    container_id: str
    ifname: str
    netns: str
    network: str
    slaves: list[Slave] = field(default_factory=list)


def _state_dir(ctx: Context) -> Path:
    return ctx.vfs.root / "bond"


def _record_path(ctx: Context, container_id: str, ifname: str) -> Path:
    return _state_dir(ctx) / f"{container_id}-{ifname}.json"


def _save(ctx: Context, record: BondRecord) -> None:
    make_private_dir(_state_dir(ctx))
    replace_file(_record_path(ctx, record.container_id, record.ifname),
                 json.dumps(asdict(record)).encode(), mode=0o600)


def _load_path(path: Path) -> BondRecord | None:
    try:
        doc = json.loads(path.read_bytes())
        slaves = [Slave(**s) for s in doc.pop("slaves")]
        return BondRecord(**doc, slaves=slaves)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CniError(IO_FAILURE, f"bond record {path} is unreadable: {exc}",
                       "check the pod's bond and its slaves, then remove the file") from None


def _load(ctx: Context, container_id: str, ifname: str) -> BondRecord | None:
    return _load_path(_record_path(ctx, container_id, ifname))


def _remove(ctx: Context, record: BondRecord) -> None:
    _record_path(ctx, record.container_id, record.ifname).unlink(missing_ok=True)


# -- ADD --------------------------------------------------------------------------------------


def add(ctx: Context, request: CniRequest, conf: BondConf) -> Result:
    with ctx.pod(request.netns) as pod:
        if pod.link(name=request.ifname) is not None:
            raise CniError(INVALID_CONFIG, f"an interface named {request.ifname} already exists"
                           f" in {request.netns}")
        record = BondRecord(request.container_id, request.ifname, request.netns,
                            request.network, [_slave(pod, request, conf, i, name)
                                              for i, name in enumerate(conf.slaves)])
        _save(ctx, record)
        bond: int | None = None
        try:
            bond = _create(pod, request, conf)
            for slave in record.slaves:
                _enslave(pod, slave, bond)
            result = links.address(ctx, request, pod, bond)
            link = pod.link(index=bond)
        except BaseException:
            _undo(pod, record, bond)
            _remove(ctx, record)
            raise
    result.interfaces = [Interface(request.ifname, mac=link.get("IFLA_ADDRESS"),
                                   sandbox=request.netns, mtu=link.get("IFLA_MTU"))]
    for ip in result.ips:
        ip.interface = 0
    return result


def _slave(pod: Netlink, request: CniRequest, conf: BondConf, i: int, name: str) -> Slave:
    """A link to enslave as it is now; CniError if it cannot be one."""
    link = pod.link(name=name)
    where = f"links[{i}].name"
    if link is None:
        raise CniError(INVALID_CONFIG, f"{where}: there is no interface {name} in"
                       f" {request.netns}", "attach the bond's links before the bond (earlier in"
                       " the conflist, or earlier in the pod's networks annotation)")
    if link.get("IFLA_MASTER"):
        raise CniError(INVALID_CONFIG, f"{where}: {name} already has a master (ifindex"
                       f" {link.get('IFLA_MASTER')})")
    mtu = link.get("IFLA_MTU") or 0
    if conf.mtu > mtu:
        raise CniError(INVALID_CONFIG, f"mtu {conf.mtu} is above the MTU {mtu} of {name}",
                       f"set mtu to at most {mtu}, or raise {name}'s")
    return Slave(name, mtu, link.get("IFLA_ADDRESS") or "", bool(link["flags"] & 1))


def _create(pod: Netlink, request: CniRequest, conf: BondConf) -> int:
    try:
        pod.link_create(request.ifname, "bond", data=conf.link_data(), mtu=conf.mtu)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise CniError(INVALID_CONFIG, f"an interface named {request.ifname} already exists"
                           f" in {request.netns}") from None
        if exc.errno == errno.EOPNOTSUPP:
            raise CniError(INVALID_CONFIG, "this kernel has no bonding driver (modprobe"
                           " bonding)") from None
        if exc.errno in (errno.EINVAL, errno.ERANGE):
            raise CniError(INVALID_CONFIG, f"the bonding driver refused mode {conf.mode} with"
                           f" these settings: {exc.strerror}", str(conf.link_data())) from None
        raise CniError(IO_FAILURE, f"creating bond {request.ifname}: {exc.strerror}") from None
    index = pod.link_index(request.ifname)
    if index is None:
        raise CniError(IO_FAILURE, f"bond {request.ifname} vanished after its creation")
    return index


def _enslave(pod: Netlink, slave: Slave, bond: int) -> None:
    index = pod.link_index(slave.name)
    if index is None:
        raise CniError(IO_FAILURE, f"{slave.name} vanished while being bonded")
    with links.kernel_errors(f"enslaving {slave.name}"):
        pod.link_set(index, up=False)  # the bonding driver takes only slaves that are down
        pod.link_set(index, extra=[("IFLA_MASTER", bond)])
        pod.link_set(index, up=True)


# -- DEL and the undo both ADD failures and DEL use --------------------------------------------


def _undo(pod: Netlink, record: BondRecord, bond_index: int | None) -> None:
    """Release the slaves from ``bond_index`` (None: there is no bond), give each its recorded
    state back, delete the bond. Best effort per step: a refusal is logged, never raised (DEL
    must not block pod termination)."""
    for slave in record.slaves:
        link = pod.link(name=slave.name)
        if link is None:
            log.warning("bond slave %s is gone from %s: nothing to restore", slave.name,
                        record.netns)
            continue
        index = link["index"]
        if bond_index is not None and link.get("IFLA_MASTER") == bond_index:
            _try(pod.link_set, index, f"releasing {slave.name}", up=False,
                 extra=[("IFLA_MASTER", 0)])
        link = pod.link(index=index) or link
        if link.get("IFLA_MTU") != slave.mtu:
            _try(pod.link_set, index, f"restoring the MTU of {slave.name}", mtu=slave.mtu)
        if slave.mac and (link.get("IFLA_ADDRESS") or "").lower() != slave.mac.lower():
            _try(pod.link_set, index, f"restoring the MAC of {slave.name}", mac=slave.mac)
        _try(pod.link_set, index, f"restoring the state of {slave.name}", up=slave.up)
    if bond_index is not None:
        _try(pod.link_delete, bond_index, f"deleting bond {record.ifname}")


def _try(call: Any, index: int, what: str, **kwargs: Any) -> None:
    try:
        call(index, **kwargs)
    except OSError as exc:
        log.warning("%s: %s", what, exc.strerror)


def _is_bond(link: Any) -> bool:
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bond"


def delete(ctx: Context, request: CniRequest) -> None:
    ipam.delete(ctx, request)
    record = _load(ctx, request.container_id, request.ifname)
    if record is None:  # never added, or already deleted: a bond left without one goes
        _delete_unrecorded(ctx, request)
        return
    _detach(ctx, record)


def _detach(ctx: Context, record: BondRecord) -> None:
    if record.netns and os.path.exists(record.netns) and netns.usable(record.netns):
        with ctx.pod(record.netns) as pod:
            bond = pod.link(name=record.ifname)
            _undo(pod, record, bond["index"] if bond is not None and _is_bond(bond) else None)
    _remove(ctx, record)


def _delete_unrecorded(ctx: Context, request: CniRequest) -> None:
    """A bond of this name with no record (its record was removed by hand): release whatever
    it holds and delete it; the slaves keep the MTU and MAC the kernel gives back."""
    if not request.netns or not os.path.exists(request.netns) or not netns.usable(request.netns):
        return
    with ctx.pod(request.netns) as pod:
        bond = pod.link(name=request.ifname)
        if bond is None or not _is_bond(bond):
            return
        for link in pod.links():
            if link.get("IFLA_MASTER") == bond["index"]:
                _try(pod.link_set, link["index"], "releasing a slave",
                     extra=[("IFLA_MASTER", 0)])
        _try(pod.link_delete, bond["index"], f"deleting bond {request.ifname}")


# -- CHECK ------------------------------------------------------------------------------------


def check(ctx: Context, request: CniRequest, conf: BondConf) -> None:
    prev = links.require_prev_result(request)
    record = _load(ctx, request.container_id, request.ifname)
    if record is None:
        raise CniError(IO_FAILURE, f"no bond {request.ifname} was added for container"
                       f" {request.container_id}")
    with ctx.pod(request.netns) as pod:
        bond = _require_bond(pod, request, conf)
        data = bond.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
        mode = data.get("IFLA_BOND_MODE") if data is not None else None
        if mode is not None and mode != MODES[conf.mode]:
            actual = next((m for m, n in MODES.items() if n == mode), str(mode))
            raise CniError(IO_FAILURE, f"{request.ifname} is in mode {actual}, the configuration"
                           f" says {conf.mode}")
        for name in conf.slaves:
            link = pod.link(name=name)
            if link is None:
                raise CniError(IO_FAILURE, f"slave {name} of {request.ifname} is not in"
                               f" {request.netns}")
            if link.get("IFLA_MASTER") != bond["index"]:
                raise CniError(IO_FAILURE, f"{name} is not enslaved to {request.ifname}")
        links.check_addresses(pod, bond["index"], prev, request.ifname)
    ipam.check(ctx, request)


def _require_bond(pod: Netlink, request: CniRequest, conf: BondConf) -> Any:
    link = pod.link(name=request.ifname)
    if link is None:
        raise CniError(IO_FAILURE, f"{request.ifname} does not exist in {request.netns}")
    if not _is_bond(link):
        raise CniError(IO_FAILURE, f"{request.ifname} is not a bond")
    prev = request.prev_result
    expected = next((i.mac for i in prev.interfaces if i.name == request.ifname and i.mac),
                    None) if prev is not None else None
    # failOverMac 1 (active): the bond takes the MAC of whichever slave is active
    if expected and conf.fail_over_mac != 1 and (
            (link.get("IFLA_ADDRESS") or "").lower() != expected.lower()):
        raise CniError(IO_FAILURE, f"{request.ifname} has MAC {link.get('IFLA_ADDRESS')}, the"
                       f" previous result says {expected}")
    return link


# -- GC ---------------------------------------------------------------------------------------


def gc(ctx: Context, request: CniRequest) -> None:
    """Undo this network's bonds the runtime no longer lists, then let IPAM collect."""
    valid = set(request.valid_attachments)
    for path in sorted(_state_dir(ctx).glob("*.json")):
        try:
            record = _load_path(path)
        except CniError as exc:
            log.warning("GC skipped a bond record: %s", exc.msg)
            continue
        if record is None or record.network != request.network:
            continue
        if (record.container_id, record.ifname) not in valid:
            log.info("GC: taking apart bond %s of gone container %s", record.ifname,
                     record.container_id)
            _detach(ctx, record)
    ipam.gc(ctx, request)


HANDLER = FunctionHandler("bond", parse, add, delete, check, gc)
