"""Replacing a file so that readers see the old content or the new, never a mix."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def replace_file(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644,
                 durable: bool = True) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``.

    ``durable``: fsync the file and then its directory, so that after a crash the new content
    is there (state that DEL or IPAM rely on). Off for files rewritten on every change anyway.
    The temporary file is named per process and thread, and removed if anything fails.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)  # whatever the umask
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


Signature = tuple[int, int, int, int, int]


def signature(path: str | os.PathLike[str] | None) -> Signature | None:
    """What changes when a file is replaced or rewritten (device, inode, size, mtime, ctime), or
    None when it is missing. Follows symlinks, so a ConfigMap update (which swaps the
    ``..data`` link) shows as a change; a recreated socket shows as a new inode."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
