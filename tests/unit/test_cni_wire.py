"""The request frame parser the socket's reader feeds byte by byte (cni/wire.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni.wire import MAX_REQUEST, REQUEST_MAGIC, Request, WireError, encode_request, parse_request

names = st.text(st.characters(min_codepoint=65, max_codepoint=90), min_size=1, max_size=12)
requests = st.builds(
    Request,
    argv0=st.text(max_size=40),
    env=st.dictionaries(names.map(lambda n: "CNI_" + n), st.text(max_size=60), max_size=8),
    stdin=st.binary(max_size=2000),
)


@settings(max_examples=200, deadline=None)
@given(requests, st.data())
def test_every_prefix_is_incomplete_and_the_whole_frame_parses(request: Request, data) -> None:
    frame = encode_request(request)
    cut = data.draw(st.integers(0, len(frame) - 1))
    assert parse_request(frame[:cut]) is None
    parsed = parse_request(frame + b"trailing")
    assert parsed == (Request(request.argv0, request.env, request.stdin), len(frame))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_request_none_or_a_wire_error(data: bytes) -> None:
    try:
        parse_request(REQUEST_MAGIC + data)
        parse_request(data)
    except WireError:
        pass


@pytest.mark.parametrize("frame", [
    b"NAC2",
    b"XX",
    REQUEST_MAGIC + (5000).to_bytes(4, "big"),  # argv0 over 4 KiB
    REQUEST_MAGIC + (0).to_bytes(4, "big") + (257).to_bytes(4, "big"),  # env count
    REQUEST_MAGIC + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    + (MAX_REQUEST).to_bytes(4, "big"),  # stdin over the limit
])
def test_a_hopeless_prefix_is_refused_before_the_rest_arrives(frame: bytes) -> None:
    with pytest.raises(WireError):
        parse_request(frame)
