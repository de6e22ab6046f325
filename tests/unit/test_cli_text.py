"""The data commands' pure pieces: times, kcat formats, counts, the completion script."""

from __future__ import annotations

import pytest

from runtime.cli import build_parser
from runtime.cli.common import UsageError, parse_time, parse_value, plural
from runtime.cli.data import bash_completion
from runtime.cli.tail import compile_format
from runtime.client import Event


def test_times_are_ms_or_iso_8601_with_a_zone() -> None:
    assert parse_time("1795982722416") == 1795982722416
    assert parse_time("1970-01-01T00:00:01Z") == 1000
    assert parse_time("1970-01-01T01:00:01.5+01:00") == 1500
    with pytest.raises(UsageError):
        parse_time("yesterday")


def test_a_kcat_format_writes_fields_escapes_and_raw_bytes() -> None:
    event = Event("t", 2, 41, b"\xff", "k", {"a": "1", "b": b"\x00"}, 7)
    render = compile_format(r"%t %p %o %k %s %h %T 100%%\t\\\n")
    assert render(event) == b"t 2 41 k \xff a=1,b=\x00 7 100%\t\\\n"
    assert compile_format("%k|%s")(Event("t", 0, 0, {"n": [1, 2]})) == b'|{"n":[1,2]}'
    with pytest.raises(UsageError):
        compile_format("%x")


def test_counts_read_as_words() -> None:
    assert (plural(1, "event"), plural(2, "partition"), plural(12_345, "event")) == (
        "1 event", "2 partitions", "12,345 events")


def test_argv_values_are_json_else_their_raw_bytes() -> None:
    assert parse_value('{"a": 1}') == {"a": 1}
    assert parse_value("plain") == b"plain"
    assert parse_value("\udcff\udcfe") == b"\xff\xfe"  # how Python passes argv bytes


def test_the_completion_script_knows_nested_actions_and_option_values() -> None:
    script = bash_completion(build_parser())
    assert "['rail groups']=" in script and "reset-offsets" in script
    assert "['rail tail -o']=''" in script  # -o takes a value: its word is skipped
    assert "['rail completion']='-h --help bash'" in script
