"""Log lines: JSON objects and text lines, with the fields bound to the current work."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest

from nodeagent import logs


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """A logger writing through the project's handler setup into a string."""
    stream = io.StringIO()
    logs.setup("debug", "json", stream)
    try:
        yield stream
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == "nodeagent"]:
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_time_level_logger_message_and_bound_fields(out) -> None:
    with logs.bind(pod="ns/web-0", containerID="abc123"):
        logging.getLogger("nodeagent.cni.deep").warning("moved %s", "0000:3b:01.0",
                                                        extra={"device": "0000:3b:01.0"})
    logging.getLogger("nodeagent").info("outside")

    first, second = lines(out)
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert first["level"] == "warning" and first["logger"] == "nodeagent.cni.deep"
    assert first["msg"] == "moved 0000:3b:01.0"
    assert first["pod"] == "ns/web-0" and first["containerID"] == "abc123"
    assert first["device"] == "0000:3b:01.0"
    assert first["ts"].endswith("Z")
    stamp = datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert abs(stamp.timestamp() - datetime.now().timestamp()) < 60
    assert "pod" not in second and second["msg"] == "outside", "fields end with their block"


def test_nested_binds_add_fields_and_the_yielded_dict_extends_them(out) -> None:
    log = logging.getLogger("t")
    with logs.bind(verb="ADD") as fields:
        fields["network"] = "net-a"
        with logs.bind(device="eth9"):
            log.info("inner")
        log.info("outer")

    inner, outer = lines(out)
    assert (inner["verb"], inner["network"], inner["device"]) == ("ADD", "net-a", "eth9")
    assert outer["network"] == "net-a" and "device" not in outer


def test_each_thread_sees_only_its_own_fields(out) -> None:
    barrier = threading.Barrier(2)

    def work(pod: str) -> None:
        with logs.bind(pod=pod):
            barrier.wait()  # both blocks are open at once
            logging.getLogger("t").info("from %s", pod)

    threads = [threading.Thread(target=work, args=(p,)) for p in ("ns/a", "ns/b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert {(d["msg"], d["pod"]) for d in lines(out)} == {("from ns/a", "ns/a"),
                                                         ("from ns/b", "ns/b")}


def test_exceptions_are_in_the_json_object(out) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("t").exception("failed")

    (doc,) = lines(out)
    assert doc["level"] == "error" and "RuntimeError: boom" in doc["exc"]


def test_text_format_appends_key_value_pairs_and_quotes_when_needed() -> None:
    formatter = logs.TextFormatter()
    record = logging.LogRecord("nodeagent.cni", logging.INFO, __file__, 1, "CNI %s ok",
                               ("DEL",), None)
    record.pod, record.msg_detail, record.empty = "ns/p", 'has space "q"', ""

    line = formatter.format(record)

    assert " INFO nodeagent.cni: CNI DEL ok pod=ns/p " in line
    assert line.endswith(' msg_detail="has space \\"q\\""'), "empty fields are left out"


def test_auto_is_text_on_a_terminal_and_json_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(logs.formatter("auto", Tty()), logs.TextFormatter)
    assert isinstance(logs.formatter("auto", io.StringIO()), logs.JsonFormatter)
    with pytest.raises(ValueError, match="yaml"):
        logs.formatter("yaml")


def test_setup_replaces_its_own_handler_only(out) -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    try:
        logs.setup("info", "json", out)
        logs.setup("info", "json", out)
        ours = [h for h in root.handlers if h.get_name() == "nodeagent"]
        assert len(ours) == 1 and other in root.handlers
        logging.getLogger("t").info("once")
        assert [d["msg"] for d in lines(out)] == ["once"]
    finally:
        root.removeHandler(other)


@pytest.mark.parametrize(("argv", "fmt"), [
    (["daemon"], "auto"),
    (["daemon", "--log-format", "json"], "json"),
    (["--log-format", "text", "daemon"], "text"),
    (["--log-format", "text", "daemon", "--log-format", "json"], "json"),
])
def test_log_format_is_accepted_before_and_after_the_daemon_subcommand(argv, fmt) -> None:
    from nodeagent.cli import build_parser

    assert build_parser().parse_args(argv).log_format == fmt


def test_fields_learnt_later_reach_the_block_and_nothing_outside(out) -> None:
    log = logging.getLogger("t")
    logs.annotate(device="nowhere")  # no block: nothing to add to
    with logs.bind(verb="ADD") as fields:
        log.info("before")
        logs.annotate(device="eth0")
        log.info("after")
    log.info("outside")

    before, after, outside = lines(out)
    assert "device" not in before and after["device"] == "eth0" and fields["device"] == "eth0"
    assert "device" not in outside
