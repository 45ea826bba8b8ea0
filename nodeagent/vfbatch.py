"""PF-side VF settings in batches: MAC, VLAN (802.1Q or 802.1ad), spoofchk, trust, tx rates and
link state for many VFs of one PF over one netlink socket (native/vfset.c, through cffi).

A :class:`VfUpdate` is what is sent to one VF: made from what a policy or a CNI configuration
asks for (:meth:`VfUpdate.towards` a :class:`~nodeagent.model.VfDesired`, optionally only what
differs from the observed :class:`~nodeagent.model.VfConfig`), or from what the PF reported
before (:meth:`VfUpdate.restoring`, which puts a VF back).

Each requested setting is applied on its own terms: every setting the driver accepts is
applied, and the result names each one it refused with the kernel's errno. Bad input
(malformed values, a VF index the PF does not have, one VF twice) raises
:class:`VfBatchError` before anything is sent.

    results = apply(pf_ifindex, [VfUpdate(0, mac="02:00:5e:00:53:01", vlan=100), ...])
    for r in results:
        if not r.ok:
            print(r)    # "VF 0: vlan 100 qos 0 (802.1ad): Protocol not supported (EPROTONOSUPPORT)"
"""

from __future__ import annotations

import errno as errno_mod
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nodeagent import netns as netns_mod
from nodeagent._vfset import ffi, lib
from nodeagent.model import LINK_STATES, VLAN_PROTOS, VfConfig, VfDesired

#: The settings, in the order of the C struct's err[] (and as nodeagent.cni records them).
SETTINGS = ("mac", "vlan", "spoofchk", "trust", "rate", "link_state")
_BITS = {name: 1 << i for i, name in enumerate(SETTINGS)}
VLAN_PROTO_NUMBERS = {name.lower(): number for number, name in VLAN_PROTOS.items()}
LINK_STATE_NUMBERS = {name: number for number, name in LINK_STATES.items()}
MAX_VF = (1 << 31) - 2  # the kernel refuses a VF index of INT_MAX or more
MAX_RATE = (1 << 32) - 1
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

__all__ = ["SETTINGS", "SettingError", "VfBatchError", "VfResult", "VfUpdate", "apply",
           "apply_on", "encode", "num_vfs"]


class VfBatchError(ValueError):
    """A batch the setter refuses before sending anything: the message says what and why."""


