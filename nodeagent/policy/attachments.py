"""The attachments the agent made, and which NetworkAttachmentDefinition each belongs to.

A record per successful ADD (pod, container, ifname, netns path, CNI network name, kind, IPs)
lives in memory and in ``<stateDir>/attachments/<containerID>-<ifname>.json`` (0600), so a
restarted agent polices the pods it attached before. DEL and GC drop it. The files are written
without fsync: a record only matters while its pod's network namespace exists, and both the
namespace and the rules in it are gone after the crash of the kernel that a missing fsync
could lose the file to; an agent crash alone loses nothing (the page cache survives it).

Multus does not tell the plugin which NetworkAttachmentDefinition it runs for; the pod does.
:func:`pod_interfaces` reads Multus's two annotations (docs/policy-sync.md, "Which network an
interface belongs to"):

- ``k8s.v1.cni.cncf.io/networks``: either a comma-separated list of ``[namespace/]name[@ifname]``
  or a JSON list of objects with ``name``, ``namespace`` (default: the pod's) and ``interface``.
  Multus runs the cluster's default network as delegate 0 and the list in order as delegates
  1, 2, ...; an entry without an interface name gets ``net<its delegate index>`` (so
  ``a@x, b`` gives ``x`` and ``net2``).
- ``k8s.v1.cni.cncf.io/network-status``, which Multus writes after the ADDs: a JSON list of
  ``{name: "namespace/name", interface, ips, mac, default}``; when present it is authoritative.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nodeagent.fileio import make_private_dir, replace_file, restrict

log = logging.getLogger(__name__)

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
#: ``[namespace/]name[@interface]``; Multus requires DNS-1123 labels for both names.
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_SHORT = re.compile(rf"^(?:\s*({_LABEL})\s*/)?\s*({_LABEL})\s*(?:@\s*([^\s/@,]{{1,15}})\s*)?$")
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,1023}")


@dataclass(frozen=True)
class AttachmentRecord:
    """One interface the agent attached to a pod."""

    container_id: str
    ifname: str
    namespace: str  # the pod's (CNI_ARGS K8S_POD_NAMESPACE)
    pod: str  # CNI_ARGS K8S_POD_NAME
    netns: str
    network: str  # the CNI network name (the configuration's "name")
    kind: str  # macvlan, ipvlan, vlan, sriov
    ips: tuple[str, ...] = ()  # addresses, without prefix length
    dpdk: bool = False  # a VF bound to a userspace driver: no netdev, cannot be policed
    since: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, str]:
        return self.container_id, self.ifname

    @property
    def pod_key(self) -> str:
        return f"{self.namespace}/{self.pod}"

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ips"] = list(self.ips)
        return doc

    @classmethod
    def from_doc(cls, doc: Any) -> AttachmentRecord:
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        strings = ("container_id", "ifname", "namespace", "pod", "netns", "network", "kind")
        for name in strings:
            if not isinstance(doc.get(name), str):
                raise ValueError(f"{name} is not a string")
        ips = doc.get("ips", [])
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise ValueError("ips is not a list of strings")
        since = doc.get("since", 0.0)
        return cls(*(doc[n] for n in strings), ips=tuple(ips), dpdk=doc.get("dpdk") is True,
                   since=float(since) if isinstance(since, (int, float)) else 0.0)


class AttachmentRegistry:
    """Every attachment the agent made; thread-safe, reads are dictionary lookups."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.dir = Path(root) / "attachments"
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], AttachmentRecord] = {}
        self._by_pod: dict[str, dict[tuple[str, str], AttachmentRecord]] = {}
        self._dir_ready = False

    def load(self) -> int:
        """Read the records a previous agent left; unreadable ones are logged and removed."""
        loaded = 0
        try:
            restrict(self.dir, 0o700)
            paths = sorted(self.dir.glob("*.json"))
        except FileNotFoundError:
            return 0
        for path in paths:
            try:
                record = AttachmentRecord.from_doc(json.loads(path.read_bytes()))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError) as exc:
                log.warning("removing unreadable attachment record %s: %s", path, exc)
                path.unlink(missing_ok=True)
                continue
            self._index(record)
            loaded += 1
        return loaded

    def add(self, record: AttachmentRecord) -> None:
        if not (_SAFE.fullmatch(record.container_id) and "/" not in record.ifname):
            raise ValueError(f"container ID {record.container_id!r} / ifname "
                             f"{record.ifname!r} cannot name a record")
        if not self._dir_ready:
            make_private_dir(self.dir)
            self._dir_ready = True
        replace_file(self._path(*record.key), json.dumps(record.to_doc()).encode(),
                     mode=0o600, durable=False)
        self._index(record)

    def remove(self, container_id: str, ifname: str) -> AttachmentRecord | None:
        with self._lock:
            record = self._records.pop((container_id, ifname), None)
            if record is not None:
                pod = self._by_pod.get(record.pod_key, {})
                pod.pop(record.key, None)
                if not pod:
                    self._by_pod.pop(record.pod_key, None)
        if _SAFE.fullmatch(container_id) and "/" not in ifname:
            self._path(container_id, ifname).unlink(missing_ok=True)
        return record

    def get(self, container_id: str, ifname: str) -> AttachmentRecord | None:
        return self._records.get((container_id, ifname))

    def all(self) -> list[AttachmentRecord]:
        with self._lock:
            return list(self._records.values())

    def for_pod(self, pod_key: str) -> list[AttachmentRecord]:
        with self._lock:
            return list(self._by_pod.get(pod_key, {}).values())

    def pods(self) -> list[str]:
        with self._lock:
            return list(self._by_pod)

    def gc(self, network: str, keep: Iterable[tuple[str, str]]) -> list[AttachmentRecord]:
        """Drop the records of ``network`` whose (container ID, ifname) is not in ``keep``
        (a CNI GC's valid attachments)."""
        valid = set(keep)
        gone = [r for r in self.all() if r.network == network and r.key not in valid]
        for r in gone:
            self.remove(*r.key)
        return gone

    #: Present while the agent enforces policies: the CNI fallback fails closed then.
    ENFORCING = ".enforcing"

    def set_enforcing(self, on: bool) -> None:
        marker = self.dir / self.ENFORCING
        if on:
            make_private_dir(self.dir)
            self._dir_ready = True
            replace_file(marker, b"", mode=0o600, durable=False)
        else:
            marker.unlink(missing_ok=True)

    def enforcing(self) -> bool:
        return (self.dir / self.ENFORCING).exists()

    def _index(self, record: AttachmentRecord) -> None:
        with self._lock:
            old = self._records.get(record.key)
            if old is not None and old.pod_key != record.pod_key:
                self._by_pod.get(old.pod_key, {}).pop(record.key, None)
            self._records[record.key] = record
            self._by_pod.setdefault(record.pod_key, {})[record.key] = record

    def _path(self, container_id: str, ifname: str) -> Path:
        return self.dir / f"{container_id}-{ifname}.json"


