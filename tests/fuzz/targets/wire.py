"""The CNI socket's frame reader (cni.wire.read_request) over a socketpair: valid frames cut
short, lengths lied about, garbage. The writer closes its side after sending, so a reader that
is not done within a deadline hangs. Property: it returns a Request or raises WireError."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Any

from tests.fuzz.cases import Broke, as_payload, escaped, escaped_kind, payload, show
from tests.fuzz.draw import Draw

DEADLINE = 5.0


def _frame(draw: Draw) -> bytes:
    from cni.wire import MAX_ENV, MAX_STDIN, Request, encode_request

    env = {draw.choice(("CNI_COMMAND", "CNI_NETNS", "CNI_ARGS", draw.text(6))): draw.text(20)
           for _ in range(draw.int(0, 4))}
    frame = encode_request(Request(draw.choice(("macvlan", "sriov", "", draw.text(10))), env,
                                   draw.bytes(40)))
    op = draw.int(0, 6)
    if op == 0:  # as it is
        return frame
    if op == 1:  # cut short
        return frame[: draw.int(0, len(frame))]
    if op == 2:  # a length that lies (big, or just past what follows)
        at = draw.int(4, max(4, len(frame) - 4))
        length = draw.choice((MAX_STDIN, MAX_STDIN + 1, MAX_STDIN + 2, 1 << 31, 0xFFFFFFFF,
                              MAX_ENV + 1, 4097, len(frame)))
        return frame[:at] + struct.pack(">I", length) + frame[at + 4:]
    if op == 3:  # bytes flipped
        data = bytearray(frame)
        for _ in range(draw.int(1, 4)):
            if data:
                data[draw.int(0, len(data) - 1)] = draw.int(0, 255)
        return bytes(data)
    if op == 4:  # the magic, then garbage
        return b"NAC1" + draw.bytes(64)
    if op == 5:  # an env entry without '=', or invalid UTF-8
        return (b"NAC1" + struct.pack(">I", 1) + b"m" + struct.pack(">I", 1)
                + struct.pack(">I", 3) + draw.choice((b"abc", b"\xff=\xfe", b"a=\x00"))
                + struct.pack(">I", 0))
    return draw.bytes(64)


class FrameReader:
    name = "wire"
    seeded = 300
    memory_mb: int | None = 1024
    timeout = 30.0

    def generate(self, draw: Draw) -> dict[str, Any]:
        if draw.bool(3):  # a stdin field really over the limit (1 MiB + 2), or just at it
            from cni.wire import MAX_FIELD, Request, encode_request

            size = draw.choice((MAX_FIELD, MAX_FIELD + 1))
            head = encode_request(Request("macvlan", {"CNI_COMMAND": "ADD"}, b""))[:-4]
            return {"frame": [{"b64": _b64(head + struct.pack(">I", size))},
                              {"repeat": ["{", size]}], "chunk": 0}
        frame = _frame(draw)
        return {"frame": as_payload(frame) if draw.bool(20) else {"b64": _b64(frame)},
                "chunk": draw.choice((0, 1, 3, 4096))}

    def setup(self) -> None:
        pass

    def close(self) -> None:
        pass

    def run(self, case: dict[str, Any]) -> None:
        from cni.wire import Request, WireError, read_request

        data = payload(case["frame"])
        reader, writer = socket.socketpair()
        outcome: dict[str, Any] = {}

        def read() -> None:
            try:
                outcome["request"] = read_request(reader)
            except BaseException as exc:
                outcome["error"] = exc

        def write() -> None:
            chunk = case.get("chunk") or len(data) or 1
            try:
                for i in range(0, len(data), chunk):
                    writer.sendall(data[i:i + chunk])
                writer.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the reader gave up early and closed: fine

        threads = [threading.Thread(target=f, daemon=True) for f in (read, write)]
        for thread in threads:
            thread.start()
        threads[0].join(DEADLINE)
        hung = threads[0].is_alive()
        for sock in (reader, writer):  # wakes a blocked reader, and a writer nobody reads
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(1.0)
        if hung:
            raise Broke("read_request hung after the writer closed",
                        f"input: {show(case)}")
        error = outcome.get("error")
        if error is not None and not isinstance(error, WireError):
            raise Broke(f"read_request raised {escaped_kind(error)}",
                        f"input: {show(case)}\nescaped: {escaped(error)}")
        if error is None and not isinstance(outcome.get("request"), Request):
            raise Broke("read_request returned no Request", f"input: {show(case)}")


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
