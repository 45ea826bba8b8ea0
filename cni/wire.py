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
MAX_ARGV0 = 4096
MAX_ENV_ENTRY = 1 << 16
#: A whole request: argv0, the environment and stdin. Larger is refused before it is buffered.
MAX_REQUEST = MAX_FIELD + (1 << 20)


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


class _Incomplete(Exception):
    """More bytes are needed."""


class _Cursor:
    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.at = 0

    def exact(self, n: int) -> bytes:
        end = self.at + n
        if end > len(self.data):
            raise _Incomplete
        chunk = bytes(self.data[self.at:end])
        self.at = end
        return chunk

    def u32(self) -> int:
        return struct.unpack(">I", self.exact(4))[0]

    def field(self, limit: int) -> bytes:
        length = self.u32()
        if length > limit:
            raise WireError(f"field of {length} bytes exceeds {limit}")
        return self.exact(length)


def parse_request(data: bytes | bytearray) -> tuple[Request, int] | None:
    """The request at the start of ``data`` and its length, or None when ``data`` is a valid
    but incomplete prefix of one. Raises WireError as soon as a prefix cannot become a valid
    request (wrong magic, a field over its limit, a request over MAX_REQUEST)."""
    cursor = _Cursor(data)
    try:
        if cursor.exact(4) != REQUEST_MAGIC:
            raise WireError("not a nodeagent CNI request")
        argv0 = cursor.field(MAX_ARGV0).decode("utf-8", "replace")
        count = cursor.u32()
        if count > MAX_ENV:
            raise WireError(f"{count} environment entries exceed {MAX_ENV}")
        env = {}
        for _ in range(count):
            key, sep, value = cursor.field(MAX_ENV_ENTRY).decode("utf-8", "replace").partition("=")
            if not sep:
                raise WireError(f"environment entry {key!r} has no '='")
            env[key] = value
            if cursor.at > MAX_REQUEST:
                raise WireError(f"request exceeds {MAX_REQUEST} bytes")
        length = cursor.u32()
        if length > MAX_FIELD:
            raise WireError(f"field of {length} bytes exceeds {MAX_FIELD}")
        if cursor.at + length > MAX_REQUEST:
            raise WireError(f"request exceeds {MAX_REQUEST} bytes")
        stdin = cursor.exact(length)
    except _Incomplete:
        if not REQUEST_MAGIC.startswith(bytes(data[:4])):
            raise WireError("not a nodeagent CNI request") from None
        return None
    return Request(argv0, env, stdin), cursor.at


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, remaining = [], n
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 16))
        if not chunk:
            raise WireError(f"connection closed with {remaining} of {n} bytes unread")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_request(sock: socket.socket) -> Request:
    """Read one request from a blocking socket (clients and test stand-ins; the agent reads
    without blocking, with :func:`parse_request`)."""
    buffer = bytearray()
    while True:
        parsed = parse_request(buffer)
        if parsed is not None:
            return parsed[0]
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise WireError(f"connection closed after {len(buffer)} bytes of a request")
        buffer += chunk


def read_response(sock: socket.socket) -> Response:
    if _recv_exact(sock, 4) != RESPONSE_MAGIC:
        raise WireError("not a nodeagent CNI response")
    status = struct.unpack(">I", _recv_exact(sock, 4))[0]
    return Response(status, _field(sock), _field(sock))


def _field(sock: socket.socket, limit: int = 1 << 24) -> bytes:
    length = struct.unpack(">I", _recv_exact(sock, 4))[0]
    if length > limit:
        raise WireError(f"field of {length} bytes exceeds {limit}")
    return _recv_exact(sock, length)
