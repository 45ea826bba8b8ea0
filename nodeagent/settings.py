"""The agent's own settings: state directories, the cluster store, whereabouts migration.

One place for what the daemon and the in-process CNI fallback must agree on. The daemon reads
the settings file (``--settings``, default ``/etc/nodeagent/agent.yaml``; absent is fine), lets
its flags override it, and writes the result next to its socket (``<socket>.settings.json``,
root-only). The fallback runs when that daemon is down, started by the shim with the runtime's
environment: it takes ``$NODEAGENT_SETTINGS`` if set, else the file the daemon of the socket it
would have used left behind, else the settings file, else the defaults. So a DEL that reaches
the fallback looks in the daemon's state directories and the daemon's cluster store.

The file (YAML or JSON)::

    stateDir: /var/lib/nodeagent            # VF attachment records
    kubeconfig: /etc/nodeagent/kubeconfig   # default: in-cluster service account
    ipam:
      stateDir: /var/lib/nodeagent/ipam     # node-local reservations
      clusterName: ""                       # key prefix segment: clusters sharing one etcd
      etcd:                                 # the cluster store (whereabouts configs use it)
        endpoints: [https://etcd-0.etcd:2379, https://etcd-1.etcd:2379]
        caFile: /etc/nodeagent/etcd/ca.crt
        certFile: /etc/nodeagent/etcd/tls.crt
        keyFile: /etc/nodeagent/etcd/tls.key
        username: nodeagent                 # with passwordFile
        passwordFile: /etc/nodeagent/etcd/password
        prefix: /nodeagent/ipam/v1
        timeout: 2
      whereabouts:
        honourIPPools: true                 # never hand out what whereabouts' objects hold
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nodeagent.documents import DocumentError, parse_json, parse_yaml
from nodeagent.fields import Fields, join
from nodeagent.fileio import replace_file
from nodeagent.ipam import fields as ipam_fields
from nodeagent.ipam.configtypes import DEFAULT_ETCD_PREFIX, DEFAULT_ETCD_TIMEOUT, EtcdConfig
from nodeagent.ipam.errors import IpamError

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/etc/nodeagent/agent.yaml")
ENV = "NODEAGENT_SETTINGS"
DEFAULT_STATE_DIR = Path("/var/lib/nodeagent")
DEFAULT_IPAM_STATE_DIR = DEFAULT_STATE_DIR / "ipam"
#: Where the shim looks for the agent when neither $NODEAGENT_SOCKET nor agentSocket say.
DEFAULT_SOCKET = "/run/nodeagent/cni.sock"
MAX_BYTES = 64 * 1024
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class SettingsError(ValueError):
    """The settings file (or a flag) is unusable; the message names the field."""


@dataclass(frozen=True)
class ClusterStore:
    """The etcd whose reservations are cluster-wide, and this cluster's name in it."""

    etcd: EtcdConfig
    cluster: str = ""
    password_file: Path | None = None  # kept so the written settings name the file, not it

    def describe(self) -> str:
        return ",".join(e.target() for e in self.etcd.endpoints)


@dataclass(frozen=True)
class Settings:
    state_dir: Path = DEFAULT_STATE_DIR
    ipam_state_dir: Path = DEFAULT_IPAM_STATE_DIR
    cluster_store: ClusterStore | None = None
    kubeconfig: str | None = None
    honour_whereabouts: bool = True
    source: str = "defaults"  # where these came from, for messages

    def to_doc(self) -> dict[str, Any]:
        """The settings in the file's own schema (what :func:`parse` reads back)."""
        ipam: dict[str, Any] = {"stateDir": str(self.ipam_state_dir),
                                "whereabouts": {"honourIPPools": self.honour_whereabouts}}
        store = self.cluster_store
        if store is not None:
            e = store.etcd
            scheme = "https://" if e.tls else "http://"
            etcd: dict[str, Any] = {"endpoints": [scheme + p.target() for p in e.endpoints],
                                    "prefix": e.prefix, "timeout": e.timeout}
            for key, path in (("caFile", e.ca_cert_file), ("certFile", e.cert_file),
                              ("keyFile", e.key_file), ("passwordFile", store.password_file)):
                if path is not None:
                    etcd[key] = str(path)
            if e.username:
                etcd["username"] = e.username
            ipam["etcd"] = etcd
            ipam["clusterName"] = store.cluster
        doc: dict[str, Any] = {"stateDir": str(self.state_dir), "ipam": ipam}
        if self.kubeconfig:
            doc["kubeconfig"] = self.kubeconfig
        return doc


def _error(where: str, problem: str) -> SettingsError:
    return SettingsError(f"{where}: {problem}")


