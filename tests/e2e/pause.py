"""A pause image made here, with no registry: a static pause binary (pause.c) as the one layer
of an OCI image layout, written as the tarball ``ctr images import`` reads."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "pause.c"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def build_binary(out: Path) -> Path:
    subprocess.run(["gcc", "-std=c11", "-O2", "-Wall", "-Werror", "-static", "-s", "-o",
                    str(out), str(SOURCE)], check=True)
    return out


def _tar(members: dict[str, tuple[bytes, int]]) -> bytes:
    """An uncompressed tar of ``{name: (content, mode)}``, reproducible (fixed times)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (content, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), mode, 0
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[f"blobs/sha256/{digest[7:]}"] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def image_archive(binary: Path, name: str, out: Path) -> Path:
    """The OCI image layout tarball of an image ``name`` (``host/repo:tag``) running
    ``/pause``."""
    layer = _tar({"pause": (binary.read_bytes(), 0o755)})
    blobs: dict[str, bytes] = {}
    layer_desc = _blob(blobs, layer, "application/vnd.oci.image.layer.v1.tar")
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": ["/pause"], "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}
    config_desc = _blob(blobs, json.dumps(config).encode(),
                        "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc,
                "layers": [layer_desc]}
    manifest_desc = _blob(blobs, json.dumps(manifest).encode(), OCI_MANIFEST)
    manifest_desc["annotations"] = {"io.containerd.image.name": name,
                                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}
    files = {"oci-layout": (b'{"imageLayoutVersion": "1.0.0"}', 0o644),
             "index.json": (json.dumps(index).encode(), 0o644),
             **{path: (data, 0o644) for path, data in blobs.items()}}
    out.write_bytes(_tar(files))
    return out
