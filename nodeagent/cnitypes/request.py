"""The typed pieces of a CNI request that the library needs too, each parsed by one function.

``cni.protocol`` parses a request once, at the edge, with these; IPAM and the kinds receive the
typed values (an :class:`Attachment`, the ``CNI_ARGS`` mapping, a prevResult
:class:`~nodeagent.cnitypes.result.Result`) and never parse the raw strings again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodeagent.cnitypes.errors import INVALID_ENVIRONMENT, CniError, config_error
from nodeagent.cnitypes.result import ROUTE_ATTRIBUTES, Interface, IPConfig, Result, Route
from nodeagent.fields import Fields, join

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

#: Runtimes use 64 hex digits; the bound leaves room for the ifname and a suffix in the state
#: file names built from it (a file name is at most 255 bytes).
CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")
IFNAMSIZ = 16
#: A Kubernetes namespace or pod name (a DNS subdomain; upper case tolerated).
K8S_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,252}")


#: The largest value of each CNI 1.1 route attribute the kernel can take (rtmsg's scope is a
#: byte, the RTAX metrics and table/priority 32-bit).
ROUTE_ATTRIBUTE_MAX = {"mtu": (1 << 32) - 1, "advmss": (1 << 32) - 1,
                       "priority": (1 << 32) - 1, "table": (1 << 32) - 1, "scope": 255}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def env_error(name: str, problem: str) -> CniError:
    """Invalid CNI environment (code 4), naming the variable."""
    return CniError(INVALID_ENVIRONMENT, f"invalid {name}: {problem}")


def parse_cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS`` as libcni reads it (pkg/types LoadArgs): ``K1=V1;K2=V2``, split on ``;``
    then on ``=``; each pair must have exactly one ``=``; nothing is trimmed (``" K"`` is
    another key than ``"K"``); a later pair wins. Unknown keys are kept (and ignored by the
    readers), as with ``IgnoreUnknown=1``, which every Kubernetes runtime sends."""
    if text == "":
        return {}
    args: dict[str, str] = {}
    for pair in text.split(";"):
        parts = pair.split("=")
        if len(parts) != 2 or not parts[0]:
            raise env_error("CNI_ARGS", f"{pair!r} is not KEY=VALUE")
        args[parts[0]] = parts[1]
    return args


def validate_container_id(value: str, what: str = "CNI_CONTAINERID") -> str:
    if not CONTAINER_ID.fullmatch(value):
        raise env_error(what, f"{value!r} is empty, longer than 200 characters or has characters"
                        " other than letters, digits, '_', '.' and '-'")
    return value


def validate_ifname(name: str, what: str = "CNI_IFNAME") -> str:
    """The kernel's rule for a link name (dev_valid_name): 1-15 bytes, not '.' or '..', no '/',
    ':' or whitespace; here also nothing unprintable."""
    problem = None
    if not name:
        problem = "is empty"
    elif len(name.encode()) >= IFNAMSIZ:
        problem = f"is longer than {IFNAMSIZ - 1} bytes"
    elif (name in (".", "..") or any(c in "/:" or c.isspace() for c in name)
          or not name.isprintable()):
        problem = "contains '/', ':', whitespace or is '.' or '..'"
    if problem:
        raise env_error(what, f"{name!r} {problem}")
    return name