@dataclass(frozen=True)
class VfUpdate:
    """What is sent to VF ``vf``; a setting left None is not touched.

    ``vlan`` 0..4095 (0: no VLAN) with ``qos`` 0..7 and ``vlan_proto`` "802.1Q" or "802.1ad";
    ``min_tx_rate``/``max_tx_rate`` in Mb/s travel together (one IFLA_VF_RATE): when only one is
    given, the other is sent as 0 (no limit). ``link_state``: "auto", "enable" or "disable".
    """

    vf: int
    mac: str | None = None
    vlan: int | None = None
    qos: int = 0
    vlan_proto: str = "802.1Q"
    spoofchk: bool | None = None
    trust: bool | None = None
    min_tx_rate: int | None = None
    max_tx_rate: int | None = None
    link_state: str | None = None

    def __post_init__(self) -> None:
        _check(self)
        canonical = VLAN_PROTOS[VLAN_PROTO_NUMBERS[self.vlan_proto.lower()]]
        object.__setattr__(self, "vlan_proto", canonical)  # "802.1q" -> "802.1Q"

    @classmethod
    def towards(cls, vf: int, want: VfDesired, have: VfConfig | None = None) -> VfUpdate:
        """What to send so that VF ``vf`` has the settings ``want`` names. With ``have`` (what
        the PF reports now) only the settings that differ; a VLAN or rate setting partly given
        is completed from ``have`` (without it: qos 0, 802.1Q, no rate limit)."""
        def differs(wanted: object, current: object) -> bool:
            return wanted is not None and (have is None or wanted != current)

        base = have or VfConfig()
        mac = want.mac if want.mac is not None and (
            have is None or want.mac.lower() != (have.mac or "").lower()) else None
        vlan = any(differs(w, h) for w, h in ((want.vlan, base.vlan), (want.qos, base.qos),
                                                (want.vlan_proto, base.vlan_proto)))
        rate = any(differs(w, h) for w, h in ((want.min_tx_rate, base.min_tx_rate),
                                                (want.max_tx_rate, base.max_tx_rate)))
        return cls(
            vf=vf, mac=mac,
            vlan=(base.vlan if want.vlan is None else want.vlan) if vlan else None,
            qos=(base.qos if want.qos is None else want.qos) if vlan else 0,
            vlan_proto=(want.vlan_proto or base.vlan_proto) if vlan else "802.1Q",
            spoofchk=want.spoofchk if differs(want.spoofchk, base.spoofchk) else None,
            trust=want.trust if differs(want.trust, base.trust) else None,
            min_tx_rate=(base.min_tx_rate if want.min_tx_rate is None else want.min_tx_rate)
            if rate else None,
            max_tx_rate=(base.max_tx_rate if want.max_tx_rate is None else want.max_tx_rate)
            if rate else None,
            link_state=want.link_state if differs(want.link_state, base.link_state) else None,
        )

    @classmethod
    def restoring(cls, vf: int, config: VfConfig, only: Iterable[str] = SETTINGS) -> VfUpdate:
        """The settings ``only`` as ``config`` (what the PF reported) has them: what puts them
        back. Settings the PF reports as unsupported (None) are left out, and so is a VLAN
        protocol other than 802.1Q/802.1ad."""
        wanted = set(only)
        unknown = wanted - set(SETTINGS)
        if unknown:
            raise VfBatchError(f"unknown VF settings {sorted(unknown)}; known: {SETTINGS}")
        vlan = "vlan" in wanted and config.vlan_proto.lower() in VLAN_PROTO_NUMBERS
        rate = "rate" in wanted
        return cls(
            vf=vf,
            mac=config.mac if "mac" in wanted else None,
            vlan=config.vlan if vlan else None,
            qos=config.qos if vlan else 0,
            vlan_proto=config.vlan_proto if vlan else "802.1Q",
            spoofchk=config.spoofchk if "spoofchk" in wanted else None,
            trust=config.trust if "trust" in wanted else None,
            min_tx_rate=config.min_tx_rate if rate else None,
            max_tx_rate=config.max_tx_rate if rate else None,
            link_state=config.link_state if "link_state" in wanted else None,
        )

    def requested(self) -> tuple[str, ...]:
        """The settings this entry changes, in SETTINGS order."""
        given = {
            "mac": self.mac is not None,
            "vlan": self.vlan is not None,
            "spoofchk": self.spoofchk is not None,
            "trust": self.trust is not None,
            "rate": self.min_tx_rate is not None or self.max_tx_rate is not None,
            "link_state": self.link_state is not None,
        }
        return tuple(s for s in SETTINGS if given[s])

    def describe(self, setting: str) -> str:
        """A setting with its value, as error messages name it."""
        on_off = {True: "on", False: "off"}
        if setting == "mac":
            return f"mac {self.mac}"
        if setting == "vlan":
            return f"vlan {self.vlan} qos {self.qos} ({self.vlan_proto})"
        if setting == "spoofchk":
            return f"spoofchk {on_off[bool(self.spoofchk)]}"
        if setting == "trust":
            return f"trust {on_off[bool(self.trust)]}"
        if setting == "rate":
            return f"tx rates min {self.min_tx_rate or 0} max {self.max_tx_rate or 0} Mb/s"
        if setting == "link_state":
            return f"link_state {self.link_state}"
        raise ValueError(f"unknown VF setting {setting!r}")


@dataclass(frozen=True)
class SettingError:
    """One setting the kernel refused."""

    setting: str
    label: str
    errno: int

    @property
    def strerror(self) -> str:
        # errorcode names 95 ENOTSUP; for network devices the kernel means EOPNOTSUPP.
        name = "EOPNOTSUPP" if self.errno == errno_mod.EOPNOTSUPP else errno_mod.errorcode.get(
            self.errno, str(self.errno))
        return f"{os.strerror(self.errno)} ({name})"

    def __str__(self) -> str:
        return f"{self.label}: {self.strerror}"


