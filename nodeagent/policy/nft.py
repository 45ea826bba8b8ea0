"""Applying nft scripts inside a network namespace, in-process through libnftables.

libnftables (Debian package libnftables1, pulled in by ``nftables``) opens its netlink socket
when its context is made, so the context is made, used and freed on a namespace thread
(:func:`nodeagent.netns.run`) that has entered the pod's namespace: no ``ip netns exec``, no
fork. A script is one ``nft -f`` buffer, which the kernel applies as one transaction: all of it
or nothing. A thin ctypes wrapper of five calls; the PyPI ``nftables`` copies wrap the same
library the same way and are no better kept than this.
"""

from __future__ import annotations

import ctypes
import threading

from nodeagent import netns as netns_mod
from nodeagent.policy.compile import FAMILY, TABLE

LIBRARY = "libnftables.so.1"

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


class NftError(Exception):
    """libnftables is missing, or the kernel refused a script (the message is nft's)."""


def _library() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL(LIBRARY)
            except OSError as exc:
                raise NftError(f"{LIBRARY} cannot be loaded ({exc}); install the Debian"
                               " package nftables (libnftables1)") from None
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            _lib = lib
        return _lib


def available() -> bool:
    """Whether libnftables can be loaded on this machine."""
    try:
        _library()
    except NftError:
        return False
    return True


def _run(script: str) -> str:
    """Run ``script`` in the calling thread's namespace; its output."""
    lib = _library()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftError("libnftables could not make a context (netlink socket)")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        if rc != 0:
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            raise NftError(error.strip() or f"nft failed ({rc})")
        return (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
    finally:
        lib.nft_ctx_free(ctx)


def apply(netns: str | None, script: str) -> None:
    """Run ``script`` (one atomic transaction) in network namespace ``netns`` (a name under
    /run/netns or a path; None: the agent's own). Raises NftError, or OSError when the
    namespace cannot be entered."""
    netns_mod.run(netns, lambda: _run(script))


def clear(netns: str | None) -> None:
    """Remove the agent's table from ``netns`` (nothing happens if there is none)."""
    apply(netns, f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")


def show(netns: str | None) -> str | None:
    """The agent's table in ``netns`` as nft lists it, None when there is none."""
    def listing() -> str | None:
        try:
            return _run(f"list table {FAMILY} {TABLE}")
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise
    return netns_mod.run(netns, listing)
