"""One set of field rules for every configuration parser, and loaders that no file content can
crash: config.json and the policy refuse bad documents naming the field, their watchers keep
the last good version and report the failure, and no loop thread dies (issue #12 items 10-11,
issue #14's shared fields)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deviceplugin import config as dp_config
from deviceplugin.config import ConfigError
from deviceplugin.sources import PluginSources
from nodeagent.fields import Fields
from nodeagent.fileio import WatchedFile
from nodeagent.provision import policy as node_policy
from nodeagent.provision.policy import PolicyError
from nodeagent.provision.reconciler import ReconcileLoop, Reconciler
from nodeagent.status import StatusBoard
from nodeagent.sysfs import Sysfs
from tests.sysfs_tree import SysfsTree


class Refused(ValueError):
    pass


F = Fields(lambda path, problem: Refused(f"{path}: {problem}"))


def refused(call: Any, *args: Any) -> str:
    with pytest.raises(Refused) as info:
        call(*args)
    return str(info.value)


# -- the shared rules -----------------------------------------------------------------------


def test_pci_id_rule() -> None:
    assert F.pci_id("8086", "v") == "8086"
    assert F.pci_id("0x154C", "v") == "154c"
    assert F.pci_id(1592, "v") == "1592"  # an unquoted YAML number of four digits
    for bad in ("86", "0x86", "808", "80866", "intel", "", True, 86, None):
        assert refused(F.pci_id, bad, "x.vendor").startswith("x.vendor: ")


def test_the_device_plugin_and_the_policy_read_pci_ids_alike() -> None:
    def dp(value: Any) -> str | None:
        try:
            cfg = dp_config.parse({"resourceList": [{"resourceName": "a",
                                                     "selectors": {"vendors": [value]}}]})
        except ConfigError:
            return None
        return cfg.resources[0].selectors[0].vendors[0]

    def pol(value: Any) -> str | None:
        text = json.dumps({"pfs": [{"nicSelector": {"vendor": value}, "numVfs": 1}]})
        try:
            return node_policy.parse(text).pfs[0].selector.vendor
        except PolicyError:
            return None

    for value in ("8086", "0x8086", "0x86", "86", "0086", "15b3"):
        assert dp(value) == pol(value), value
    assert dp("0x86") is None  # once zero-padded to "0086" here, refused by the policy


def test_integers_are_never_bools_and_stay_in_range() -> None:
    assert F.integer({"n": 3}, "n", "x", 0, 7) == 3
    assert "x.n" in refused(F.integer, {"n": True}, "n", "x", 0, 7)
    assert "x.n" in refused(F.integer, {"n": 8}, "n", "x", 0, 7)
    assert "x.n" in refused(F.integer, {"n": 1.0}, "n", "x", 0, 7)


def test_addresses_refuse_a_zone() -> None:
    assert str(F.interface("fd00::1/64", "a")) == "fd00::1/64"
    for call in (F.ip, F.cidr, F.interface):
        assert "scope" in refused(call, "fe80::1%eth0/64", "a")
    assert "prefix" in refused(F.interface, "10.0.0.1", "a")
    assert "must be a string" in refused(F.ip, 167772161, "a")


def test_index_sets_are_bounded_before_they_are_built() -> None:
    assert F.index_set("0-3, 6", "v", 8) == frozenset({0, 1, 2, 3, 6})
    assert F.index_set("0-2,1-3,0-3", "v", 8) == frozenset(range(4))
    assert "0-99999999999" in refused(F.index_set, "0-99999999999", "v", 65535)
    assert "not within" in refused(F.index_set, "0-65535", "v", 65535)
    assert "ends before" in refused(F.index_set, "3-1", "v", 8)


def test_pf_names_vf_range_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        dp_config.parse({"resourceList": [{"resourceName": "a",
                                           "selectors": {"pfNames": ["p#0-99999999999"]}}]})
    assert "resourceList[0].selectors.pfNames[0]" in str(info.value)
    with pytest.raises(ConfigError, match="not within"):
        dp_config.vf_range("p#0-70000")
    assert len(dp_config.vf_range("p#0-65534").indexes or ()) == 65535


@pytest.mark.parametrize(("selector", "field"), [
    ({"pciAddresses": ["41:00.0"]}, "pciAddresses[0]"),
    ({"rootDevices": ["0000:41:00.0\n"]}, "rootDevices[0]"),
    ({"drivers": ["vfio pci"]}, "drivers[0]"),
    ({"vendors": [8086.0]}, "vendors[0]"),
    ({"vdpaType": 5}, "vdpaType"),
])
def test_config_json_selector_fields_are_typed(selector: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        dp_config.parse({"resourceList": [{"resourceName": "a", "selectors": selector}]})
    assert f"resourceList[0].selectors.{field}" in str(info.value)


@pytest.mark.parametrize("entry", [{"resourceName": "a\n"}, {"resourceName": "a",
                                                             "resourcePrefix": "Bad_Prefix"}])
def test_config_json_names_are_matched_whole(entry: dict) -> None:
    with pytest.raises(ConfigError, match=r"resourceList\[0\]\.resource"):
        dp_config.parse({"resourceList": [entry]})


@pytest.mark.parametrize("text", [
    "pfs: [{name: \"a\\n\", nicSelector: {pfNames: [a]}, numVfs: 1, resourceName: \"r\\n\"}]",
    "pfs: [{nicSelector: {pfNames: [a]}, numVfs: 1, vfDefaults: {driver: \"vfio-pci\\n\"}}]",
    "pfs: [{nicSelector: {pfNames: [a]}, numVfs: null}]",
    "pfs: [{nicSelector: {rootDevices: [\"0000:41:00.0\\n\"]}, numVfs: 1}]",
    "resourcePrefix: \"example.com\\n\"",
])
def test_policy_identifiers_are_matched_whole(text: str) -> None:
    with pytest.raises(PolicyError):
        node_policy.parse(text)


# -- documents: bad bytes and deep nesting -----------------------------------------------------

BAD_DOCUMENTS = {
    "invalid UTF-8 JSON": b'{"resourceList": [{"resourceName": "\xff"}]}',
    "deep JSON": b'{"pfs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "deep YAML": b"pfs: " + b"[" * 50_000,
    "invalid UTF-8 YAML": b"pfs: [\xfe]",
    "YAML alias": b"a: &x [1]\nb: *x\n",
}


@pytest.mark.parametrize("name", sorted(BAD_DOCUMENTS))
def test_config_json_refuses_bad_documents(tmp_path: Path, name: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(BAD_DOCUMENTS[name])
    with pytest.raises(ConfigError, match=r"config\.json"):
        dp_config.load(path)


@pytest.mark.parametrize("name", sorted(BAD_DOCUMENTS))
def test_policy_refuses_bad_documents(tmp_path: Path, name: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(BAD_DOCUMENTS[name])
    with pytest.raises(PolicyError, match=r"policy\.yaml"):
        node_policy.load(path)


def test_device_plugin_watcher_keeps_the_last_good_config(tmp_path: Path) -> None:
    status = StatusBoard()
    cfg, policy = tmp_path / "config.json", tmp_path / "policy.yaml"
    sources = PluginSources(cfg, policy, status=status)
    cfg.write_text(json.dumps({"resourceList": [{"resourceName": "a"}]}))
    policy.write_text("pfs: [{nicSelector: {pfNames: [ens1]}, numVfs: 1, resourceName: p}]")
    assert sources.check()
    for name in ("deep JSON", "invalid UTF-8 JSON"):
        cfg.write_bytes(BAD_DOCUMENTS[name])
        policy.write_bytes(BAD_DOCUMENTS["deep YAML"])
        assert not sources.check()
        assert [r.full_name for r in sources.config.resources] == ["intel.com/a"]
        assert sources.policy is not None and sources.policy.pfs[0].resource_name == "p"
    assert [e["source"] for e in status.snapshot()["recentErrors"]] == ["deviceplugin"] * 2


def test_watched_file_survives_a_loader_bug(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("1")
    errors: list[Exception] = []
    results = iter([lambda: 1, lambda: 1 / 0, lambda: [][0]])

    def load(_: Path) -> int:
        return next(results)()

    watched = WatchedFile(path, load, (ValueError,), errors.append)
    assert watched.check() and watched.value == 1
    for text in ("22", "333"):
        path.write_text(text)
        assert not watched.check()
        assert watched.value == 1
    assert [type(e) for e in errors] == [ZeroDivisionError, IndexError]


def test_reconciler_thread_outlives_any_policy_file(tree: SysfsTree, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    tree.add_pf("0000:41:00.0", "igb", netdev="ens1", numvfs=1)
    path = tmp_path / "policy.yaml"
    path.write_text("pfs: [{nicSelector: {pfNames: [ens1]}, numVfs: 1}]")
    status = StatusBoard()
    loop = ReconcileLoop(Reconciler(Sysfs(tree.root), status, hostname="w1"), path,
                         netlink=False)
    loop.start()
    try:
        assert loop.wait_for_pass(0, 10)
        for content in (BAD_DOCUMENTS["deep YAML"], BAD_DOCUMENTS["invalid UTF-8 YAML"],
                        BAD_DOCUMENTS["deep JSON"]):
            path.write_bytes(content)
            passes = loop.passes
            loop.trigger()
            assert loop.wait_for_pass(passes, 10), "the reconciler thread stopped"
            assert "policy not applied" in status.snapshot()["recentErrors"][-1]["message"]
            assert loop.policy is not None and loop.policy.pfs[0].num_vfs == 1
        # whatever the reload raises, the thread stays
        monkeypatch.setattr(loop, "_reload", lambda: 1 / 0)
        passes = loop.passes
        loop.trigger()
        assert loop.wait_for_pass(passes, 10), "the reconciler thread stopped"
    finally:
        loop.stop()
