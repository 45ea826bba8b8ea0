"""Inputs as files: how a case's payloads are written, and the regression corpus.

A corpus file (``corpus/<target>/<name>.json``) is one case::

    {
     "broke": "what this input once broke (issue, symptom)",
     "case": {... the target's input, payloads encoded as below ...}
    }

A payload (stdin, a file's bytes, a frame) is written readably: ``{"json": value}`` (dumped
compactly), ``{"yaml": value}``, ``{"text": "..."}`` (UTF-8), ``{"b64": "..."}`` (any bytes),
``{"repeat": ["[", 100000]}``, or a list of payloads, concatenated.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import traceback
from pathlib import Path
from typing import Any

import yaml

CORPUS = Path(__file__).resolve().parent / "corpus"


class Broke(AssertionError):
    """A property failed. ``kind`` is short and stable (it tells findings apart), ``detail``
    says what happened to which input."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}\n{detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def payload(spec: Any) -> bytes:
    """The bytes a payload spec stands for."""
    if isinstance(spec, list):
        return b"".join(payload(part) for part in spec)
    if isinstance(spec, str):
        return spec.encode()
    (form, value), = spec.items()
    if form == "json":
        return json.dumps(value).encode()
    if form == "yaml":
        return yaml.safe_dump(value).encode()
    if form == "text":
        return value.encode("utf-8", "surrogatepass")
    if form == "b64":
        return base64.b64decode(value)
    if form == "repeat":
        text, times = value
        return text.encode() * times
    raise ValueError(f"unknown payload form {form!r}")


def as_payload(data: bytes) -> dict[str, Any]:
    """The most readable spec for ``data``."""
    for width in range(1, 9):
        unit, times = data[:width], len(data) // width
        if times >= 16 and unit * times == data:
            try:
                return {"repeat": [unit.decode(), times]}
            except UnicodeDecodeError:
                break
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode()}
    try:
        return {"json": json.loads(text)} if json.dumps(json.loads(text)) == text else {
            "text": text}
    except (ValueError, RecursionError):
        return {"text": text}


def escaped(exc: BaseException) -> str:
    """``KeyError('x') at cni/links.py:123 (require_link)``: what escaped and from where."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if re.search(r"/(cni|nodeagent|deviceplugin)/", f.filename)]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    text = f"{type(exc).__name__}({str(exc)[:200]!r})"
    if where is not None:
        path = re.sub(r"^.*/(?=(cni|nodeagent|deviceplugin|tests)/)", "", where.filename)
        text += f" at {path}:{where.lineno} ({where.name})"
    return text


def escaped_kind(exc: BaseException) -> str:
    """Like :func:`escaped` without the message and line: stable across inputs."""
    text = escaped(exc)
    return re.sub(r"\(.*?\) at ", " at ", re.sub(r":\d+ ", " ", text), count=1)


def show(case: Any, limit: int = 700) -> str:
    text = json.dumps(case, ensure_ascii=True)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def corpus_files(target: str) -> list[Path]:
    return sorted((CORPUS / target).glob("*.json"))


def load(path: Path) -> tuple[str, Any]:
    doc = json.loads(path.read_text())
    return doc["broke"], doc["case"]


def save(target: str, case: Any, broke: str, name: str | None = None) -> Path:
    """Keep a failing input as a regression case (an existing identical case is kept)."""
    text = json.dumps(case, sort_keys=True)
    name = name or "found-" + hashlib.sha256(f"{target}{text}".encode()).hexdigest()[:12]
    path = CORPUS / target / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        body = json.dumps({"broke": broke, "case": case}, indent=1)
        path.write_text(body + "\n")
    return path
