"""A CNI invocation: the environment and the network configuration, validated.

Everything a runtime can get wrong is caught here, before any handler touches the kernel, and
reported with the spec's error code and the offending variable or field.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cni.delegates import DEPTH_VARIABLE
from cni.wire import MAX_STDIN
from nodeagent import netns
from nodeagent.cnitypes.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    UNKNOWN_CONTAINER,
    CniError,
    config_error,
)
from nodeagent.cnitypes.request import (
    SUPPORTED_VERSIONS,
    Attachment,
    parse_cni_args,
    parse_result,
    parse_valid_attachments,
    validate_ifname,
    version_tuple,
)
from nodeagent.cnitypes.result import Result
from nodeagent.documents import DocumentError, parse_json

__all__ = ["COMMANDS", "SINCE", "SUPPORTED_VERSIONS", "CniRequest", "parse_request",
           "validate_ifname", "version_tuple"]

log = logging.getLogger("nodeagent.cni")

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
#: The first version in which a verb exists.
SINCE = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}
ATTACHMENT_VERBS = ("ADD", "DEL", "CHECK")
#: The spec's network name (libcni's ValidateNetworkName), matched whole.
NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,252}")


@dataclass(frozen=True)
class CniRequest:
    """A validated request. ``attachment`` (ADD, DEL, CHECK), ``prev_result`` (when the
    configuration has one) and ``valid_attachments`` (GC) are parsed here, once."""

    command: str
    config: dict[str, Any]
    version: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    attachment: Attachment | None = None
    prev_result: Result | None = None
    valid_attachments: tuple[tuple[str, str], ...] = ()

    @property
    def network(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def runtime_config(self) -> dict[str, Any]:
        rc = self.config.get("runtimeConfig")
        return rc if isinstance(rc, dict) else {}

    def describe(self) -> str:
        """Who this request is about, for every log line."""
        pod = "/".join(filter(None, (self.args.get("K8S_POD_NAMESPACE"),
                                     self.args.get("K8S_POD_NAME"))))
        return (f"{self.command} network={self.network or '-'} container={self.container_id[:12]}"
                f" ifname={self.ifname or '-'} pod={pod or '-'}")


def parse_request(env: Mapping[str, str], stdin: bytes) -> CniRequest:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not one of "
                       + ", ".join(COMMANDS))
    config = _parse_config(stdin, command)
    version = config.get("cniVersion", "1.1.0" if command == "VERSION" else "")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported",
                       "supported: " + ", ".join(SUPPORTED_VERSIONS))
    since = SINCE.get(command)
    if since and version_tuple(version) < version_tuple(since):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion {since} or later",
                       f"the configuration says {version}")
    if command != "VERSION":
        _check_config(config, command)
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    container_id, ifname = env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")
    attachment = None
    if command in ATTACHMENT_VERBS:
        attachment = Attachment.from_cni(container_id, ifname, args)
    request = CniRequest(
        command=command,
        config=config,
        version=version,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=args,
        path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
        env={k: v for k, v in env.items() if k.startswith("CNI_") or k == DEPTH_VARIABLE},
        stdin=stdin,
        attachment=attachment,
        prev_result=_prev_result(config, command),
        valid_attachments=parse_valid_attachments(config) if command == "GC" else (),
    )
    if command in ("ADD", "CHECK"):
        _check_netns(request)
    elif command == "DEL" and request.netns and not netns.usable(request.netns):
        # Gone, or left behind as a plain file (unmounted, not yet removed): DEL cleans up
        # everything but the pod side, as after a deleted namespace.
        request = replace(request, netns="")
    return request


def _prev_result(config: dict[str, Any], command: str) -> Result | None:
    """prevResult, typed (code 7 naming the field). DEL cleans up whatever it says: a broken
    one is dropped there, not a reason to leave the attachment behind."""
    prev = config.get("prevResult")
    if prev is None or command not in ATTACHMENT_VERBS:
        return None
    try:
        return parse_result(prev)
    except CniError as exc:
        if command != "DEL":
            raise
        log.warning("DEL: ignoring prevResult: %s", exc)
        return None


def _parse_config(stdin: bytes, command: str) -> dict[str, Any]:
    if len(stdin) > MAX_STDIN:
        raise CniError(DECODE_FAILURE, f"network configuration is larger than {MAX_STDIN} bytes")
    if not stdin.strip() and command == "VERSION":
        return {}
    try:
        config = parse_json(stdin, max_bytes=MAX_STDIN)
    except DocumentError as exc:
        raise CniError(DECODE_FAILURE, "network configuration is not valid JSON",
                       str(exc)) from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")
    return config


def _check_config(config: dict[str, Any], command: str) -> None:
    """The fields every verb reads: ``name`` and ``type`` (non-empty strings; ``name`` may be
    absent for STATUS and GC, and is a network name as the spec and libcni define it),
    ``runtimeConfig`` (an object)."""
    for key in ("name", "type"):
        value = config.get(key)
        if value is None and key == "name" and command in ("STATUS", "GC"):
            continue
        if not isinstance(value, str) or not value:
            raise CniError(INVALID_CONFIG, f"invalid network configuration: {key!r} must be"
                           " a non-empty string")
    name = config.get("name")
    if name is not None and not NETWORK_NAME.fullmatch(name):
        raise config_error("name", f"{name[:64]!r} must start with a letter or digit, then"
                           " letters, digits, '_', '.' or '-'")
    runtime = config.get("runtimeConfig")
    if runtime is not None and not isinstance(runtime, dict):
        raise config_error("runtimeConfig", "must be an object")


def _check_netns(request: CniRequest) -> None:
    """CNI_NETNS names a network namespace: code 3 when it is gone, 4 when it is not one."""
    if not request.netns:
        raise CniError(INVALID_ENVIRONMENT, "CNI_NETNS is required for " + request.command)
    try:
        if not netns.is_netns(request.netns):
            raise CniError(INVALID_ENVIRONMENT,
                           f"CNI_NETNS {request.netns} is not a network namespace")
    except FileNotFoundError:
        raise CniError(UNKNOWN_CONTAINER,
                       f"network namespace {request.netns} does not exist") from None
    except OSError as exc:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {request.netns} cannot be opened",
                       str(exc)) from None