def parse(doc: Any, source: str = "settings") -> Settings:
    """Settings from a decoded document; SettingsError names the field (``ipam.etcd.caFile``)."""
    f = Fields(lambda where, problem: _error(f"{source}: {where}", problem))
    if doc is None:
        return Settings(state_dir=_env_state_dir(), source=source)
    top = f.obj(doc, "settings", allowed=("stateDir", "kubeconfig", "ipam"))
    ipam = f.opt_obj(top, "ipam", "") or {}
    ipam = f.obj(ipam, "ipam", allowed=("stateDir", "clusterName", "etcd", "whereabouts"))
    wb = f.opt_obj(ipam, "whereabouts", "ipam") or {}
    wb = f.obj(wb, "ipam.whereabouts", allowed=("honourIPPools",))
    etcd = f.opt_obj(ipam, "etcd", "ipam")
    cluster = f.string(ipam, "clusterName", "ipam", "", pattern=_CLUSTER_NAME, empty=True)
    return Settings(
        state_dir=_abs(f, top, "stateDir", "", _env_state_dir()),
        ipam_state_dir=_abs(f, ipam, "stateDir", "ipam", DEFAULT_IPAM_STATE_DIR),
        cluster_store=_cluster_store(f, etcd, cluster) if etcd is not None else None,
        kubeconfig=f.string(top, "kubeconfig", "", None),
        honour_whereabouts=f.boolean(wb, "honourIPPools", "ipam.whereabouts", True),
        source=source,
    )


def _abs(f: Fields, obj: Mapping[str, Any], key: str, where: str, default: Path) -> Path:
    value = f.string(obj, key, where, None)
    if value is None:
        return default
    if not value.startswith("/"):
        f.fail(join(where, key), f"{value!r} must be an absolute path")
    return Path(value)


def _cluster_store(f: Fields, etcd: dict[str, Any], cluster: str) -> ClusterStore:
    where = "ipam.etcd"
    etcd = f.obj(etcd, where, allowed=("endpoints", "caFile", "certFile", "keyFile", "username",
                                       "passwordFile", "prefix", "timeout"))
    raw = f.raw(etcd, "endpoints")
    items = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else \
        list(f.strings(etcd, "endpoints", where, max_items=64))
    if not items or not all(items):
        f.fail(join(where, "endpoints"), "needs at least one host:port (no empty entry)")
    endpoints, tls = [], False
    for i, item in enumerate(items):
        scheme, sep, rest = item.partition("://")
        if sep:
            if scheme not in ("http", "https"):
                f.fail(join(join(where, "endpoints"), i), f"{item!r}: scheme must be http(s)")
            tls, item = tls or scheme == "https", rest.rstrip("/")
        try:
            endpoints.append(ipam_fields.endpoint(item))
        except IpamError:
            f.fail(join(join(where, "endpoints"), i), f"{item!r} is not host:port")
    files = {key: _abs(f, etcd, key, where, Path()) for key in ("caFile", "certFile", "keyFile")}
    paths = {k: (p if str(p) != "." else None) for k, p in files.items()}
    if (paths["certFile"] is None) != (paths["keyFile"] is None):
        f.fail(join(where, "certFile"), "goes together with keyFile")
    username = f.string(etcd, "username", where, None)
    password_file = _abs(f, etcd, "passwordFile", where, Path())
    pw_path = password_file if str(password_file) != "." else None
    if (username is None) != (pw_path is None):
        f.fail(join(where, "passwordFile"), "goes together with username")
    password = None
    if pw_path is not None:
        try:
            password = pw_path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            f.fail(join(where, "passwordFile"), f"cannot read {pw_path}: {exc}")
    prefix = f.string(etcd, "prefix", where, DEFAULT_ETCD_PREFIX)
    if not prefix.startswith("/") or prefix.endswith("/"):
        f.fail(join(where, "prefix"), f"{prefix!r} must start and not end with '/'")
    timeout = f.raw(etcd, "timeout", DEFAULT_ETCD_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not 0 < timeout <= 60:
        f.fail(join(where, "timeout"), "must be a number of seconds in (0, 60]")
    config = EtcdConfig(
        endpoints=tuple(endpoints), tls=tls or any(paths.values()), username=username,
        password=password, key_file=paths["keyFile"], cert_file=paths["certFile"],
        ca_cert_file=paths["caFile"], prefix=prefix, timeout=float(timeout))
    return ClusterStore(config, cluster, pw_path)


def load(path: Path | str) -> Settings:
    """The settings file at ``path``; SettingsError if it cannot be read or is invalid."""
    path = Path(path)
    try:
        data = path.read_bytes()
        doc = parse_yaml(data, max_bytes=MAX_BYTES)
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except DocumentError as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    return parse(doc, str(path))


def load_optional(path: Path | str | None) -> Settings:
    """``load(path)``; the defaults when ``path`` is the default file and it does not exist."""
    if path is None or (Path(path) == DEFAULT_PATH and not DEFAULT_PATH.exists()):
        return Settings(state_dir=_env_state_dir())
    return load(path)


def with_flags(base: Settings, *, state_dir: str | None = None,
               ipam_state_dir: str | None = None, etcd_endpoints: str | None = None,
               etcd_ca_file: str | None = None, etcd_cert_file: str | None = None,
               etcd_key_file: str | None = None, cluster_name: str | None = None,
               kubeconfig: str | None = None) -> Settings:
    """The daemon's flags over the file: each flag given replaces that setting."""
    out = base
    if state_dir:
        out = replace(out, state_dir=Path(state_dir))
    if ipam_state_dir:
        out = replace(out, ipam_state_dir=Path(ipam_state_dir))
    if kubeconfig:
        out = replace(out, kubeconfig=kubeconfig)
    if etcd_endpoints or etcd_ca_file or etcd_cert_file or etcd_key_file or cluster_name:
        doc = out.to_doc()
        etcd = doc["ipam"].setdefault("etcd", {})
        for key, value in (("endpoints", etcd_endpoints), ("caFile", etcd_ca_file),
                           ("certFile", etcd_cert_file), ("keyFile", etcd_key_file)):
            if value:
                etcd[key] = value
        if cluster_name is not None:
            doc["ipam"]["clusterName"] = cluster_name
        if "endpoints" not in etcd:
            raise SettingsError("--ipam-etcd-* flags need --ipam-etcd-endpoints (or ipam.etcd"
                                " in the settings file)")
        out = replace(parse(doc, "flags"), source=f"{base.source} and flags")
    return out


def effective_path(socket: str) -> Path:
    """Where the daemon listening on ``socket`` leaves the settings it runs with."""
    return Path(f"{socket}.settings.json")


def write_effective(settings: Settings, socket: str) -> Path:
    """Leave ``settings`` next to the socket for the fallback (root-only, atomic)."""
    path = effective_path(socket)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    replace_file(path, json.dumps(settings.to_doc(), indent=1).encode() + b"\n", mode=0o600,
                 durable=False)
    return path


def for_fallback(env: Mapping[str, str], config_socket: str | None = None) -> Settings:
    """The settings the in-process fallback runs with (see the module's docstring).

    ``config_socket``: the network configuration's ``agentSocket``, which the shim uses when
    ``$NODEAGENT_SOCKET`` is not set."""
    explicit = env.get(ENV)
    if explicit:
        return load(explicit)
    socket = env.get("NODEAGENT_SOCKET") or config_socket or DEFAULT_SOCKET
    left = effective_path(socket)
    if _trusted(left):
        return replace(load(left), source=f"{left} (left by the agent)")
    return load_optional(DEFAULT_PATH)


def agent_socket(netconf: bytes) -> str | None:
    """The network configuration's top-level ``agentSocket`` (the shim's second choice)."""
    return _top_string(netconf, "agentSocket")


def cni_version(netconf: bytes) -> str:
    """The configuration's ``cniVersion`` for an error reply (1.1.0 when unreadable)."""
    return _top_string(netconf, "cniVersion") or "1.1.0"


def _top_string(netconf: bytes, key: str) -> str | None:
    try:
        doc = parse_json(netconf, max_bytes=1 << 20)
    except DocumentError:
        return None
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, str) and value and len(value) < 4096 else None


