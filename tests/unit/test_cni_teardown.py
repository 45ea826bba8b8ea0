"""DEL's deferred link deletion (cni/teardown.py) through the dispatcher, over the recording
netlink double: what a DEL leaves between its reply and the deletion, how ADD, CHECK, DEL and
GC settle it, and the journal a restarted agent replays. tests/host checks the same against
the kernel (tests/host/test_cni_teardown.py)."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni.context import Context
from cni.dispatch import handle
from cni.teardown import TOMBSTONE_PREFIX, Teardown
from nodeagent import netns
from nodeagent.ipam.allocator import Ipam
from nodeagent.vfstate import VfState
from tests.fake_netlink import HOST, FakeKernel, FakeLink


@dataclass
class World:
    kernel: FakeKernel
    ctx: Context
    teardown: Teardown
    pod: str
    tmp: Path

    def cni(self, command: str, conf: dict[str, Any], container: str = "c1",
            ifname: str = "net1") -> tuple[int, dict[str, Any]]:
        environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": ifname,
                   "CNI_NETNS": self.pod, "CNI_PATH": "/nonexistent"}
        out = handle(self.ctx, environ, json.dumps(conf).encode(), conf.get("type", ""))
        return out.exit_status, json.loads(out.stdout) if out.stdout.strip() else {}

    def links(self) -> dict[str, Any]:
        return self.kernel.in_netns(self.pod)

    def journal(self) -> list[Path]:
        directory = self.tmp / "teardown"
        return sorted(directory.iterdir()) if directory.exists() else []

    def reserved(self) -> int:
        return sum(len(json.loads(p.read_text())["reservations"])
                   for p in (self.tmp / "ipam").rglob("reservations.json"))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    kernel = FakeKernel()
    monkeypatch.setattr(netns, "is_netns", kernel.is_netns)
    kernel.add_link("eth0", mac="52:54:00:00:00:01", up=True)
    pod = tmp_path / "pod-netns"
    pod.write_text("")
    # no workers: a deleted link stays in flight until something settles it
    teardown = Teardown(tmp_path / "teardown", workers=0)
    ctx = Context(open_netlink=kernel.open, vfs=VfState(tmp_path / "state"),
                  ipam=Ipam(tmp_path / "ipam"), teardown=teardown)
    teardown.start(kernel.open)
    try:
        yield World(kernel, ctx, teardown, str(pod), tmp_path)
    finally:
        teardown.stop()
        ctx.close()
    assert kernel.open_clients == 0, "every netlink client opened is closed again"


def conf(kind: str = "macvlan") -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "net-a", "type": kind, "master": "eth0",
            "ipam": {"type": "nodeagent-ipam", "range": "10.9.0.0/29"}}


def test_del_replies_with_the_link_renamed_bare_and_journaled(world: World) -> None:
    assert world.cni("ADD", conf())[0] == 0
    index = world.links()["net1"].index

    assert world.cni("DEL", conf()) == (0, {})

    assert world.reserved() == 0, "the addresses are released before the reply"
    (name,) = world.links()
    assert name.startswith(TOMBSTONE_PREFIX) and world.links()[name].index == index
    assert world.kernel.addresses_of(world.pod) == [], "the released address answers nowhere"
    (entry,) = world.journal()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert json.loads(entry.read_text())["index"] == index
    assert world.teardown.pending() == 1


def test_add_after_del_finishes_the_deletion_first(world: World) -> None:
    assert world.cni("ADD", conf())[0] == 0
    old = world.links()["net1"].index
    assert world.cni("DEL", conf()) == (0, {})

    status, result = world.cni("ADD", conf(), container="c2")

    assert status == 0, result
    assert [link.index for link in world.links().values()] != [old]
    assert list(world.links()) == ["net1"], "the old link is gone, not just renamed"
    assert world.journal() == [] and world.teardown.pending() == 0


def test_check_after_del_sees_no_link(world: World) -> None:
    status, result = world.cni("ADD", conf())
    assert status == 0
    assert world.cni("DEL", conf()) == (0, {})

    status, error = world.cni("CHECK", {**conf(), "prevResult": result})

    assert status == 1 and "net1 does not exist" in error["msg"], error
    assert world.links() == {} and world.journal() == []


def test_a_kernel_that_renames_no_live_link_keeps_the_name_until_settled(world: World) -> None:
    """Before Linux 6.2 an up link cannot be renamed (EBUSY): it keeps its name, so a second
    DEL and an ADD must settle it rather than find it."""
    assert world.cni("ADD", conf())[0] == 0
    world.kernel.fail("link_set", errno.EBUSY, when=lambda r: r.args.get("name") is not None,
                      times=2)
    assert world.cni("DEL", conf()) == (0, {})
    assert list(world.links()) == ["net1"] and world.kernel.addresses_of(world.pod) == []

    assert world.cni("DEL", conf()) == (0, {}), "a repeated DEL"
    assert world.links() == {}
    assert world.cni("ADD", conf())[0] == 0
    assert world.cni("DEL", conf()) == (0, {})
    status, result = world.cni("ADD", conf(), container="c3")
    assert status == 0, result


def test_gc_settles_every_deletion_in_flight(world: World) -> None:
    for ifname in ("net1", "net2"):
        assert world.cni("ADD", conf(), ifname=ifname)[0] == 0
        assert world.cni("DEL", conf(), ifname=ifname)[0] == 0
    assert world.teardown.pending() == 2

    gc = {**conf(), "cni.dev/valid-attachments": []}
    assert world.cni("GC", gc) == (0, {})

    assert world.links() == {} and world.journal() == []


def die(world: World) -> None:
    """The agent dies between DEL's reply and the deletion: its sockets close, its memory is
    gone, only the journal remains."""
    for entry in world.teardown._inflight.values():
        entry.pod.close()
    world.teardown._inflight.clear()


def test_a_restarted_agent_replays_the_journal(world: World) -> None:
    assert world.cni("ADD", conf())[0] == 0
    assert world.cni("DEL", conf())[0] == 0
    (tombstone,) = world.links()
    die(world)

    assert Teardown(world.tmp / "teardown").replay(world.kernel.open) == 1

    assert world.links() == {} and world.journal() == []
    assert tombstone not in world.links()


def test_replay_leaves_another_namespace_at_the_same_path_alone(world: World) -> None:
    assert world.cni("ADD", conf())[0] == 0
    assert world.cni("DEL", conf())[0] == 0
    die(world)
    newer = world.tmp / "newer"
    newer.write_text("")  # another namespace (another inode) ...
    world.kernel.delete_netns(world.pod)  # ... once the runtime removed the pod's
    os.rename(newer, world.pod)  # ... at the same path, with a link of the same index
    index = json.loads(world.journal()[0].read_text())["index"]
    world.kernel.links[index] = FakeLink(index, "net1", netns=world.pod, kind="macvlan")

    assert Teardown(world.tmp / "teardown").replay(world.kernel.open) == 0

    assert "net1" in world.links() and world.journal() == []


def test_workers_delete_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel()
    monkeypatch.setattr(netns, "is_netns", kernel.is_netns)
    kernel.add_link("eth0", up=True)
    pod = tmp_path / "pod"
    pod.write_text("")
    deleted = threading.Event()
    real_record = kernel.record

    def record(where: str, op: str, args: dict[str, Any]) -> None:
        real_record(where, op, args)
        if op == "link_delete":
            deleted.set()

    kernel.record = record  # type: ignore[method-assign]
    teardown = Teardown(tmp_path / "teardown", workers=1)
    teardown.start(kernel.open)
    ctx = Context(open_netlink=kernel.open, ipam=Ipam(tmp_path / "ipam"),
                  vfs=VfState(tmp_path / "state"), teardown=teardown)
    w = World(kernel, ctx, teardown, str(pod), tmp_path)
    try:
        assert w.cni("ADD", conf())[0] == 0
        assert w.cni("DEL", conf())[0] == 0
        assert deleted.wait(5), "a worker deletes the link without anyone settling it"
        teardown.settle(str(pod), "net1")
        assert kernel.in_netns(str(pod)) == {} and w.journal() == []
    finally:
        teardown.stop()
        ctx.close()
    assert kernel.open_clients == 0
    assert HOST not in {link.netns for link in kernel.links.values() if link.kind == "macvlan"}
