"""Files: replacing one so that readers see the old content or the new, never a mix; noticing
when one changed."""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


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


def make_private_dir(path: str | os.PathLike[str]) -> None:
    """``path`` and its missing parents, created 0700 whatever the umask (state only root may
    read). Existing directories are left as they are (see :func:`restrict`)."""
    path = Path(path)
    missing = []
    for p in (path, *path.parents):
        if p.is_dir():
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            continue
        os.chmod(p, 0o700)


def restrict(path: str | os.PathLike[str], mode: int) -> None:
    """Drop every permission bit of ``path`` outside ``mode`` (no symlink is followed); as
    root, also give it back to root. Costs one lstat when nothing needs changing."""
    st = os.lstat(path)
    current = stat.S_IMODE(st.st_mode)
    foreign = os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0)
    if stat.S_ISLNK(st.st_mode) or not (current & ~mode or foreign):
        return
    if foreign:
        os.lchown(path, 0, 0)
    os.chmod(path, current & mode)
    log.info("restricted %s to root (was mode %o, uid %d)", path, current, st.st_uid)


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


class WatchedFile(Generic[T]):
    """A file loaded again whenever its signature changes (polled by the caller's loop).

    A file that disappears or fails to load leaves the last good value in force; a failure
    goes to ``on_error`` (the caller logs and records it as it sees fit). ``errors`` are the
    loader's expected refusals; any other exception it raises (a bug, or a decoder limit it
    did not translate) is logged with its traceback and reported the same way, so that no
    file content can end the caller's loop.
    """

    def __init__(self, path: str | os.PathLike[str] | None, load: Callable[[Path], T],
                 errors: tuple[type[Exception], ...],
                 on_error: Callable[[Exception], None]) -> None:
        self.path = None if path is None else Path(path)
        self.value: T | None = None
        self._load = load
        self._errors = errors
        self._on_error = on_error
        self._signature: Signature | None = None

    def check(self) -> bool:
        """Load the file if it changed; True when a new value was loaded."""
        current = signature(self.path)
        if current == self._signature:
            return False
        self._signature = current
        if current is None:
            if self.value is not None:
                log.warning("%s is missing; keeping what it said last", self.path)
            return False
        assert self.path is not None
        try:
            self.value = self._load(self.path)
        except self._errors as exc:
            self._report(exc)
            return False
        except Exception as exc:  # whatever the content, the last good value stays
            log.exception("loading %s failed unexpectedly", self.path)
            self._report(exc)
            return False
        return True

    def _report(self, exc: Exception) -> None:
        try:
            self._on_error(exc)
        except Exception:  # a failing reporter must not undo "keep the last good value"
            log.exception("reporting the failure to load %s failed", self.path)
