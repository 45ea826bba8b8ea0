"""Addresses for an attachment: static IPAM in-process, any other IPAM plugin by delegation.

Static IPAM runs inline (no process to start, it is on the ADD hot path) with the reference
static plugin's semantics: ``addresses`` plus ``CNI_ARGS`` ``IP=``/``GATEWAY=``, all replaced
by ``runtimeConfig.ips`` when present. ``nodeagent-ipam`` and ``whereabouts`` run inline too,
through nodeagent.ipam (pools, node-local or etcd store). Other types (host-local, dhcp, ...)
are executed from ``CNI_PATH`` with the same environment and configuration, as libcni does.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from cni import delegates
from cni.context import Context
from cni.delegates import DEPTH_VARIABLE
from cni.install import FALLBACK_NAME, PLUGIN_NAMES
from cni.protocol import CniRequest
from cni.shim import SHIM_NAME
from nodeagent.cnitypes.errors import INVALID_CONFIG, IO_FAILURE, CniError, config_error
from nodeagent.cnitypes.result import IPConfig, Result
from nodeagent.ipam.allocator import Attachment
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.fields import FieldParser

PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: IPAM types served in-process by nodeagent.ipam (also the names the shim is installed as).
INLINE_TYPES = frozenset({"nodeagent-ipam", "whereabouts"})
#: Names that run the agent itself: delegating to one would be the agent calling itself.
SERVED_NAMES = frozenset(PLUGIN_NAMES) | {FALLBACK_NAME, SHIM_NAME}
#: A delegated plugin is killed (with everything it started) after this long.
DELEGATE_TIMEOUT = 120.0
#: A request that itself comes from a delegation (the agent's delegate called the agent back)
#: delegates no further: each level would hold a worker waiting on the next.
MAX_DELEGATE_DEPTH = 1


def ipam_config(request: CniRequest) -> dict[str, Any] | None:
    ipam = request.config.get("ipam")
    if ipam is None or ipam == {}:
        return None
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str):
        raise config_error("ipam", "must be an object with a string 'type'")
    return ipam


def add(ctx: Context, request: CniRequest) -> Result:
    ipam = ipam_config(request)
    if ipam is None:
        return Result()
    if ipam["type"] == "static":
        return static_result(request, ipam)
    if ipam["type"] in INLINE_TYPES:
        config, attachment = _library_args(request)
        return ctx.ipam.allocate(config, attachment)
    return Result.from_dict(delegate(request, ipam["type"], "ADD") or {})


def delete(ctx: Context, request: CniRequest) -> None:
    _other_verb(ctx, request, "DEL")


def check(ctx: Context, request: CniRequest) -> None:
    _other_verb(ctx, request, "CHECK")


def gc(ctx: Context, request: CniRequest) -> None:
    _other_verb(ctx, request, "GC")


def status(ctx: Context, request: CniRequest) -> None:
    _other_verb(ctx, request, "STATUS")


def _other_verb(ctx: Context, request: CniRequest, command: str) -> None:
    """DEL, CHECK, GC and STATUS: nothing to do for static IPAM."""
    ipam = ipam_config(request)
    if ipam is None or ipam["type"] == "static":
        return
    if ipam["type"] not in INLINE_TYPES:
        delegate(request, ipam["type"], command)
        return
    config, attachment = _library_args(request)
    if command == "DEL":
        ctx.ipam.release(config, attachment)
    elif command == "CHECK":
        ctx.ipam.check(config, attachment)
    elif command == "GC":
        ctx.ipam.gc(config, request.config.get("cni.dev/valid-attachments") or [])


def _library_args(request: CniRequest) -> tuple[Any, Attachment]:
    cni_args = request.env.get("CNI_ARGS", "")
    config = parse_config(request.config, cni_args)
    if request.command in ("GC", "STATUS"):
        return config, Attachment.from_cni("gc", "gc")
    return config, Attachment.from_cni(request.container_id, request.ifname, cni_args)


# -- static ---------------------------------------------------------------------------------


def static_result(request: CniRequest, ipam: dict[str, Any]) -> Result:
    entries: list[tuple[str, str | None]] = []
    for i, entry in enumerate(_list(ipam, "addresses", "ipam")):
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            raise config_error(f"ipam.addresses[{i}]", "must be an object with an 'address'")
        entries.append((entry["address"], entry.get("gateway")))
    gateway_arg = request.args.get("GATEWAY")
    entries += [(ip, gateway_arg) for ip in filter(None, request.args.get("IP", "").split(","))]
    fixed = _list(request.runtime_config, "ips", "runtimeConfig")
    if fixed:  # as the reference plugin: runtimeConfig.ips (Multus "ips") replace the others
        entries = [(ip, None) for ip in fixed]
    result = Result(dns=_dns(ipam))
    for address, gateway in entries:
        result.ips.append(_ip_config(address, gateway))
    result.routes.extend(FieldParser().routes(ipam.get("routes"), "ipam.routes"))
    return result


def _list(doc: dict[str, Any], key: str, where: str) -> list[Any]:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise config_error(f"{where}.{key}", "must be a list")
    return value


def _ip_config(address: str, gateway: str | None) -> IPConfig:
    try:
        interface = ipaddress.ip_interface(address)
    except ValueError:
        raise config_error("ipam address", f"{address!r} is not an address in CIDR form") from None
    if "/" not in address:
        raise config_error("ipam address", f"{address!r} has no prefix length")
    gw = None
    if gateway:
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise config_error("ipam gateway", f"{gateway!r} is not an IP address") from None
        if gw.version != interface.version:
            raise config_error("ipam gateway", f"{gateway} is not of the family of {address}")
    return IPConfig(address=interface, gateway=gw, interface=0)


def _dns(ipam: dict[str, Any]) -> dict[str, Any]:
    dns = ipam.get("dns") or {}
    if not isinstance(dns, dict):
        raise config_error("ipam.dns", "must be an object")
    return {k: dns[k] for k in ("nameservers", "domain", "search", "options") if dns.get(k)}


# -- delegation -----------------------------------------------------------------------------


def find_plugin(request: CniRequest, name: str) -> str:
    if not PLUGIN_NAME.match(name):
        raise config_error("ipam.type", f"{name!r} is not a plugin name")
    for directory in request.path:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise CniError(INVALID_CONFIG, f"IPAM plugin {name!r} not found in CNI_PATH",
                   ":".join(request.path))


def delegate(request: CniRequest, name: str, command: str) -> dict[str, Any] | None:
    """Run an IPAM plugin as the runtime would; its CNI error becomes ours.

    Never a name the agent serves (that would be the agent calling itself), never deeper than
    MAX_DELEGATE_DEPTH nested delegations, never longer than DELEGATE_TIMEOUT, and never
    outliving the agent: the plugin and everything it starts die with the calling thread.
    """
    _refuse_loops(request, name)
    plugin = find_plugin(request, name)
    env = {**request.env, "CNI_COMMAND": command, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           DEPTH_VARIABLE: str(delegate_depth(request.env) + 1)}
    stdout, stderr, returncode = delegates.run([plugin], request.stdin, env, DELEGATE_TIMEOUT,
                                               what=f"IPAM plugin {name}")
    out = stdout.strip()
    doc = None
    if out:
        try:
            doc = json.loads(out)
        except ValueError:
            raise CniError(IO_FAILURE, f"IPAM plugin {name} printed something that is not JSON",
                           out[:200].decode("utf-8", "replace")) from None
    if returncode != 0:
        if isinstance(doc, dict) and "code" in doc:
            raise _delegate_error(name, doc)
        raise CniError(IO_FAILURE, f"IPAM plugin {name} exited with {returncode}",
                       stderr.decode("utf-8", "replace")[-500:])
    if doc is not None and not isinstance(doc, dict):
        raise CniError(IO_FAILURE, f"IPAM plugin {name} printed JSON that is not an object",
                       out[:200].decode("utf-8", "replace"))
    return doc


def delegate_depth(env: Mapping[str, str]) -> int:
    """How many delegations deep this request is (0: from the runtime)."""
    value = env.get(DEPTH_VARIABLE)
    if value is None:
        return 0
    # Anything but a small count is treated as too deep: a chain must not reset it.
    return int(value) if value.isascii() and value.isdigit() and len(value) < 4 \
        else MAX_DELEGATE_DEPTH


def _refuse_loops(request: CniRequest, name: str) -> None:
    """A plugin naming itself or another name the agent serves as its IPAM would have the agent
    execute itself, each level holding a worker while it waits for the next: refused."""
    if name == request.config.get("type"):
        raise config_error("ipam.type", f"{name!r} names the plugin itself")
    if name in SERVED_NAMES:
        inline = ", ".join(sorted(INLINE_TYPES))
        raise config_error("ipam.type", f"{name!r} is a plugin the agent serves, not an IPAM"
                           f" plugin (IPAM types served in-process: {inline})")
    depth = delegate_depth(request.env)
    if depth >= MAX_DELEGATE_DEPTH:
        raise CniError(INVALID_CONFIG, f"IPAM plugin {name} not run: the delegation chain is"
                       f" {depth} deep (at most {MAX_DELEGATE_DEPTH})",
                       f"{DEPTH_VARIABLE}={request.env.get(DEPTH_VARIABLE, '')!r}; does an IPAM"
                       " plugin call the agent back?")


def _delegate_error(name: str, doc: dict[str, Any]) -> CniError:
    """The plugin's CNI error, its fields checked: a code that is not a positive integer is
    reported as such, never trusted."""
    code, msg, details = doc.get("code"), doc.get("msg", ""), doc.get("details", "")
    text = msg if isinstance(msg, str) else json.dumps(msg)[:200]
    detail = details if isinstance(details, str) else json.dumps(details)[:500]
    if type(code) is not int or not 0 < code < 1 << 31:
        return CniError(IO_FAILURE, f"IPAM plugin {name} failed with an invalid error code"
                        f" {json.dumps(code)[:50]}: {text[:500]}", detail[:500])
    return CniError(code, f"IPAM plugin {name}: {text[:500]}", detail[:500])
