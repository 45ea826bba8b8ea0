"""Where the CNI targets run: two throwaway network namespaces, state in a temp dir.

``nafz-h-*`` stands in for the host namespace (the handlers' ``Context.host``): its ``fzh0``
carries a default route, so configurations without ``master`` find a link there and nothing
is ever created on the real host. ``nafz-p-*`` is every request's pod namespace (CNI_NETNS),
with ``fzm0`` as a master for ``linkInContainer``. IPAM and VF records live under the temp
dir, IPAM plugins a configuration may delegate to are the fake ``fzipam-*`` scripts in the
temp dir's ``bin`` (CNI_PATH). Requests name these with placeholders (``$NETNS``, ``$BIN``,
...), so corpus files do not depend on one run's names.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

from pyroute2 import netns as pyroute2_netns

from cni.context import Context
from nodeagent.ipam.allocator import Ipam
from nodeagent.netns import netns_path
from nodeagent.rtnl import Rtnl
from nodeagent.sysfs import Sysfs
from nodeagent.vfstate import VfState
from tests.fuzz.seeds import HOST_MASTER, POD_MASTER

PREFIX = "nafz-"

#: Fake IPAM plugins: what each prints for ADD (other verbs: nothing, exit 0).
FAKE_PLUGINS = {
    "fzipam-ok": (0, '{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.5/24",'
                     '"gateway":"10.9.0.1"}],"routes":[{"dst":"0.0.0.0/0"}]}'),
    "fzipam-weird": (0, '{"cniVersion":"1.0.0","ips":[{"address":"bogus"}],"routes":5}'),
    "fzipam-fail": (1, '{"code":"seven","msg":5,"details":[1]}'),
    "fzipam-code": (1, '{"code":99999999999999999999,"msg":"x"}'),
    "fzipam-junk": (0, "not json at all"),
    "fzipam-array": (0, "[1,2]"),
}


def _write_plugins(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, (status, out) in FAKE_PLUGINS.items():
        script = (f"#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\n"
                  f"printf '%s\\n' '{out}'\nexit {status}\n")
        path = directory / name
        path.write_text(script)
        path.chmod(0o755)


def tag() -> str:
    """This process's name tag: chosen by whoever started it (so it can clean up after a
    killed worker), else random."""
    return os.environ.get("NAFZ_TAG") or secrets.token_hex(3)


def scratch(name_tag: str, what: str) -> Path:
    """A temp dir ``/tmp/nafz-<tag>-<what>`` (short: unix socket paths must fit in 108)."""
    path = Path(f"/tmp/{PREFIX}{name_tag}-{what}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    return path


def remove_leftovers(name_tag: str) -> None:
    """What a killed worker tagged ``name_tag`` left: its namespaces and temp dirs."""
    for kind in ("h", "p"):
        with contextlib.suppress(OSError):
            pyroute2_netns.remove(f"{PREFIX}{kind}-{name_tag}")
    for path in Path("/tmp").glob(f"{PREFIX}{name_tag}-*"):
        shutil.rmtree(path, ignore_errors=True)


class Sandbox:
    def __init__(self, root: Path, name_tag: str) -> None:
        self.root = root
        tag = name_tag
        self.host_ns = f"{PREFIX}h-{tag}"
        self.pod_ns = f"{PREFIX}p-{tag}"
        self.bin = root / "bin"
        _write_plugins(self.bin)
        (root / "not-a-netns").write_text("a regular file\n")
        self.placeholders = {
            "$NETNS": netns_path(self.pod_ns),
            "$NONS": str(root / "gone-netns"),
            "$FILE": str(root / "not-a-netns"),
            "$BIN": str(self.bin),
        }
        self._cases = 0
        pyroute2_netns.create(self.host_ns)
        pyroute2_netns.create(self.pod_ns)
        self.host = Rtnl(netns_path(self.host_ns))
        self.pod = Rtnl(netns_path(self.pod_ns))
        self._populate()
        self.baseline = self.links()

    # -- namespaces -------------------------------------------------------------------------

    def _populate(self) -> None:
        for rtnl, master in ((self.host, HOST_MASTER), (self.pod, POD_MASTER)):
            rtnl.link_set(rtnl.link_index("lo"), up=True)
            if rtnl.link_index(master) is None:
                rtnl.link_create(master, "bridge")
                rtnl.link_set(rtnl.link_index(master), up=True)
        index = self.host.link_index(HOST_MASTER)
        if not any(a["index"] == index for a in self.host.addresses(socket.AF_INET)):
            self.host.address_add(index, "10.255.0.1", 24, socket.AF_INET)
            self.host.route_add(socket.AF_INET, None, 0, gateway="10.255.0.254", oif=index)

    def links(self) -> tuple[frozenset[str], frozenset[str]]:
        """Link names in the stand-in host namespace and in the pod namespace."""
        return tuple(frozenset(m.get("IFLA_IFNAME") for m in rtnl.links())
                     for rtnl in (self.host, self.pod))  # type: ignore[return-value]

    def reset_links(self) -> None:
        """Back to the fuzzer's own links only (a successful ADD leaves one)."""
        for rtnl, keep in zip((self.host, self.pod), self.baseline, strict=True):
            for msg in rtnl.links():
                if msg.get("IFLA_IFNAME") not in keep:
                    with contextlib.suppress(OSError):
                        rtnl.link_delete(msg["index"])
        self._populate()

    # -- state ------------------------------------------------------------------------------

    def fresh_state(self) -> Path:
        self._cases += 1
        state = self.root / "state"
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()
        return state

    def context(self, state: Path) -> Context:
        """Handlers' context over the stand-in host namespace and the state under ``state``."""
        return Context(host=Rtnl(netns_path(self.host_ns)), ipam=Ipam(state / "ipam",
                                                                       lock_timeout=2.0),
                       vfs=VfState(state / "cni"), sysfs=Sysfs(state / "sys"))

    @staticmethod
    def snapshot(state: Path) -> frozenset[tuple[str, ...]]:
        """What a failed ADD must not change: reservations, VF records, stray files."""
        found: set[tuple[str, ...]] = set()
        for path in state.rglob("*"):
            if path.is_dir() or path.name == "lock" or path.parent.name == "locks":
                continue
            rel = str(path.relative_to(state))
            if path.name == "reservations.json":
                try:
                    records = json.loads(path.read_text())["reservations"]
                except (OSError, ValueError, KeyError) as exc:
                    found.add(("unreadable", rel, str(exc)))
                    continue
                found.update(("reservation", rel, json.dumps(r, sort_keys=True))
                             for r in records)
            else:
                found.add(("file", rel))
        return frozenset(found)

    def substitute(self, value: Any) -> Any:
        """Placeholders replaced, in strings and in JSON documents."""
        if isinstance(value, str):
            return self.placeholders.get(value, value)
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        return value

    def close(self) -> None:
        self.host.close()
        self.pod.close()
        for name in (self.host_ns, self.pod_ns):
            with contextlib.suppress(OSError):
                pyroute2_netns.remove(name)
        shutil.rmtree(self.root, ignore_errors=True)


