"""hw-lab inventories: the shipped files load, malformed ones are refused with a clear message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

HWLAB = Path(__file__).resolve().parents[2] / "hw-lab"
sys.path.insert(0, str(HWLAB))

from hwlab.inventory import InventoryError, load, parse  # noqa: E402

PF = {
    "pci": "0000:41:00.0", "vendor": "8086", "device": "10c9", "driver": "igb",
    "vf_device": "10ca", "vf_driver": "igbvf", "max_vfs": 2,
}


def _parse(**top):
    data = {"name": "t", "pfs": [dict(PF)], **top}
    return parse(data, Path("t.yaml"))


def test_virtual_inventory_names_two_igb_pfs_on_two_nodes():
    inv = load(HWLAB / "inventories" / "virtual.yaml")
    assert inv.kind == "virtual"
    assert [(p.pci, p.vendor, p.device, p.driver, p.vf_driver, p.numa_node) for p in inv.pfs] == [
        ("0000:41:00.0", "8086", "10c9", "igb", "igbvf", 0),
        ("0000:81:00.0", "8086", "10c9", "igb", "igbvf", 1),
    ]
    assert all(p.vf_device == "10ca" and "link_state" in p.vf_unsupported for p in inv.pfs)
    assert [n.id for n in inv.netdevsim] == [10]


@pytest.mark.parametrize(
    ("name", "pf_id", "vf_id", "driver", "vf_driver"),
    [
        ("e810", "8086:1592", "8086:1889", "ice", "iavf"),
        ("x710", "8086:1572", "8086:154c", "i40e", "iavf"),
        ("connectx5", "15b3:1017", "15b3:1018", "mlx5_core", "mlx5_core"),
        ("connectx6", "15b3:101b", "15b3:101c", "mlx5_core", "mlx5_core"),
    ],
)
def test_example_inventories(name, pf_id, vf_id, driver, vf_driver):
    inv = load(HWLAB / "inventories" / f"{name}.example.yaml")
    assert inv.kind == "hardware"
    for pf in inv.pfs:
        assert f"{pf.vendor}:{pf.device}" == pf_id
        assert f"{pf.vf_vendor}:{pf.vf_device}" == vf_id
        assert (pf.driver, pf.vf_driver) == (driver, vf_driver)


def test_ids_are_normalised():
    inv = parse({"pfs": [dict(PF, vendor="0x8086", device="10C9", pci="0000:41:00.0")]},
                Path("x.yaml"))
    assert (inv.pfs[0].vendor, inv.pfs[0].device, inv.pfs[0].vf_vendor) == ("8086", "10c9", "8086")
    assert inv.name == "x" and inv.kind == "hardware"
    assert inv.pf("0000:41:00.0") is inv.pfs[0]
    assert inv.pf("0000:42:00.0") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pci": "41:00.0"}, "not a full address"),
        ({"vendor": "80861"}, "not a 4-digit hex"),
        ({"driver": ""}, "'driver' is required"),
        ({"max_vfs": 0}, "max_vfs"),
        ({"max_vfs": True}, "max_vfs"),
        ({"total_vfs": 1, "max_vfs": 2}, "exceeds total_vfs"),
        ({"vf_settings": ["mac", "colour"]}, "unknown VF setting"),
        ({"vf_settings": ["mac"], "vf_unsupported": ["mac"]}, "both supported and unsupported"),
        ({"peer": "0000:41:00.0"}, "must be another PF"),
        ({"speed": 10}, "unknown key"),
    ],
)
def test_malformed_pf_is_refused(change, message):
    with pytest.raises(InventoryError, match=message):
        parse({"pfs": [dict(PF, **change)]}, Path("bad.yaml"))


def test_missing_required_key_is_refused():
    pf = dict(PF)
    del pf["vf_device"]
    with pytest.raises(InventoryError, match="'vf_device' is required"):
        parse({"pfs": [pf]}, Path("bad.yaml"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pfs": []}, "non-empty list"),
        ({"pfs": [PF, PF]}, "listed twice"),
        ({"pfs": [PF], "kind": "cloud"}, "kind"),
        ({"pfs": [PF], "netdevsim": [{"id": 1}, {"id": 1}]}, "unique"),
        ({"pfs": [PF], "extra": 1}, "unknown key"),
        ([PF], "expected a mapping"),
    ],
)
def test_malformed_inventory_is_refused(data, message):
    with pytest.raises(InventoryError, match=message):
        parse(data, Path("bad.yaml"))


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(InventoryError, match="cannot read inventory"):
        load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pfs: [unclosed")
    with pytest.raises(InventoryError, match="not valid YAML"):
        load(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"name": "g", "pfs": [PF]}))
    assert load(good).pfs[0].pci == "0000:41:00.0"
