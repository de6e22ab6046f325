"""``rail send`` as a user runs it: raw bytes, files, JSON lines, keys, pacing, counts."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import time
from pathlib import Path

from tests.helpers import ROOT, BrokerProcess
from tests.integration.cli import RAIL, create_topic, events, one_line, rail, rail_env


def test_a_value_that_is_not_utf8_is_sent_as_its_raw_bytes(broker: BrokerProcess) -> None:
    done = rail(broker, "send", "raw", b"\xff\xfe", "--key", b"k\xff", "--header", b"h=\xfe")
    assert "sent to raw[0]@0" in done.stderr
    [event] = events(broker, "raw")
    assert (event.value, event.key, event.headers) == (b"\xff\xfe", b"k\xff", {"h": b"\xfe"})


def test_a_file_line_that_is_not_utf8_is_sent_as_its_bytes(broker: BrokerProcess,
                                                           tmp_path: Path) -> None:
    lines = tmp_path / "mixed.txt"
    lines.write_bytes(b'{"n": 1}\n\xff\xfe odd\r\nplain\n\n')
    done = rail(broker, "send", "mixed", "--file", str(lines))
    assert "sent 3 events to mixed" in done.stderr
    assert [e.value for e in events(broker, "mixed")] == [{"n": 1}, b"\xff\xfe odd", b"plain"]


def test_the_final_count_line_uses_thousands_and_the_singular(broker: BrokerProcess,
                                                              tmp_path: Path) -> None:
    many, one = tmp_path / "many.txt", tmp_path / "one.txt"
    many.write_text("".join(f"{i}\n" for i in range(5000)))
    one.write_text("only\n")
    assert "sent 5,000 events to numbers in " in rail(broker, "send", "numbers", "--file",
                                                       str(many)).stderr
    assert "sent 1 event to numbers in " in rail(broker, "send", "numbers", "--file",
                                                  str(one)).stderr
    assert len(events(broker, "numbers")) == 5001


def test_jsonl_lines_carry_their_key_headers_and_timestamp(broker: BrokerProcess,
                                                          tmp_path: Path) -> None:
    lines = tmp_path / "orders.jsonl"
    lines.write_text(
        json.dumps({"key": "t7", "value": {"pizza": 2}, "headers": {"src": "hall"},
                    "timestamp": 1_000}) + "\n"
        + json.dumps({"value": "just text", "timestamp": "1970-01-01T00:00:02Z"}) + "\n")
    rail(broker, "send", "orders", "--file", str(lines), "--jsonl")
    first, second = events(broker, "orders")
    assert (first.key, first.value, first.headers, first.timestamp) == (
        "t7", {"pizza": 2}, {"src": "hall"}, 1_000)
    assert (second.key, second.value, second.timestamp) == (None, "just text", 2_000)


def test_tail_json_output_sends_back_as_jsonl(broker: BrokerProcess, tmp_path: Path) -> None:
    rail(broker, "send", "a", '{"n": 1}', "--key", "k", "--header", "x=y")
    copied = rail(broker, "tail", "a", "--json").stdout
    rail(broker, "send", "b", "--file", "-", "--jsonl", input=copied)
    [event] = events(broker, "b")
    assert (event.key, event.value, event.headers) == ("k", {"n": 1}, {"x": "y"})


def test_a_bad_jsonl_line_is_named_and_the_lines_before_it_are_sent(
        broker: BrokerProcess, tmp_path: Path) -> None:
    lines = tmp_path / "bad.jsonl"
    lines.write_bytes(b'{"value": 1}\n{"value": 2}\n{"value": "\xff"}\n{"value": 4}\n')
    done = rail(broker, "send", "bad", "--file", str(lines), "--jsonl", check=False)
    assert done.returncode == 1
    assert "sent 2 events to bad" in done.stderr
    assert f"{lines} line 3: not UTF-8" in done.stderr
    assert [e.value for e in events(broker, "bad")] == [1, 2]
    lines.write_text('{"value": 1}\n{"valu": 2}\n')
    done = rail(broker, "send", "bad", "--file", str(lines), "--jsonl", check=False)
    assert done.returncode == 1 and "line 2: not an object with a \"value\" field" in done.stderr


def test_a_key_delimiter_splits_each_line_into_key_and_value(broker: BrokerProcess) -> None:
    create_topic(broker, "keyed", partitions=3)
    rail(broker, "send", "keyed", "--file", "-", "-K", ":",
         input='table-7:{"pizza": 1}\ntable-8:plain:colon\nno key here\n')
    got = sorted(((e.key, e.value) for e in events(broker, "keyed")), key=repr)
    assert got == sorted([("table-7", {"pizza": 1}), ("table-8", b"plain:colon"),
                          (None, b"no key here")], key=repr)


def test_rate_paces_the_events_over_time(broker: BrokerProcess) -> None:
    started = time.monotonic()
    rail(broker, "send", "paced", "--file", "-", "--rate", "50",
         input="".join(f"{i}\n" for i in range(20)))
    assert time.monotonic() - started >= 0.38  # 20 events at 50/s: the last is due at 0.38 s
    stamps = [e.timestamp for e in events(broker, "paced")]
    assert len(stamps) == 20 and stamps[-1] - stamps[0] >= 300


def test_a_terminal_sees_progress_lines_while_a_long_send_runs(broker: BrokerProcess) -> None:
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([*RAIL, "send", "slow", "--file", "-", "--rate", "40"],
                                env=rail_env(broker), cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=terminal)
        os.close(terminal)
        proc.communicate("".join(f"{i}\n" for i in range(60)).encode(), timeout=60)
        assert proc.returncode == 0
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's writers are all gone
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
    text = seen.decode()
    assert text.count("\rsent ") >= 2 and "sent 60 events to slow" in text


def test_send_needs_exactly_one_of_a_value_and_a_file(broker: BrokerProcess) -> None:
    done = rail(broker, "send", "t", check=False)
    assert done.returncode == 2 and one_line(done.stderr).startswith("rail send: give either")
    done = rail(broker, "send", "t", "v", "--rate", "5", check=False)
    assert done.returncode == 2 and "--rate go with --file" in done.stderr
    done = rail(broker, "send", "t", "--file", "/nonexistent/x", check=False)
    assert done.returncode == 1 and "cannot read /nonexistent/x" in one_line(done.stderr)
