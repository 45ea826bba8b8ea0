"""A CNI invocation: the environment and the network configuration, validated.

Everything a runtime can get wrong is caught here, before any handler touches the kernel, and
reported with the spec's error code and the offending variable or field.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni.delegates import DEPTH_VARIABLE
from cni.wire import MAX_STDIN
from nodeagent.cnitypes.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    UNKNOWN_CONTAINER,
    CniError,
)
from nodeagent.cnitypes.result import Result

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
#: The first version in which a verb exists.
SINCE = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}
CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
IFNAMSIZ = 16


@dataclass(frozen=True)
class CniRequest:
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

    @property
    def network(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def runtime_config(self) -> dict[str, Any]:
        rc = self.config.get("runtimeConfig")
        return rc if isinstance(rc, dict) else {}

    @property
    def prev_result(self) -> Result | None:
        prev = self.config.get("prevResult")
        return Result.from_dict(prev) if isinstance(prev, dict) else None

    def describe(self) -> str:
        """Who this request is about, for every log line."""
        pod = "/".join(filter(None, (self.args.get("K8S_POD_NAMESPACE"),
                                     self.args.get("K8S_POD_NAME"))))
        return (f"{self.command} network={self.network or '-'} container={self.container_id[:12]}"
                f" ifname={self.ifname or '-'} pod={pod or '-'}")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def parse_request(env: Mapping[str, str], stdin: bytes) -> CniRequest:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not one of "
                       + ", ".join(COMMANDS))
    config = _parse_config(stdin, command)
    version = config.get("cniVersion", "1.1.0" if command == "VERSION" else "")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported",
                       "supported: " + ", ".join(SUPPORTED_VERSIONS))
    since = SINCE.get(command)
    if since and version_tuple(version) < version_tuple(since):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion {since} or later",
                       f"the configuration says {version}")
    if command in ("ADD", "DEL", "CHECK"):
        for name in ("name", "type"):
            if not isinstance(config.get(name), str) or not config[name]:
                raise CniError(INVALID_CONFIG, f"invalid network configuration: {name!r} must be"
                               " a non-empty string")
    request = CniRequest(
        command=command,
        config=config,
        version=version,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
        env={k: v for k, v in env.items() if k.startswith("CNI_") or k == DEPTH_VARIABLE},
        stdin=stdin,
    )
    if command in ("ADD", "DEL", "CHECK"):
        _check_attachment(request)
    return request


def _parse_config(stdin: bytes, command: str) -> dict[str, Any]:
    if len(stdin) > MAX_STDIN:
        raise CniError(DECODE_FAILURE, f"network configuration is larger than {MAX_STDIN} bytes")
    if not stdin.strip() and command == "VERSION":
        return {}
    try:
        config = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "network configuration is not valid JSON",
                       str(exc)) from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")
    return config


def parse_cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``KEY=VALUE`` pairs separated by ``;``."""
    args = {}
    for pair in filter(None, text.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS entry {pair!r} is not KEY=VALUE")
        args[key] = value
    return args


def validate_ifname(name: str, what: str = "CNI_IFNAME") -> None:
    problem = None
    if not name:
        problem = "is empty"
    elif len(name.encode()) >= IFNAMSIZ:
        problem = f"is longer than {IFNAMSIZ - 1} characters"
    elif name in (".", "..") or any(c in name for c in "/: \t\n") or not name.isprintable():
        problem = "contains '/', ':', whitespace or is '.' or '..'"
    if problem:
        raise CniError(INVALID_ENVIRONMENT, f"{what} {name!r} {problem}")


def _check_attachment(request: CniRequest) -> None:
    if not CONTAINER_ID.match(request.container_id):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID {request.container_id!r} is empty"
                       " or has characters other than letters, digits, '_', '.' and '-'")
    validate_ifname(request.ifname)
    if request.command == "DEL":
        return
    if not request.netns:
        raise CniError(INVALID_ENVIRONMENT, "CNI_NETNS is required for " + request.command)
    if not os.path.exists(request.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {request.netns} does not exist")