def confine(config: Any, state: Path) -> Any:
    """Keep a configuration on the fuzzer's ground: an absolute ``ipam.dataDir`` points into
    ``state``, and the etcd datastore (a network client) becomes the node-local one."""
    if not isinstance(config, dict) or not isinstance(config.get("ipam"), dict):
        return config
    ipam = dict(config["ipam"])
    data_dir = ipam.get("dataDir")
    if isinstance(data_dir, str) and data_dir.startswith("/"):
        ipam["dataDir"] = str(state / "datadir")
    if ipam.get("datastore") == "etcd":
        ipam["datastore"] = "file"
    return {**config, "ipam": ipam}


def env_safe(env: dict[str, str]) -> dict[str, str]:
    """What can be put in a process environment: no NUL, no '=' in names, encodable."""
    out = {}
    for key, value in env.items():
        key = key.replace("\x00", "").replace("=", "")
        value = value.replace("\x00", "")
        try:
            os.fsencode(key), os.fsencode(value)
        except UnicodeEncodeError:
            continue
        if key:
            out[key] = value
    return out


def confine_stdin(data: bytes, state: Path) -> bytes:
    """:func:`confine` for stdin bytes that decode to a configuration."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return data
    confined = confine(doc, state)
    return data if confined is doc else json.dumps(confined).encode()
