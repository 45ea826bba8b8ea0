"""What an SR-IOV attachment changed, kept on disk so DEL can undo it after any crash.

One JSON file per attachment (container ID + interface name), written before the first change
with write-temp, fsync, rename; and one lock file per VF, so two attachments never take the same
VF. The fallback plugin uses the same files and locks as the daemon.

Root only: directories 0700 and files 0600, set when created and made so again for existing
ones (:meth:`VfState.secure`, at agent start and on a state's first write). A record that
cannot be read or parsed is an error naming the file, never an exception from deep inside.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nodeagent.cnitypes.errors import IO_FAILURE, CniError
from nodeagent.fileio import make_private_dir, replace_file, restrict

log = logging.getLogger(__name__)


@dataclass
class VfAttachment:
    container_id: str
    ifname: str
    netns: str
    pci: str
    pf: str
    vf_index: int
    dpdk: bool
    #: The VF netdev as it was in the host namespace (None in DPDK mode).
    original_name: str | None
    original_mtu: int | None
    original_mac: str | None
    #: The PF-side settings before the attachment (nodeagent.model.VfConfig fields).
    pf_side: dict
    #: The CNI network (config "name"), so GC touches only its own network's attachments.
    network: str = ""
    #: The PF-side settings the attachment changes; DEL restores only these.
    changed: list[str] = field(default_factory=list)


#: Where CNI attachments keep what they must undo; NODEAGENT_STATE_DIR overrides it (the daemon,
#: the fallback and provisioning must agree).
DEFAULT_STATE_DIR = "/var/lib/nodeagent/cni"


class VfStateError(CniError):
    """An attachment record that cannot be read or parsed (a CNI I/O failure)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(IO_FAILURE, f"VF attachment record {path} is unreadable: {problem}",
                         "check the VF it names (if any) and remove the file; DEL then succeeds")
        self.path = path


class VfState:
    """Attachment records and VF locks under ``root`` (``<root>/sriov``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.dir = self.root / "sriov"
        self._secured = False

    @classmethod
    def default(cls) -> VfState:
        return cls(os.environ.get("NODEAGENT_STATE_DIR", DEFAULT_STATE_DIR))

    def secure(self) -> None:
        """Make existing state root-only: directories 0700, records and locks 0600."""
        for directory in (self.root, self.dir, self.dir / "locks"):
            try:
                restrict(directory, 0o700)
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if entry.is_file(follow_symlinks=False):
                            restrict(entry.path, 0o600)
            except FileNotFoundError:
                continue
        self._secured = True

    def _ensure(self, directory: Path) -> None:
        make_private_dir(directory)
        if not self._secured:
            self.secure()

    def _path(self, container_id: str, ifname: str) -> Path:
        return self.dir / f"{container_id}-{ifname}.json"

    def save(self, attachment: VfAttachment) -> None:
        self._ensure(self.dir)
        replace_file(self._path(attachment.container_id, attachment.ifname),
                     json.dumps(asdict(attachment)).encode(), mode=0o600)

    def load(self, container_id: str, ifname: str) -> VfAttachment | None:
        """The attachment's record, None if there is none. Raises VfStateError for a record
        that cannot be read or is not one (a CNI error: DEL reports it, never crashes)."""
        path = self._path(container_id, ifname)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise VfStateError(path, exc.strerror or str(exc)) from None
        return _parse(path, data)

    def remove(self, container_id: str, ifname: str) -> None:
        self._path(container_id, ifname).unlink(missing_ok=True)

    def all(self) -> list[VfAttachment]:
        """Every readable record; an unreadable one is logged (and skipped)."""
        found = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                found.append(_parse(path, path.read_bytes()))
            except FileNotFoundError:
                continue  # removed meanwhile
            except (OSError, VfStateError) as exc:
                log.warning("skipped a VF attachment record: %s", exc)
        return found

    def holder(self, pci: str) -> VfAttachment | None:
        """The attachment that holds a VF, if any."""
        return next((a for a in self.all() if a.pci == pci), None)

    @contextlib.contextmanager
    def lock(self, pci: str) -> Iterator[None]:
        locks = self.dir / "locks"
        self._ensure(locks)
        fd = os.open(locks / f"{pci}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _parse(path: Path, data: bytes) -> VfAttachment:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        attachment = VfAttachment(**doc)
    except (ValueError, TypeError, RecursionError) as exc:
        raise VfStateError(path, str(exc)[:200]) from None
    for name, kind in (("container_id", str), ("ifname", str), ("netns", str), ("pci", str),
                       ("pf", str), ("vf_index", int), ("dpdk", bool), ("pf_side", dict),
                       ("changed", list)):
        if not isinstance(getattr(attachment, name), kind):
            raise VfStateError(path, f"{name} is not a {kind.__name__}")
    return attachment
