"""The status board's listeners as CNI requests see them: never waited for."""

from __future__ import annotations

import threading
import time
from typing import Any

from nodeagent.status import StatusBoard
from tests.waiting import wait_until


def test_an_allocation_never_waits_for_a_slow_listener() -> None:
    board = StatusBoard()
    release = threading.Event()
    seen: list[dict[str, Any]] = []

    def slow(snapshot: dict[str, Any]) -> None:
        release.wait(10)
        seen.append(snapshot)

    board.subscribe(slow)
    started = time.monotonic()
    board.set_allocation("c1/net1", {"network": "blue"})
    assert time.monotonic() - started < 5  # the listener is blocked for 10 s
    release.set()
    assert wait_until(lambda: bool(seen), 5)
    assert seen[-1]["allocations"] == {"c1/net1": {"network": "blue"}}


def test_a_burst_of_allocations_reaches_listeners_in_few_snapshots() -> None:
    board = StatusBoard()
    seen: list[dict[str, Any]] = []
    board.subscribe(seen.append)
    for i in range(200):
        board.set_allocation(f"c{i}/net1", {"network": "blue"})
    assert wait_until(lambda: bool(seen) and len(seen[-1]["allocations"]) == 200, 5)
    assert len(seen) < 20


def test_errors_reach_listeners_before_the_call_returns() -> None:
    board = StatusBoard()
    seen: list[dict[str, Any]] = []
    board.subscribe(seen.append)
    board.error("provision", "EIO")
    assert [e["message"] for e in seen[-1]["recentErrors"]] == ["EIO"]