@dataclass(frozen=True)
class VfResult:
    """What happened to one VF's settings: ``applied`` and ``failed`` in SETTINGS order."""

    vf: int
    applied: tuple[str, ...] = ()
    failed: tuple[SettingError, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed

    def failure(self, setting: str) -> SettingError | None:
        return next((f for f in self.failed if f.setting == setting), None)

    def __str__(self) -> str:
        if self.ok:
            return f"VF {self.vf}: applied {', '.join(self.applied) or 'nothing'}"
        return f"VF {self.vf}: " + "; ".join(str(f) for f in self.failed)


def _check(s: VfUpdate) -> None:
    """Raise VfBatchError naming the first malformed field of ``s``."""
    where = f"VF {s.vf!r}"
    if not _is_int(s.vf) or not 0 <= s.vf <= MAX_VF:
        raise VfBatchError(f"{where}: the VF index must be an integer from 0 to {MAX_VF}")
    if s.mac is not None:
        if not isinstance(s.mac, str) or not _MAC.match(s.mac.lower()):
            raise VfBatchError(f"{where}: mac {s.mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
        if int(s.mac[:2], 16) & 1:
            raise VfBatchError(f"{where}: mac {s.mac} is a multicast address")
    if s.vlan is not None and (not _is_int(s.vlan) or not 0 <= s.vlan <= 4095):
        raise VfBatchError(f"{where}: vlan {s.vlan!r} is not an integer from 0 to 4095")
    if not _is_int(s.qos) or not 0 <= s.qos <= 7:
        raise VfBatchError(f"{where}: qos {s.qos!r} is not an integer from 0 to 7")
    if not isinstance(s.vlan_proto, str) or s.vlan_proto.lower() not in VLAN_PROTO_NUMBERS:
        raise VfBatchError(f"{where}: vlan_proto {s.vlan_proto!r} is not 802.1Q or 802.1ad")
    if s.vlan is None and (s.qos or s.vlan_proto.lower() != "802.1q"):
        raise VfBatchError(f"{where}: qos and vlan_proto need a vlan")
    for name in ("spoofchk", "trust"):
        value = getattr(s, name)
        if value is not None and not isinstance(value, bool):
            raise VfBatchError(f"{where}: {name} {value!r} is not true or false")
    for name in ("min_tx_rate", "max_tx_rate"):
        value = getattr(s, name)
        if value is not None and (not _is_int(value) or not 0 <= value <= MAX_RATE):
            raise VfBatchError(f"{where}: {name} {value!r} is not an integer from 0 to {MAX_RATE}")
    if s.min_tx_rate and s.max_tx_rate and s.min_tx_rate > s.max_tx_rate:
        raise VfBatchError(f"{where}: min_tx_rate {s.min_tx_rate} is above max_tx_rate"
                           f" {s.max_tx_rate}")
    if s.link_state is not None and s.link_state not in LINK_STATE_NUMBERS:
        raise VfBatchError(f"{where}: link_state {s.link_state!r} is not one of"
                           f" {', '.join(LINK_STATE_NUMBERS)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fill(e: Any, s: VfUpdate) -> None:
    """Copy ``s`` into one vfset_vf_t."""
    mask = 0
    for setting in s.requested():
        mask |= _BITS[setting]
    e.vf = s.vf
    e.mask = mask
    if s.mac is not None:
        e.mac = bytes.fromhex(s.mac.replace(":", ""))
    if s.vlan is not None:
        e.vlan = s.vlan
        e.qos = s.qos
        e.vlan_proto = VLAN_PROTO_NUMBERS[s.vlan_proto.lower()]
    e.spoofchk = bool(s.spoofchk)
    e.trust = bool(s.trust)
    e.min_tx_rate = s.min_tx_rate or 0
    e.max_tx_rate = s.max_tx_rate or 0
    e.link_state = LINK_STATE_NUMBERS.get(s.link_state or "auto", 0)


def _entries(settings: Sequence[VfUpdate]) -> Any:
    seen: set[int] = set()
    for s in settings:
        if not isinstance(s, VfUpdate):
            raise VfBatchError(f"{s!r} is not a VfUpdate")
        if s.vf in seen:
            raise VfBatchError(f"VF {s.vf} appears twice in one batch")
        seen.add(s.vf)
    if len(settings) > lib.VFSET_MAX_VFS:
        raise VfBatchError(f"{len(settings)} VFs in one batch; at most {lib.VFSET_MAX_VFS}")
    entries = ffi.new("vfset_vf_t[]", max(len(settings), 1))
    for i, s in enumerate(settings):
        _fill(entries[i], s)
    return entries


def encode(pf_index: int, settings: VfUpdate, only: Iterable[str] | None = None,
           seq: int = 1) -> bytes:
    """The RTM_SETLINK message ``apply`` sends for ``settings`` (or just the settings
    ``only``): what tests decode to see what goes on the wire."""
    entries = _entries([settings])
    mask = 0
    for setting in settings.requested() if only is None else only:
        mask |= _BITS[setting]
    size = lib.vfset_encode(pf_index, entries, mask, seq, ffi.NULL, 0)
    if size < 0:
        raise VfBatchError(f"cannot encode {sorted(only or [])} of {settings}")
    buf = ffi.new("uint8_t[]", size)
    lib.vfset_encode(pf_index, entries, mask, seq, buf, size)
    return bytes(ffi.buffer(buf, size))


def _raise_oserror(code: int, what: str) -> None:
    raise OSError(code, f"{what}: {os.strerror(code)}")


def _check_pf(pf_index: int) -> None:
    if not _is_int(pf_index) or not 0 < pf_index < 1 << 31:
        raise VfBatchError(f"PF interface index {pf_index!r} is not a positive integer")


def num_vfs(pf_index: int, netns: str | None = None) -> int | None:
    """The VF count the kernel reports for the link (None: it reports none, not a PF)."""
    _check_pf(pf_index)
    fd = netns_mod.run(netns, lib.vfset_open)
    if fd < 0:
        _raise_oserror(-fd, "opening a netlink socket")
    try:
        count = lib.vfset_num_vfs(fd, pf_index)
    finally:
        os.close(fd)
    if count == -errno_mod.ENOENT:
        return None
    if count < 0:
        _raise_oserror(-count, f"reading the VF count of link {pf_index}")
    return count


def apply(pf_index: int, settings: Sequence[VfUpdate],
          netns: str | None = None) -> list[VfResult]:
    """Apply ``settings`` to the VFs of the PF with interface index ``pf_index`` (in ``netns``,
    a name under /run/netns or a path; None: ours). Returns one VfResult per entry, in order.

    Raises VfBatchError for bad input (nothing sent) and OSError when the PF link does not
    exist (ENODEV) or the netlink exchange itself fails.
    """
    _check_pf(pf_index)
    if not settings:
        return []
    fd = netns_mod.run(netns, lib.vfset_open)
    if fd < 0:
        _raise_oserror(-fd, "opening a netlink socket")
    try:
        return apply_on(fd, pf_index, settings)
    finally:
        os.close(fd)


def apply_on(fd: int, pf_index: int, settings: Sequence[VfUpdate]) -> list[VfResult]:
    """``apply`` over an open, bound NETLINK_ROUTE socket (used by one call at a time)."""
    _check_pf(pf_index)
    settings = list(settings)
    entries = _entries(settings)
    if not settings:
        return []
    rc = lib.vfset_apply(fd, pf_index, entries, len(settings))
    if rc == -errno_mod.ERANGE:
        out = [s.vf for i, s in enumerate(settings) if entries[i].bad & lib.VFSET_BAD_VF]
        count = lib.vfset_num_vfs(fd, pf_index)
        raise VfBatchError(f"VF {', '.join(map(str, out))} out of range: the PF (link"
                           f" {pf_index}) has {max(count, 0)} VFs")
    if rc == -errno_mod.ENODEV:
        _raise_oserror(errno_mod.ENODEV, f"no link with index {pf_index}")
    if rc == -errno_mod.EINVAL:  # the C side's own checks, which mirror _check
        bad = [f"VF {s.vf} (0x{entries[i].bad:x})" for i, s in enumerate(settings)
               if entries[i].bad]
        raise VfBatchError(f"the VF setter refused {', '.join(bad)}")
    if rc < 0:
        _raise_oserror(-rc, f"setting VFs of link {pf_index}")
    return [_result(s, entries[i]) for i, s in enumerate(settings)]


def _result(s: VfUpdate, entry: Any) -> VfResult:
    applied: list[str] = []
    failed: list[SettingError] = []
    for setting in s.requested():
        code = entry.err[SETTINGS.index(setting)]
        if code == 0:
            applied.append(setting)
        elif code == lib.VFSET_NOT_SENT:  # cannot happen once vfset_apply returned >= 0
            failed.append(SettingError(setting, s.describe(setting), errno_mod.EIO))
        else:
            failed.append(SettingError(setting, s.describe(setting), code))
    return VfResult(vf=s.vf, applied=tuple(applied), failed=tuple(failed))