@dataclass(frozen=True)
class Attachment:
    """One network attachment: CNI_CONTAINERID + CNI_IFNAME, and the pod it belongs to."""

    container_id: str
    ifname: str
    pod_namespace: str = ""
    pod_name: str = ""

    def __post_init__(self) -> None:
        validate_container_id(self.container_id)
        validate_ifname(self.ifname)
        for what, value in (("K8S_POD_NAMESPACE", self.pod_namespace),
                            ("K8S_POD_NAME", self.pod_name)):
            if value and not K8S_NAME.fullmatch(value):
                raise env_error("CNI_ARGS", f"{what}={value!r} is not a Kubernetes name")

    @property
    def pod(self) -> str:
        """``namespace/name``, or "" when the runtime did not say."""
        return f"{self.pod_namespace}/{self.pod_name}" if self.pod_name else ""

    @property
    def key(self) -> tuple[str, str]:
        return self.container_id, self.ifname

    @classmethod
    def from_cni(cls, container_id: str, ifname: str,
                 args: Mapping[str, str] | None = None) -> Attachment:
        """From CNI_CONTAINERID, CNI_IFNAME and the parsed CNI_ARGS (:func:`parse_cni_args`)."""
        args = args or {}
        return cls(container_id, ifname, args.get("K8S_POD_NAMESPACE", ""),
                   args.get("K8S_POD_NAME", ""))


_config = Fields(config_error)


def parse_valid_attachments(config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """GC's ``cni.dev/valid-attachments``: (container ID, ifname) pairs to keep."""
    key = "cni.dev/valid-attachments"
    out = []
    for i, entry in enumerate(_config.items(config, key, "", max_items=1 << 20)):
        where = join(key, i)
        entry = _config.obj(entry, where)
        out.append((_config.string(entry, "containerID", where, max_len=1024),
                    _config.string(entry, "ifname", where, max_len=256)))
    return tuple(out)


def parse_result(doc: Any, where: str = "prevResult", fields: Fields = _config) -> Result:
    """A result of any supported version (a prevResult, an IPAM plugin's output), every field
    typed; ``fields`` raises the caller's error (code 7 naming ``prevResult.ips[0].address``
    by default)."""
    f = fields
    doc = f.obj(doc, where)
    interfaces = []
    for i, raw in enumerate(f.items(doc, "interfaces", where)):
        w = join(join(where, "interfaces"), i)
        obj = f.obj(raw, w)
        mac = f.string(obj, "mac", w, None, max_len=64)
        interfaces.append(Interface(
            name=f.string(obj, "name", w, "", max_len=256, empty=True), mac=mac or None,
            sandbox=f.string(obj, "sandbox", w, "", empty=True),
            mtu=f.integer(obj, "mtu", w, 0, 1 << 31), pci_id=f.string(obj, "pciID", w, None),
            socket_path=f.string(obj, "socketPath", w, None)))
    ips = []
    for i, raw in enumerate(f.items(doc, "ips", where)):
        w = join(join(where, "ips"), i)
        obj = f.obj(raw, w)
        address = f.interface(f.raw(obj, "address"), join(w, "address"))
        gateway = f.raw(obj, "gateway")
        gw = None if gateway is None or gateway == "" else f.ip(gateway, join(w, "gateway"))
        if gw is not None and gw.version != address.version:
            f.fail(join(w, "gateway"), f"{gw} is not of the family of {address}")
        index = f.integer(obj, "interface", w, 0, len(interfaces) - 1 if interfaces else 1 << 31)
        ips.append(IPConfig(address=address, gateway=gw, interface=index))
    routes = []
    for i, raw in enumerate(f.items(doc, "routes", where)):
        w = join(join(where, "routes"), i)
        obj = f.obj(raw, w)
        gw = f.raw(obj, "gw")
        routes.append(Route(
            dst=f.cidr(f.raw(obj, "dst"), join(w, "dst")),
            gw=None if gw is None or gw == "" else f.ip(gw, join(w, "gw")),
            **{k: f.integer(obj, k, w, 0, ROUTE_ATTRIBUTE_MAX[k]) for k in ROUTE_ATTRIBUTES}))
    dns = f.opt_obj(doc, "dns", where) or {}
    w = join(where, "dns")
    typed: dict[str, Any] = {}
    for key in ("nameservers", "search", "options"):
        values = f.strings(dns, key, w, max_len=1024)
        if values:
            typed[key] = list(values)
    domain = f.string(dns, "domain", w, None, max_len=1024, empty=True)
    if domain:
        typed["domain"] = domain
    return Result(interfaces, ips, routes, typed)
