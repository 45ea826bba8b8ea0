"""Namespace work runs on dedicated threads; one that cannot switch back is discarded."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from nodeagent import netns
from tests.waiting import wait_until

T = TypeVar("T")
CAP_SYS_ADMIN = 21
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_sys_admin() -> None:
    """Take CAP_SYS_ADMIN from the calling thread only (capabilities are per thread): from
    then on the kernel refuses it any setns(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    assert libc.capget(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    data[0].effective &= ~(1 << CAP_SYS_ADMIN)
    assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())


def ns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_work_runs_in_the_namespace_and_the_caller_never_moves(test_netns: str) -> None:
    pod = os.stat(f"/run/netns/{test_netns}").st_ino
    home = ns_inode()
    assert netns.run(test_netns, ns_inode) == pod
    assert netns.run(None, ns_inode) == home
    assert ns_inode() == home
    with ThreadPoolExecutor(8) as pool:  # concurrent callers each get their namespace
        seen = list(pool.map(lambda i: netns.run(test_netns if i % 2 else None, ns_inode),
                             range(64)))
    assert seen == [pod if i % 2 else home for i in range(64)]


def test_errors_are_the_callers(test_netns: str) -> None:
    def fail() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        netns.run(test_netns, fail)
    with pytest.raises(FileNotFoundError):
        netns.run(test_netns + "-missing", ns_inode)


def test_a_thread_that_cannot_switch_back_is_discarded(
    test_netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netns, "_stranded", 0)  # restored after the test
    reports: list[str] = []
    monkeypatch.setattr(netns, "_listeners", [reports.append])
    pod = os.stat(f"/run/netns/{test_netns}").st_ino

    def strand_me() -> tuple[int, int]:
        drop_sys_admin()
        return threading.get_native_id(), ns_inode()

    native_id, seen = netns.run(test_netns, strand_me)
    assert seen == pod  # the work itself was done, in the namespace
    assert not netns.healthy() and netns.stranded() == 1
    assert reports and "discarded" in reports[0]
    assert wait_until(lambda: not os.path.exists(f"/proc/self/task/{native_id}"), 5), \
        "the stranded thread is still alive"
    # The stranded thread would fail every later setns (no CAP_SYS_ADMIN): none is given to it.
    for _ in range(3 * netns.MAX_IDLE):
        assert netns.run(test_netns, ns_inode) == pod


def on_serving_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a new thread that allowed namespace work on itself (as a CNI worker)."""
    outcome: list[Any] = []

    def serve() -> None:
        netns.allow_on_this_thread()
        try:
            outcome.append((True, fn()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def test_work_on_the_callers_thread_comes_back_home(test_netns: str) -> None:
    pod = os.stat(f"/run/netns/{test_netns}").st_ino

    def visits() -> list[Any]:
        home, caller = ns_inode(), threading.get_native_id()
        seen: list[Any] = [netns.run_on_this_thread(
            test_netns, lambda: (threading.get_native_id() == caller, ns_inode() == pod))]
        seen.append(ns_inode() == home)

        def fail() -> None:
            raise ValueError("inside")

        with pytest.raises(ValueError, match="inside"):
            netns.run_on_this_thread(test_netns, fail)
        seen.append(ns_inode() == home)
        with pytest.raises(FileNotFoundError):
            netns.run_on_this_thread(test_netns + "-missing", ns_inode)
        return seen

    assert on_serving_thread(visits) == [(True, True), True, True]


def test_threads_that_did_not_allow_it_never_enter_themselves(test_netns: str) -> None:
    pod = os.stat(f"/run/netns/{test_netns}").st_ino
    caller = threading.get_native_id()
    native_id, seen = netns.run_on_this_thread(
        test_netns, lambda: (threading.get_native_id(), ns_inode()))
    assert seen == pod and native_id != caller


def test_a_caller_that_cannot_switch_back_is_told_to_end(
    test_netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netns, "_stranded", 0)  # restored after the test
    reports: list[str] = []
    monkeypatch.setattr(netns, "_listeners", [reports.append])
    with pytest.raises(netns.Stranded) as stranded:
        on_serving_thread(lambda: netns.run_on_this_thread(test_netns, drop_sys_admin))
    assert not isinstance(stranded.value, Exception)  # `except Exception` lets it through
    assert not netns.healthy() and netns.stranded() == 1
    assert reports and "discarded" in reports[0]
