"""The agent's settings: the file, the daemon's flags over it, and the one the fallback finds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from nodeagent import settings as s
from nodeagent.cli import build_parser


def write(path: Path, doc: object) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


FULL = {
    "stateDir": "/srv/na", "kubeconfig": "/etc/na/kubeconfig",
    "ipam": {"stateDir": "/srv/na/ipam", "clusterName": "east",
             "etcd": {"endpoints": ["https://e0:2379", "e1"], "caFile": "/etc/na/ca.crt",
                      "certFile": "/etc/na/tls.crt", "keyFile": "/etc/na/tls.key",
                      "prefix": "/x/ipam", "timeout": 1.5},
             "whereabouts": {"honourIPPools": False}},
}


def test_the_file_gives_state_dirs_and_the_cluster_store(tmp_path: Path) -> None:
    got = s.load(write(tmp_path / "agent.yaml", FULL))
    assert (got.state_dir, got.ipam_state_dir) == (Path("/srv/na"), Path("/srv/na/ipam"))
    assert got.kubeconfig == "/etc/na/kubeconfig" and got.honour_whereabouts is False
    store = got.cluster_store
    assert store is not None and store.cluster == "east"
    assert [e.target() for e in store.etcd.endpoints] == ["e0:2379", "e1:2379"]
    assert store.etcd.tls and store.etcd.prefix == "/x/ipam" and store.etcd.timeout == 1.5
    assert store.etcd.cert_file == Path("/etc/na/tls.crt")
    # What the daemon leaves for the fallback reads back the same.
    assert s.parse(got.to_doc(), "again").cluster_store == store


def test_a_password_comes_from_its_file_and_is_never_written_out(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    doc = {"ipam": {"etcd": {"endpoints": "a:1,b:2", "username": "na",
                             "passwordFile": str(secret)}}}
    got = s.parse(doc)
    assert got.cluster_store.etcd.password == "s3cret"
    assert "s3cret" not in json.dumps(got.to_doc())
    assert s.parse(got.to_doc()).cluster_store.etcd.password == "s3cret"


@pytest.mark.parametrize(("doc", "where"), [
    ({"stateDir": "relative"}, "stateDir"),
    ({"ipam": {"stateDir": 5}}, "ipam.stateDir"),
    ({"ipam": {"etcd": {}}}, "ipam.etcd.endpoints"),
    ({"ipam": {"etcd": {"endpoints": ["ftp://a:1"]}}}, "ipam.etcd.endpoints[0]"),
    ({"ipam": {"etcd": {"endpoints": ["a:99999"]}}}, "ipam.etcd.endpoints[0]"),
    ({"ipam": {"etcd": {"endpoints": ["a"], "certFile": "/c"}}}, "ipam.etcd.certFile"),
    ({"ipam": {"etcd": {"endpoints": ["a"], "username": "u"}}}, "ipam.etcd.passwordFile"),
    ({"ipam": {"etcd": {"endpoints": ["a"], "passwordFile": "/nonexistent", "username": "u"}}},
     "ipam.etcd.passwordFile"),
    ({"ipam": {"etcd": {"endpoints": ["a"], "timeout": True}}}, "ipam.etcd.timeout"),
    ({"ipam": {"etcd": {"endpoints": ["a"], "prefix": "x/"}}}, "ipam.etcd.prefix"),
    ({"ipam": {"clusterName": "a/b"}}, "ipam.clusterName"),
    ({"ipam": {"whereabouts": {"honourIPPools": "yes"}}}, "ipam.whereabouts.honourIPPools"),
    ({"ipam": {"etcdd": {}}}, "ipam.etcdd"),
    ([], "settings"),
])
def test_bad_fields_are_refused_by_name(doc: object, where: str) -> None:
    with pytest.raises(s.SettingsError) as info:
        s.parse(doc, "agent.yaml")
    assert f"agent.yaml: {where}" in str(info.value)


def test_unreadable_or_undecodable_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(s.SettingsError, match="cannot read"):
        s.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"ipam: [\xff")
    with pytest.raises(s.SettingsError, match=str(bad)):
        s.load(bad)


def test_flags_override_the_file(tmp_path: Path) -> None:
    base = s.load(write(tmp_path / "agent.yaml", FULL))
    got = s.with_flags(base, ipam_state_dir="/tmp/ipam", etcd_endpoints="https://z:2379",
                       cluster_name="west")
    assert got.ipam_state_dir == Path("/tmp/ipam") and got.state_dir == Path("/srv/na")
    assert [e.host for e in got.cluster_store.etcd.endpoints] == ["z"]
    assert got.cluster_store.cluster == "west"
    assert got.cluster_store.etcd.ca_cert_file == Path("/etc/na/ca.crt"), "kept from the file"
    with pytest.raises(s.SettingsError, match="--ipam-etcd-endpoints"):
        s.with_flags(s.Settings(), etcd_ca_file="/ca.crt")


def test_daemon_flags_reach_the_settings() -> None:
    args = build_parser().parse_args([
        "daemon", "--settings", "/etc/x.yaml", "--ipam-state-dir", "/d", "--state-dir", "/v",
        "--ipam-etcd-endpoints", "a:1", "--ipam-cluster-name", "c"])
    assert args.settings == Path("/etc/x.yaml") and args.ipam_etcd_endpoints == "a:1"
    got = s.with_flags(s.Settings(), state_dir=args.state_dir, ipam_state_dir=args.ipam_state_dir,
                       etcd_endpoints=args.ipam_etcd_endpoints, cluster_name=args.ipam_cluster_name)
    assert (str(got.state_dir), str(got.ipam_state_dir)) == ("/v", "/d")


def test_the_fallback_finds_the_settings_the_agent_left(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s, "DEFAULT_PATH", tmp_path / "etc-agent.yaml")
    sock = str(tmp_path / "run" / "agent.sock")
    running = s.Settings(ipam_state_dir=tmp_path / "ipam-of-the-agent")
    path = s.write_effective(running, sock)
    assert path.stat().st_mode & 0o777 == 0o600

    got = s.for_fallback({"NODEAGENT_SOCKET": sock})
    assert got.ipam_state_dir == tmp_path / "ipam-of-the-agent"
    assert "left by the agent" in got.source
    # The configuration's agentSocket, when the environment names none.
    conf = json.dumps({"agentSocket": sock, "cniVersion": "1.0.0"}).encode()
    assert s.agent_socket(conf) == sock and s.cni_version(conf) == "1.0.0"
    assert s.for_fallback({}, s.agent_socket(conf)).ipam_state_dir == running.ipam_state_dir
    # $NODEAGENT_SETTINGS wins; a file others can write is not trusted.
    explicit = write(tmp_path / "explicit.yaml", {"ipam": {"stateDir": "/explicit"}})
    env = {"NODEAGENT_SOCKET": sock, "NODEAGENT_SETTINGS": str(explicit)}
    assert s.for_fallback(env).ipam_state_dir == Path("/explicit")
    os.chmod(path, 0o666)
    assert s.for_fallback({"NODEAGENT_SOCKET": sock}).ipam_state_dir == s.DEFAULT_IPAM_STATE_DIR
    # Then the settings file, then the defaults.
    write(tmp_path / "etc-agent.yaml", {"ipam": {"stateDir": "/from-etc"}})
    assert s.for_fallback({"NODEAGENT_SOCKET": sock}).ipam_state_dir == Path("/from-etc")


def test_an_unreadable_configuration_still_gets_an_error_version() -> None:
    assert s.agent_socket(b"[" * 100_000) is None
    assert s.cni_version(b"not json") == "1.1.0"
