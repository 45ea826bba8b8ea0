"""The few messages of etcd's v3 gRPC API that IPAM uses, in protobuf wire format.

Hand-written instead of generated: the IPAM store needs Range, Put, DeleteRange, Txn (with
Compare and nested Txn ops) and Authenticate, which is about a dozen messages of bytes and
integers. This keeps protoc, generated stubs and the protobuf runtime out of the build and the
CNI path (grpcio alone carries the calls). Field numbers are those of etcd's
``api/etcdserverpb/rpc.proto``, ``api/mvccpb/kv.proto`` (KeyValue) and
``api/authpb`` (Authenticate); the etcd tests in tests/ exercise every message against a real
etcd server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

# Compare.CompareResult / Compare.CompareTarget
EQUAL, GREATER, LESS, NOT_EQUAL = 0, 1, 2, 3
_TARGETS = {"version": (0, 4), "create": (1, 5), "mod": (2, 6), "value": (3, 7)}

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 two's complement: 10 bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _len(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(data)) + data if data else b""


def _msg(number: int, data: bytes) -> bytes:
    """An embedded message: present even when empty (the oneof case needs it)."""
    return _varint(number << 3 | _LEN) + _varint(len(data)) + data


# -- requests -------------------------------------------------------------------------------


def range_request(
    key: bytes,
    range_end: bytes = b"",
    *,
    limit: int = 0,
    keys_only: bool = False,
    count_only: bool = False,
    serializable: bool = False,
) -> bytes:
    return (
        _len(1, key)
        + _len(2, range_end)
        + _int(3, limit)
        + _int(7, serializable)
        + _int(8, keys_only)
        + _int(9, count_only)
    )


def put_request(key: bytes, value: bytes) -> bytes:
    return _len(1, key) + _len(2, value)


def delete_request(key: bytes, range_end: bytes = b"") -> bytes:
    return _len(1, key) + _len(2, range_end)


def compare(
    key: bytes,
    target: Literal["version", "create", "mod", "value"],
    value: int | bytes,
    result: int = EQUAL,
) -> bytes:
    """``target(key) <result> value``, e.g. ``compare(k, "create", 0)``: k does not exist."""
    code, number = _TARGETS[target]
    if isinstance(value, bytes):
        union = _msg(number, value)
    else:
        union = _varint(number << 3) + _varint(value)  # oneof: encoded even when 0
    return _int(1, result) + _int(2, code) + _len(3, key) + union


def op_range(request: bytes) -> bytes:
    return _msg(1, request)


def op_put(request: bytes) -> bytes:
    return _msg(2, request)


def op_delete(request: bytes) -> bytes:
    return _msg(3, request)


def op_txn(request: bytes) -> bytes:
    return _msg(4, request)


def txn_request(
    compares: Sequence[bytes], success: Sequence[bytes], failure: Sequence[bytes] = ()
) -> bytes:
    return (
        b"".join(_msg(1, c) for c in compares)
        + b"".join(_msg(2, op) for op in success)
        + b"".join(_msg(3, op) for op in failure)
    )


def authenticate_request(name: str, password: str) -> bytes:
    return _len(1, name.encode()) + _len(2, password.encode())


# -- responses ------------------------------------------------------------------------------


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) for each field: ints for varints, bytes for length-delimited."""
    pos, end = 0, len(buf)
    while pos < end:
        tag = shift = 0
        while True:
            byte = buf[pos]
            pos += 1
            tag |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        wire = tag & 7
        if wire == _VARINT:
            value = shift = 0
            while True:
                byte = buf[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            yield tag >> 3, value
        elif wire == _LEN:
            size = shift = 0
            while True:
                byte = buf[pos]
                pos += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            yield tag >> 3, buf[pos : pos + size]
            pos += size
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos != end:
        raise ValueError("truncated protobuf message")


def _int64(value: int | bytes) -> int:
    assert isinstance(value, int)
    return value - (1 << 64) if value >= 1 << 63 else value


def _revision(header: bytes) -> int:
    for number, value in _fields(header):
        if number == 3:
            return _int64(value)
    return 0


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    value: bytes = b""

    @classmethod
    def decode(cls, buf: bytes) -> KeyValue:
        key, value = b"", b""
        ints = [0, 0, 0, 0, 0, 0, 0]
        for number, v in _fields(buf):
            if number == 1:
                key = v  # type: ignore[assignment]
            elif number == 5:
                value = v  # type: ignore[assignment]
            elif number < 7 and isinstance(v, int):
                ints[number] = _int64(v)
        return cls(key, ints[2], ints[3], ints[4], value)


class RangeResponse:
    """Decoded on first use: a keys-only window is often only scanned (``raw``)."""

    __slots__ = ("_decoded", "raw")

    def __init__(self, raw: bytes = b"") -> None:
        self.raw = raw
        self._decoded: tuple[int, tuple[KeyValue, ...], bool, int] | None = None

    @classmethod
    def decode(cls, buf: bytes) -> RangeResponse:
        return cls(bytes(buf))

    def _fields(self) -> tuple[int, tuple[KeyValue, ...], bool, int]:
        if self._decoded is None:
            revision, kvs, more, count = 0, [], False, 0
            for number, v in _fields(self.raw):
                if number == 1:
                    revision = _revision(v)  # type: ignore[arg-type]
                elif number == 2:
                    kvs.append(KeyValue.decode(v))  # type: ignore[arg-type]
                elif number == 3:
                    more = bool(v)
                elif number == 4:
                    count = _int64(v)
            self._decoded = (revision, tuple(kvs), more, count)
        return self._decoded

    @property
    def revision(self) -> int:
        return self._fields()[0]

    @property
    def kvs(self) -> tuple[KeyValue, ...]:
        return self._fields()[1]

    @property
    def more(self) -> bool:
        return self._fields()[2]

    @property
    def count(self) -> int:
        return self._fields()[3]


@dataclass(frozen=True)
class PutResponse:
    revision: int = 0


@dataclass(frozen=True)
class DeleteRangeResponse:
    revision: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class TxnResponse:
    revision: int = 0
    succeeded: bool = False
    responses: tuple[RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse, ...] = (
        field(default=())
    )

    @classmethod
    def decode(cls, buf: bytes) -> TxnResponse:
        revision, succeeded, responses = 0, False, []
        for number, v in _fields(buf):
            if number == 1:
                revision = _revision(v)  # type: ignore[arg-type]
            elif number == 2:
                succeeded = bool(v)
            elif number == 3:
                responses.append(_response_op(v))  # type: ignore[arg-type]
        return cls(revision, succeeded, tuple(responses))


def _response_op(buf: bytes) -> RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse:
    for number, v in _fields(buf):
        assert isinstance(v, bytes)
        if number == 1:
            return RangeResponse.decode(v)
        if number == 2:
            return PutResponse(_header_revision(v))
        if number == 3:
            deleted = next((_int64(x) for n, x in _fields(v) if n == 2), 0)
            return DeleteRangeResponse(_header_revision(v), deleted)
        if number == 4:
            return TxnResponse.decode(v)
    raise ValueError("empty ResponseOp")


def _header_revision(buf: bytes) -> int:
    return next((_revision(v) for n, v in _fields(buf) if n == 1 and isinstance(v, bytes)), 0)


def decode_put(buf: bytes) -> PutResponse:
    return PutResponse(_header_revision(buf))


def decode_delete(buf: bytes) -> DeleteRangeResponse:
    deleted = next((_int64(v) for n, v in _fields(buf) if n == 2), 0)
    return DeleteRangeResponse(_header_revision(buf), deleted)


def decode_authenticate(buf: bytes) -> str:
    """AuthenticateResponse.token."""
    for number, v in _fields(buf):
        if number == 2 and isinstance(v, bytes):
            return v.decode()
    return ""

