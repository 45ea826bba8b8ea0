"""The loaders of what an operator or a runtime writes: the device plugin's config.json, the
node policy (YAML or JSON) and IPAM configurations. Property: each returns, or raises its own
error type (ConfigError, PolicyError, IpamError), whatever the bytes: no RecursionError,
UnicodeDecodeError, MemoryError, TypeError, ... (the address space of the worker is capped)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from tests.fuzz import jsongen, seeds
from tests.fuzz.cases import Broke, as_payload, escaped, escaped_kind, payload, show
from tests.fuzz.draw import Draw
from tests.fuzz.sandbox import scratch, tag

#: Seconds a parser may take on one input (all of them take milliseconds on real files).
SLOW = 5.0

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def _document(draw: Draw, docs: tuple[Any, ...], text_form: str) -> bytes:
    """Bytes of a mutated document, or of damage done to one."""
    doc = jsongen.mutate(draw, draw.choice(docs), draw.int(0, 5))
    if text_form == "yaml" and draw.bool(60):
        data = yaml.safe_dump(doc).encode()
    else:
        data = json.dumps(doc).encode()
    kind = draw.int(0, 9)
    if kind < 6:
        return data
    if kind < 8:
        return jsongen.mangle(draw, data)
    if kind == 8:
        return jsongen.nested(draw)
    return ALIAS_BOMB.encode() if text_form == "yaml" else b"\xef\xbb\xbf" + data


class _Parser:
    seeded = 150
    memory_mb: int | None = 256
    timeout = 30.0
    #: The error type the loader is documented to raise; set by subclasses.
    error: type[BaseException] = Exception

    def setup(self) -> None:
        self.dir = scratch(tag(), self.name)  # type: ignore[attr-defined]

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def _file(self, data: bytes) -> Path:
        path = self.dir / "input"
        path.write_bytes(data)
        return path

    def call(self, case: dict[str, Any]) -> Any:
        raise NotImplementedError

    def run(self, case: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            self.call(case)
        except self.error:
            pass
        except BaseException as exc:
            raise Broke(f"{case['api']}() raised {escaped_kind(exc)}",
                        f"input: {show(case)}\nescaped: {escaped(exc)}") from exc
        took = time.monotonic() - started
        if took > SLOW:
            raise Broke(f"{case['api']}() took too long", f"input: {show(case)}\n{took:.1f} s")


class DevicePluginConfig(_Parser):
    """deviceplugin.config.parse (a decoded document) and load (a config.json file)."""

    name = "dpconfig"

    def __init__(self) -> None:
        from deviceplugin.config import ConfigError

        self.error = ConfigError

    def generate(self, draw: Draw) -> dict[str, Any]:
        if draw.bool(50):
            doc = jsongen.mutate(draw, draw.choice(seeds.device_plugin_configs()),
                                 draw.int(0, 5))
            return {"api": "parse", "doc": doc}
        return {"api": "load", "file": as_payload(
            _document(draw, seeds.device_plugin_configs(), "json"))}

    def call(self, case: dict[str, Any]) -> Any:
        from deviceplugin import config

        if case["api"] == "parse":
            return config.parse(case["doc"])
        return config.load(self._file(payload(case["file"])))


class Policy(_Parser):
    """nodeagent.provision.policy.parse (text) and load (a file: YAML or JSON)."""

    name = "policy"

    def __init__(self) -> None:
        from nodeagent.provision.policy import PolicyError

        self.error = PolicyError

    def generate(self, draw: Draw) -> dict[str, Any]:
        data = _document(draw, seeds.policies(), "yaml")
        if draw.bool(50):
            return {"api": "parse", "text": data.decode("utf-8", "replace")}
        return {"api": "load", "file": as_payload(data)}

    def call(self, case: dict[str, Any]) -> Any:
        from nodeagent.provision import policy

        if case["api"] == "parse":
            text = case["text"]  # a string, or a payload spec (a long repetition)
            return policy.parse(text if isinstance(text, str)
                                else payload(text).decode("utf-8", "replace"))
        return policy.load(self._file(payload(case["file"])))


class IpamConfig(_Parser):
    """nodeagent.ipam.config.parse_config: a decoded config, bytes, or text; and CNI_ARGS."""

    name = "ipamconfig"

    def __init__(self) -> None:
        from nodeagent.cnitypes.errors import CniError

        self.error = CniError  # IpamError from the config, CniError (code 4) from CNI_ARGS

    def generate(self, draw: Draw) -> dict[str, Any]:
        args = ";".join(draw.choice((
            "IP=10.10.0.15/24", "IP=10.10.0.15", "IP=fe80::1%eth0/64", "IP=,", "GATEWAY=x",
            "K8S_POD_NAME=p", "x", "=", "IgnoreUnknown=1", f"{draw.text(4)}={draw.text(8)}"))
            for _ in range(draw.int(0, 3)))
        form = draw.int(0, 2)
        if form == 0:
            doc = jsongen.mutate(draw, draw.choice(seeds.ipam_configs()), draw.int(0, 5))
            doc = doc if isinstance(doc, dict) else {"ipam": doc}  # the CNI path passes a dict
            return {"api": "parse_config", "doc": doc, "cni_args": args}
        data = _document(draw, seeds.ipam_configs(), "json")
        return {"api": "parse_config", "bytes" if form == 1 else "text": as_payload(data),
                "cni_args": args}

    def call(self, case: dict[str, Any]) -> Any:
        from nodeagent.cnitypes.request import parse_cni_args
        from nodeagent.ipam.config import parse_config

        if "doc" in case:
            netconf: Any = case["doc"]
        elif "bytes" in case:
            netconf = payload(case["bytes"])
        else:
            netconf = payload(case["text"]).decode("utf-8", "replace")
        return parse_config(netconf, parse_cni_args(case.get("cni_args", "")))
