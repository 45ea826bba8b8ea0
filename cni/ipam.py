"""Addresses for an attachment: static IPAM in-process, any other IPAM plugin by delegation.

Static IPAM runs inline (no process to start, it is on the ADD hot path) with the reference
static plugin's semantics: ``addresses`` plus ``CNI_ARGS`` ``IP=``/``GATEWAY=``, all replaced
by ``runtimeConfig.ips`` when present. ``nodeagent-ipam`` and ``whereabouts`` run inline too,
through nodeagent.ipam (pools, node-local or etcd store). Other types (host-local, dhcp, ...)
are executed from ``CNI_PATH`` with the same environment and configuration, as libcni does.
"""

from __future__ import annotations

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
from nodeagent.cnitypes.errors import (
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    IO_FAILURE,
    CniError,
    config_error,
)
from nodeagent.cnitypes.request import Attachment, parse_result
from nodeagent.cnitypes.result import IPConfig, Result
from nodeagent.fields import Fields, join
from nodeagent.ipam import fields as ipam_fields
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.configtypes import IPAMConfig

PLUGIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}")
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
    name = ipam["type"]
    # what another plugin prints is input too: typed, or a clean error naming the field
    plugin_output = Fields(lambda path, problem: CniError(
        IO_FAILURE, f"IPAM plugin {name} returned an invalid result: {path} {problem}"))
    return parse_result(delegate(request, name, "ADD") or {}, "result", plugin_output)


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
        ctx.ipam.gc(config, request.valid_attachments)


def _library_args(request: CniRequest) -> tuple[IPAMConfig, Attachment]:
    """The IPAM configuration and the attachment, from the request parsed at the edge."""
    config = parse_config(request.config, request.args)
    if request.attachment is None:  # GC, STATUS: about the network, not one attachment
        return config, Attachment("gc", "gc")
    return config, request.attachment


# -- static ---------------------------------------------------------------------------------


#: Typed fields of a static IPAM configuration and runtimeConfig (code 7 naming the field).
_F = Fields(config_error)


def static_result(request: CniRequest, ipam: dict[str, Any]) -> Result:
    """The reference static plugin: ``addresses``, then CNI_ARGS ``IP``/``GATEWAY``; both
    replaced by ``runtimeConfig.ips`` when it has any."""
    entries: list[tuple[IPConfig, str]] = []
    for i, raw in enumerate(_F.items(ipam, "addresses", "ipam")):
        where = join("ipam.addresses", i)
        entry = _F.obj(raw, where)
        entries.append((_ip_config(_F.raw(entry, "address"), _F.raw(entry, "gateway"),
                                   join(where, "address"), join(where, "gateway"), _F), where))
    cni_args = Fields(lambda path, problem: CniError(INVALID_ENVIRONMENT,
                                                     f"invalid {path}: {problem}"))
    gateway = request.args.get("GATEWAY") or None
    for address in filter(None, request.args.get("IP", "").split(",")):
        entries.append((_ip_config(address, gateway, "CNI_ARGS IP", "CNI_ARGS GATEWAY",
                                   cni_args), "CNI_ARGS IP"))
    fixed = _F.items(request.runtime_config, "ips", "runtimeConfig")
    if fixed:  # as the reference plugin: runtimeConfig.ips (Multus "ips") replace the others
        entries = [(_ip_config(ip, None, join("runtimeConfig.ips", i), "", _F),
                    join("runtimeConfig.ips", i)) for i, ip in enumerate(fixed)]
    result = Result(dns=_dns(ipam))
    result.ips.extend(ip for ip, _ in entries)
    result.routes.extend(ipam_fields.routes(ipam.get("routes"), "ipam.routes"))
    return result


def _ip_config(address: Any, gateway: Any, where: str, gateway_where: str,
               f: Fields) -> IPConfig:
    interface = f.interface(address, where)
    gw = None
    if gateway is not None and gateway != "":
        gw = f.ip(gateway, gateway_where)
        if gw.version != interface.version:
            f.fail(gateway_where, f"{gw} is not of the family of {interface}")
    return IPConfig(address=interface, gateway=gw, interface=0)


def _dns(ipam: dict[str, Any]) -> dict[str, Any]:
    dns = ipam_fields.dns(ipam.get("dns"), "ipam.dns")
    doc: dict[str, Any] = {}
    for key in ("nameservers", "search", "options"):
        if getattr(dns, key):
            doc[key] = list(getattr(dns, key))
    if dns.domain:
        doc["domain"] = dns.domain
    return doc


# -- delegation -----------------------------------------------------------------------------


def find_plugin(request: CniRequest, name: str) -> str:
    if not PLUGIN_NAME.fullmatch(name):
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
