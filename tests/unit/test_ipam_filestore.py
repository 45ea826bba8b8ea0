"""Node-local file store: processes racing on one pool, SIGKILL mid-allocation, legacy state."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

from nodeagent.cnitypes.request import Attachment
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.configtypes import IPAMConfig
from nodeagent.ipam.errors import IO_FAILURE, TRY_AGAIN_LATER, IpamError
from nodeagent.ipam.filestore import LOCK_FILE, STATE_FILE, FileStore
from tests.waiting import wait_until

SPAWN = multiprocessing.get_context("spawn")  # no inherited threads or sockets


def race_config() -> IPAMConfig:
    return parse_config(
        {
            "name": "race",
            "ipam": {
                "range": "10.20.0.0/16",
                "ipRanges": [{"range": "fd20::/112"}],
                "network_name": "race",
            },
        }
    )


def allocate_many(state_dir: str, worker: int, count: int, start_at: float) -> list[str]:
    ipam = Ipam(state_dir)
    config = race_config()
    while time.time() < start_at:
        time.sleep(0.001)
    return [
        ";".join(
            str(ip.address)
            for ip in ipam.allocate(config, Attachment(f"w{worker}-{i}", "eth0")).ips
        )
        for i in range(count)
    ]


def test_four_processes_allocate_200_each_all_unique(tmp_path: Path) -> None:
    start_at = time.time() + 1.0
    with SPAWN.Pool(4) as pool:
        results = pool.starmap(allocate_many, [(str(tmp_path), w, 200, start_at) for w in range(4)])
    pairs = [p for r in results for p in r]
    v4 = [p.split(";")[0] for p in pairs]
    v6 = [p.split(";")[1] for p in pairs]
    assert len(pairs) == 800
    assert len(set(v4)) == 800 and len(set(v6)) == 800
    store = FileStore(tmp_path, "race")
    assert len(store.reservations()) == 1600
    # lowest-first under the lock: exactly the first 800 host addresses of each pool
    assert sorted(v4) == sorted(f"10.20.{i // 256}.{i % 256}/16" for i in range(1, 801))


def crash_worker(state_dir: str, worker: int, log_path: str) -> None:
    """Allocate until killed, logging each attachment before and after."""
    ipam = Ipam(state_dir)
    config = race_config()
    with open(log_path, "a", buffering=1) as log:
        for i in range(100_000):
            cid = f"k{worker}-{i}"
            log.write(f"start {cid}\n")
            result = ipam.allocate(config, Attachment(cid, "eth0"))
            log.write(f"done {cid} {result.ips[0].address.ip} {result.ips[1].address.ip}\n")
            if i % 5 == 4:  # some churn, so releases are killed mid-way too
                log.write(f"releasing k{worker}-{i - 2}\n")
                ipam.release(config, Attachment(f"k{worker}-{i - 2}", "eth0"))


def test_sigkill_mid_allocation_leaves_consistent_state(tmp_path: Path) -> None:
    state, logs = tmp_path / "state", tmp_path / "logs"
    logs.mkdir()
    rand = random.Random(7)
    worker = 0
    for _ in range(8):  # rounds of three racing children, killed at random moments
        procs = []
        for _ in range(3):
            proc = SPAWN.Process(
                target=crash_worker, args=(str(state), worker, str(logs / f"{worker}.log"))
            )
            proc.start()
            procs.append(proc)
            worker += 1
        # kill only once every child is allocating (start-up is slow on a loaded machine)
        logs_of = [logs / f"{n}.log" for n in range(worker - 3, worker)]
        wait_until(lambda logs_of=logs_of: all(
            p.exists() and p.read_text().count("done ") >= 3 for p in logs_of), timeout=60)
        time.sleep(rand.random() * 0.3)
        for proc in procs:
            time.sleep(rand.random() * 0.02)
            os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.join()
    raw = json.loads((state / "race" / STATE_FILE).read_text())["reservations"]
    keys = [(r.get("scope", ""), r["ip"]) for r in raw]
    assert len(keys) == len(set(keys)), "an address is recorded twice"
    records = FileStore(state, "race").reservations()
    by_owner: dict[str, list[str]] = {}
    for r in records:
        by_owner.setdefault(r.owner.container_id, []).append(str(r.ip))
    assert all(len(v) == 2 for v in by_owner.values()), "an attachment holds a partial claim"
    started, done, released = set(), {}, set()
    for path in logs.iterdir():
        for line in path.read_text().splitlines():
            word, *rest = line.split()
            if word == "start" and rest:
                started.add(rest[0])
            elif word == "done" and len(rest) == 3:
                done[rest[0]] = sorted(rest[1:])
            elif word == "releasing" and rest:
                released.add(rest[0])  # gone, or (killed mid-release) still there
    assert len(done) > 50, "the children barely ran"
    for cid, addresses in done.items():  # every acknowledged allocation is durable
        if cid not in released:
            assert sorted(by_owner.get(cid, [])) == addresses, cid
    assert set(by_owner) <= started, "a record nobody asked for"
    in_flight = set(by_owner) - set(done)
    assert len(in_flight) <= worker  # at most one unacknowledged claim per killed child
    # the lock died with its holders: a new allocation goes through at once, and the next
    # process to take the lock removes what writers killed mid-write left behind
    ipam = Ipam(state)
    assert ipam.allocate(race_config(), Attachment("after", "eth0")).ips
    assert sorted(p.name for p in (state / "race").iterdir()) == [LOCK_FILE, STATE_FILE]


def test_lock_held_elsewhere_times_out_with_try_again(tmp_path: Path) -> None:
    store = FileStore(tmp_path, "n", lock_timeout=0.2)
    (tmp_path / "n").mkdir()
    fd = os.open(tmp_path / "n" / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        began = time.monotonic()
        with pytest.raises(IpamError) as info:
            store.reservations()
        assert info.value.code == TRY_AGAIN_LATER
        assert time.monotonic() - began < 2
    finally:
        os.close(fd)
    assert store.reservations() == []


def test_corrupt_state_is_an_io_error_not_a_reset(tmp_path: Path) -> None:
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / STATE_FILE).write_text('{"nonce": "x", "reservations": [{"ip": ')
    with pytest.raises(IpamError) as info:
        FileStore(tmp_path, "n").reservations()
    assert info.value.code == IO_FAILURE and STATE_FILE in info.value.msg


def test_leftover_temp_file_is_ignored_and_removed(tmp_path: Path) -> None:
    """What a process killed while writing leaves behind (nodeagent.fileio's temp name): the
    next process to take the lock ignores it and removes it."""
    ipam = Ipam(tmp_path)
    c = parse_config({"name": "n", "ipam": {"range": "10.0.0.0/24", "network_name": "n"}})
    ipam.allocate(c, Attachment("a", "eth0"))
    leftover = tmp_path / "n" / f".{STATE_FILE}.4242.1.tmp"
    leftover.write_text('{"half": ')
    assert [str(ip.address) for ip in Ipam(tmp_path).allocate(c, Attachment("b", "eth0")).ips] == [
        "10.0.0.2/24"
    ]
    assert not leftover.exists()


def test_host_local_files_are_imported(tmp_path: Path) -> None:
    net = tmp_path / "hl"
    net.mkdir()
    (net / "10.5.0.2").write_text("cont-a\r\neth0")
    (net / "10.5.0.3").write_text("cont-b")  # older host-local: container ID only
    (net / "last_reserved_ip.0").write_text("10.5.0.3")
    (net / "lock").write_text("")
    ipam = Ipam(tmp_path / "unused")
    c = parse_config(
        {
            "name": "hl",
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.5.0.0/24"}]],
                "dataDir": str(tmp_path),
            },
        }
    )
    assert [str(ip.address) for ip in ipam.allocate(c, Attachment("new", "eth0")).ips] == [
        "10.5.0.4/24"
    ]
    owners = {str(r.ip): r.owner.key for r in ipam.store(c).reservations()}
    assert owners["10.5.0.2"] == ("cont-a", "eth0") and owners["10.5.0.3"] == ("cont-b", "")
    assert [str(r.ip) for r in ipam.release(c, Attachment("cont-a", "eth0"))] == ["10.5.0.2"]
    assert (net / "10.5.0.2").exists()  # legacy files are left alone


def test_another_process_change_is_seen(tmp_path: Path) -> None:
    """The parse cache is keyed by the state file's nonce, not by timestamps."""
    c = parse_config({"name": "n", "ipam": {"range": "10.0.0.0/24", "network_name": "n"}})
    one, two = Ipam(tmp_path), Ipam(tmp_path)
    for i in range(20):
        who = one if i % 2 else two
        who.allocate(c, Attachment(f"x{i}", "eth0"))
        other = two if i % 2 else one
        other.release(c, Attachment(f"x{i}", "eth0"))
        assert one.store(c).reservations() == two.store(c).reservations() == []


def test_threads_committed_together_each_get_their_own_outcome(tmp_path: Path) -> None:
    """Concurrent claims and releases of one agent share file writes (group commit): each
    still succeeds or fails alone, and what a caller was told is what another process reads."""
    import threading

    ipam = Ipam(str(tmp_path))
    config = race_config()
    # dual-stack, the IPv6 address fixed: a second holder gets its IPv4 address, then fails
    fixed = parse_config({"name": "race", "runtimeConfig": {"ips": ["fd20::c8/112"]},
                          "ipam": {"range": "10.20.0.0/16", "ipRanges": [{"range": "fd20::/112"}],
                                   "network_name": "race"}})
    ipam.allocate(fixed, Attachment("holder", "eth0"))
    for i in range(20):
        ipam.allocate(config, Attachment(f"old{i}", "eth0"))
    start = threading.Barrier(62)
    told: dict[str, object] = {}

    def add(name: str, conf: IPAMConfig) -> None:
        start.wait()
        try:
            told[name] = str(ipam.allocate(conf, Attachment(name, "eth0")).ips[0].address)
        except IpamError as exc:
            told[name] = exc

    def release(name: str) -> None:
        start.wait()
        ipam.release(config, Attachment(name, "eth0"))
        told[name] = "released"

    threads = [threading.Thread(target=add, args=(f"new{i}", config)) for i in range(40)]
    threads.append(threading.Thread(target=add, args=("clash", fixed)))  # taken: fails alone
    threads += [threading.Thread(target=release, args=(f"old{i}",)) for i in range(20)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()

    assert isinstance(told.pop("clash"), IpamError)
    given = [v for k, v in told.items() if k.startswith("new")]
    assert len(set(given)) == 40
    on_disk = {r.owner.container_id: str(r.ip)
               for r in FileStore(tmp_path, "race").reservations() if r.ip.version == 4}
    assert on_disk == {"holder": "10.20.0.1",
                       **{k: str(v).split("/")[0] for k, v in told.items() if k.startswith("new")}}
