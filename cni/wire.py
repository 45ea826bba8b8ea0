"""Framing of the shim <-> agent socket protocol (docs/cni-socket.md)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

REQUEST_MAGIC = b"NAC1"
RESPONSE_MAGIC = b"NAR1"
MAX_STDIN = 1 << 20
#: The shim forwards at most one byte more than MAX_STDIN, so oversize input is detectable.
MAX_FIELD = MAX_STDIN + 1
MAX_ENV = 256


class WireError(Exception):
    """A malformed or truncated frame."""


@dataclass(frozen=True)
class Request:
    argv0: str
    env: dict[str, str]
    stdin: bytes


@dataclass(frozen=True)
class Response:
    exit_status: int
    stdout: bytes
    stderr: bytes = b""


def _bytes(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def encode_request(request: Request) -> bytes:
    parts = [REQUEST_MAGIC, _bytes(request.argv0.encode()), struct.pack(">I", len(request.env))]
    parts += [_bytes(f"{k}={v}".encode()) for k, v in request.env.items()]
    parts.append(_bytes(request.stdin))
    return b"".join(parts)


def encode_response(response: Response) -> bytes:
    return (RESPONSE_MAGIC + struct.pack(">I", response.exit_status)
            + _bytes(response.stdout) + _bytes(response.stderr))


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def exact(self, n: int) -> bytes:
        chunks, remaining = [], n
        while remaining:
            chunk = self.sock.recv(min(remaining, 1 << 16))
            if not chunk:
                raise WireError(f"connection closed with {remaining} of {n} bytes unread")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def u32(self) -> int:
        return struct.unpack(">I", self.exact(4))[0]

    def field(self, limit: int = MAX_FIELD) -> bytes:
        length = self.u32()
        if length > limit:
            raise WireError(f"field of {length} bytes exceeds {limit}")
        return self.exact(length)


def read_request(sock: socket.socket) -> Request:
    reader = _Reader(sock)
    if reader.exact(4) != REQUEST_MAGIC:
        raise WireError("not a nodeagent CNI request")
    argv0 = reader.field(4096).decode("utf-8", "replace")
    count = reader.u32()
    if count > MAX_ENV:
        raise WireError(f"{count} environment entries exceed {MAX_ENV}")
    env = {}
    for _ in range(count):
        key, sep, value = reader.field(1 << 16).decode("utf-8", "replace").partition("=")
        if not sep:
            raise WireError(f"environment entry {key!r} has no '='")
        env[key] = value
    return Request(argv0, env, reader.field())


def read_response(sock: socket.socket) -> Response:
    reader = _Reader(sock)
    if reader.exact(4) != RESPONSE_MAGIC:
        raise WireError("not a nodeagent CNI response")
    status = reader.u32()
    return Response(status, reader.field(1 << 24), reader.field(1 << 24))
