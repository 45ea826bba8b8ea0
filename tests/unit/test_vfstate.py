"""VF attachment records that cannot be read: a CNI error naming the file, never a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nodeagent.cnitypes.errors import IO_FAILURE
from nodeagent.vfstate import VfAttachment, VfState, VfStateError


def record() -> VfAttachment:
    return VfAttachment(container_id="c1", ifname="net1", netns="/run/netns/x",
                        pci="0000:00:01.1", pf="pf0", vf_index=1, dpdk=False,
                        original_name="vf1", original_mtu=1500, original_mac=None, pf_side={})


@pytest.mark.parametrize("content", [
    b"{", b"[1]", b'"x"', b"\xff\xfe", b'{"container_id": "c1"}', b'{"unknown": 1}',
    b"[" * 100_000,
    b'{"container_id": "c1", "ifname": "net1", "netns": "/x", "pci": 5, "pf": "p",'
    b' "vf_index": 1, "dpdk": false, "original_name": null, "original_mtu": null,'
    b' "original_mac": null, "pf_side": {}}',
])
def test_a_corrupt_record_is_a_cni_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    vfs = VfState(tmp_path)
    vfs.save(record())
    path = vfs.dir / "c1-net1.json"
    path.write_bytes(content)
    with pytest.raises(VfStateError) as err:
        vfs.load("c1", "net1")
    assert err.value.code == IO_FAILURE and str(path) in err.value.msg


def test_an_unreadable_record_is_a_cni_error(tmp_path: Path) -> None:
    vfs = VfState(tmp_path)
    vfs.save(record())
    path = vfs.dir / "c1-net1.json"
    path.unlink()
    path.mkdir()  # EISDIR: as unreadable as it gets for root
    with pytest.raises(VfStateError) as err:
        vfs.load("c1", "net1")
    assert str(path) in err.value.msg


def test_listing_skips_and_reports_a_corrupt_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vfs = VfState(tmp_path)
    vfs.save(record())
    (vfs.dir / "bad-net1.json").write_bytes(b"{")
    with caplog.at_level(logging.WARNING):
        assert [a.container_id for a in vfs.all()] == ["c1"]
    assert "bad-net1.json" in caplog.text


def test_a_record_round_trips(tmp_path: Path) -> None:
    vfs = VfState(tmp_path)
    vfs.save(record())
    assert vfs.load("c1", "net1") == record()
    assert vfs.load("c2", "net1") is None