def _trusted(path: Path) -> bool:
    """A file only root (our user) can have written: it decides where state is written."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("ignoring %s: not owned by uid %d or writable by others", path, os.geteuid())
        return False
    return True


def _env_state_dir() -> Path:
    return Path(os.environ.get("NODEAGENT_STATE_DIR") or DEFAULT_STATE_DIR)


def kube_client(settings: Settings) -> Any:
    """A Kubernetes client (settings' kubeconfig, else in-cluster), or None outside a cluster:
    without Kubernetes there are no whereabouts objects to honour."""
    from nodeagent.k8s.client import ApiError, build_client, in_cluster

    if not settings.kubeconfig and not in_cluster():
        return None
    try:
        return build_client(kubeconfig=settings.kubeconfig)
    except ApiError as exc:
        log.warning("whereabouts' objects will not be read: %s", exc)
        return None


def ipam_for(settings: Settings, *, api: Any = None, **kw: Any) -> Any:
    """An :class:`~nodeagent.ipam.allocator.Ipam` over these settings' state and stores, which
    reads whereabouts' objects once, when a cluster-store range is first served (the
    fallback's way; the daemon passes its watched view as ``whereabouts``)."""
    from nodeagent.ipam.allocator import Ipam

    if "whereabouts" not in kw and settings.cluster_store is not None \
            and settings.honour_whereabouts:
        kw["whereabouts"] = _one_shot(settings, api)
    return Ipam(settings.ipam_state_dir, cluster=settings.cluster_store,
                settings_source=settings.source, **kw)


def _one_shot(settings: Settings, api: Any) -> Any:
    from nodeagent.ipam import whereabouts

    cache: list[Any] = []

    def objects() -> whereabouts.Objects:
        from nodeagent.k8s.client import ApiError

        if not cache:
            client = api if api is not None else kube_client(settings)
            try:
                cache.append(whereabouts.fetch(client) if client is not None
                             else whereabouts.Objects(version=1))
            except ApiError as exc:
                raise whereabouts.Unreadable(str(exc)) from exc
        return cache[0]

    return objects
