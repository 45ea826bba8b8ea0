"""A tar of the Python runtime for the guest, unpacked into guest RAM at boot.

The guest sees the host's root over 9p, where every stat/open costs ~3 ms under TCG: importing
pytest and pyroute2 from there takes about a minute. The guest instead unpacks this tar (one
sequential read) into a tmpfs, bind-mounts the stdlib and libpython over their own paths and puts
the listed site-packages first on PYTHONPATH. Anything not in the tar is still found over 9p.

Layout: `mounts.txt` ("<member dir> <absolute target>" per line), `stdlib/`, `lib/`, `site/`.
"""

from __future__ import annotations

import sysconfig
import tarfile
from pathlib import Path

# Imported by the suite (pytest, pyroute2, pyudev, yaml; grpc and protobuf for the device
# plugin; tabulate for the CLI) and what they import in turn.
SITE_PACKAGES = (
    "_pytest", "pytest", "py.py", "pluggy", "iniconfig", "packaging", "pygments",
    "pyroute2", "psutil", "pyudev", "yaml", "_yaml", "grpc", "google", "tabulate",
)
STDLIB_SKIP = frozenset({
    "site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
    "pydoc_data", "distutils",
})


def _skip_opt_pyc(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if ".opt-" in info.name else info


def build(out: Path) -> Path:
    """Write the snapshot tar of the running interpreter and its (venv) site-packages to `out`."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site_packages = Path(sysconfig.get_paths()["purelib"])
    mounts = [f"stdlib {stdlib}"]
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for entry in sorted(stdlib.iterdir()):
            if entry.name in STDLIB_SKIP or entry.name.startswith("config-"):
                continue
            tar.add(entry, arcname=f"stdlib/{entry.name}", filter=_skip_opt_pyc)
        libdir, libname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
        if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and libname:
            lib = Path(libdir) / libname
            tar.add(lib, arcname=f"lib/{libname}")
            mounts.append(f"lib/{libname} {lib}")
        for name in SITE_PACKAGES:
            path = site_packages / name
            if path.exists():
                tar.add(path, arcname=f"site/{name}", filter=_skip_opt_pyc)
        listing = tmp.with_name("mounts.txt")
        listing.write_text("\n".join(mounts) + "\n")
        tar.add(listing, arcname="mounts.txt")
        listing.unlink()
    tmp.replace(out)
    return out