# -- which NetworkAttachmentDefinition -----------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """One entry of the ``networks`` annotation."""

    namespace: str
    name: str
    interface: str

    @property
    def network(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_networks(value: str, pod_namespace: str) -> list[Selection]:
    """The ``k8s.v1.cni.cncf.io/networks`` annotation, with Multus's interface names filled in.
    Raises ValueError for an annotation Multus would refuse."""
    text = value.strip()
    entries: list[tuple[str, str, str]] = []
    if any(c in text for c in '[{"'):  # Multus's test for the JSON form
        doc = json.loads(text)
        if not isinstance(doc, list):
            raise ValueError("not a list")
        for item in doc:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                    or not item["name"]:
                raise ValueError(f"entry {item!r} has no name")
            # "interfaceRequest": the name before Multus 3.2, still honoured
            ns = item.get("namespace") or ""
            iface = item.get("interface") or item.get("interfaceRequest") or ""
            if not isinstance(ns, str) or not isinstance(iface, str):
                raise ValueError(f"entry {item['name']!r}: namespace/interface not strings")
            entries.append((ns, item["name"], iface))
    elif text:
        for part in text.split(","):
            m = _SHORT.match(part.strip())
            if m is None:
                raise ValueError(f"entry {part.strip()!r} is not [namespace/]name[@interface]")
            entries.append((m.group(1) or "", m.group(2), m.group(3) or ""))
    return [Selection(ns or pod_namespace, name, iface or f"net{index}")
            for index, (ns, name, iface) in enumerate(entries, start=1)]


@dataclass(frozen=True)
class NetworkStatus:
    """One entry of the ``network-status`` annotation."""

    network: str  # namespace/name of the NetworkAttachmentDefinition
    interface: str
    ips: tuple[str, ...]
    default: bool


def parse_network_status(value: str, pod_namespace: str) -> list[NetworkStatus]:
    """The ``k8s.v1.cni.cncf.io/network-status`` annotation; malformed entries are skipped."""
    try:
        doc = json.loads(value)
    except ValueError:
        return []
    out = []
    for item in doc if isinstance(doc, list) else ():
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        name = item["name"]
        ips = item.get("ips") or []
        out.append(NetworkStatus(
            name if "/" in name else f"{pod_namespace}/{name}",
            item.get("interface") if isinstance(item.get("interface"), str) else "",
            tuple(ip for ip in ips if isinstance(ip, str)) if isinstance(ips, list) else (),
            item.get("default") is True))
    return out


def annotations(pod: Mapping[str, Any]) -> dict[str, str]:
    meta = pod.get("metadata") or {}
    found = meta.get("annotations") or {}
    return {k: v for k, v in found.items() if isinstance(v, str)} \
        if isinstance(found, dict) else {}


def pod_interfaces(pod: Mapping[str, Any]) -> dict[str, str]:
    """ifname -> ``namespace/name`` of its NetworkAttachmentDefinition: network-status when
    Multus has written it, else the networks annotation. Never raises."""
    ns = str((pod.get("metadata") or {}).get("namespace") or "")
    notes = annotations(pod)
    found = {s.interface: s.network for s in
             parse_network_status(notes.get(STATUS_ANNOTATION, ""), ns)
             if not s.default and s.interface}
    if found:
        return found
    try:
        return {s.interface: s.network for s in
                parse_networks(notes.get(NETWORKS_ANNOTATION, ""), ns)}
    except ValueError as exc:
        log.debug("pod %s/%s: %s unreadable: %s", ns, (pod.get("metadata") or {}).get("name"),
                  NETWORKS_ANNOTATION, exc)
        return {}


def nad_network_name(nad: Mapping[str, Any]) -> str:
    """The CNI network name a NetworkAttachmentDefinition's configuration runs under: its
    ``spec.config`` ``name``, or (as Multus fills it in when absent) the object's name."""
    meta = nad.get("metadata") or {}
    spec = nad.get("spec") or {}
    config = spec.get("config") if isinstance(spec, dict) else None
    if isinstance(config, str) and config:
        try:
            doc = json.loads(config)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("name"), str) and doc["name"]:
            return doc["name"]
    return str(meta.get("name") or "")


class AttachmentHook(Protocol):
    """What the CNI side tells about attachments (the network policy controller)."""

    def attached(self, record: AttachmentRecord) -> None:
        """Before ADD returns; raising fails (and undoes) the ADD."""

    def detached(self, container_id: str, ifname: str) -> None: ...

    def collected(self, network: str, keep: Iterable[tuple[str, str]]) -> None: ...
