"""Applying nft scripts in a namespace through libnftables: atomic, and the kept per-namespace
contexts follow the namespace (never the path) and are released."""

from __future__ import annotations

import os

import pytest
from pyroute2 import netns as pr_netns

from nodeagent.policy import nft
from tests.host.conftest import unique

pytestmark = pytest.mark.skipif(not nft.available(), reason="libnftables.so.1 is not installed")

TABLE = ("add table inet nodeagent\ndelete table inet nodeagent\n"
         "table inet nodeagent {\n  chain c {\n    drop\n  }\n}\n")


def test_apply_show_clear_in_the_namespace_only(test_netns: str) -> None:
    nft.apply(test_netns, TABLE)
    try:
        assert "chain c" in (nft.show(test_netns) or "")
        assert nft.show(None) is None or "chain c" not in (nft.show(None) or "")
    finally:
        nft.clear(test_netns)
    assert nft.show(test_netns) is None
    nft.clear(test_netns)  # no table: still fine


def test_an_error_names_nfts_complaint_and_changes_nothing(test_netns: str) -> None:
    nft.apply(test_netns, TABLE)
    try:
        with pytest.raises(nft.NftError, match=r"syntax error|Could not process"):
            nft.apply(test_netns, "add table inet nodeagent\ndelete table inet nodeagent\n"
                                  "add chain inet nodeagent d\nadd rule inet nodeagent d frob\n")
        assert "chain c" in (nft.show(test_netns) or "")
        nft.apply(test_netns, TABLE)  # the kept context still works after an error
    finally:
        nft.clear(test_netns)


def test_a_namespace_recreated_under_the_same_name_gets_a_new_context() -> None:
    name = unique("nf")
    pr_netns.create(name)
    try:
        nft.apply(name, TABLE)
        pr_netns.remove(name)
        pr_netns.create(name)
        # The old context's socket still lives in the old namespace: it must not be used.
        assert nft.show(name) is None
    finally:
        nft.release(name)
        pr_netns.remove(name)


def test_release_and_prune_drop_kept_contexts(test_netns: str) -> None:
    before = nft.kept()
    nft.apply(test_netns, "add table inet nodeagent\n")
    assert nft.kept() == before + 1
    nft.release(test_netns)
    assert nft.kept() == before
    other = unique("nf")
    pr_netns.create(other)
    nft.apply(other, "add table inet nodeagent\n")
    pr_netns.remove(other)
    assert not os.path.exists(f"/run/netns/{other}")
    assert nft.prune() >= 1
    assert nft.kept() == before
