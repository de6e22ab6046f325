"""The DLQ's pure parts: names, offset ranges, selections, the replay record."""

from __future__ import annotations

import pytest

from brokerd import protocol as p
from runtime.client import Event
from runtime.dlq import (REPLAYED_FROM, ReplayRecord, Selection, cursor_group,
                         dead_letter_headers, dlq_name, dlq_topic, ledger_topic, original_headers,
                         parse_location, parse_offsets, replay_headers)


def dead(offset: int, value: object = None, error: str = "no oven", partition: int = 0,
         ts: int = 1000) -> Event:
    original = Event("orders", 0, offset, value, None, {"trace": "x"}, 0)
    return Event("orders.dlq", partition, offset, value, None,
                 dead_letter_headers(original, ValueError(error), 4), ts)


def test_a_worker_always_appends_dlq_but_a_user_may_name_the_dlq_itself() -> None:
    assert dlq_topic("orders.dlq") == "orders.dlq.dlq"
    assert dlq_name("orders") == dlq_name("orders.dlq") == "orders.dlq"


def test_names_near_the_limit_are_shortened_with_a_hash_and_stay_valid_and_distinct() -> None:
    a, b = "a" * 248 + "x", "a" * 248 + "y"
    names = [dlq_topic(a), dlq_topic(b), ledger_topic(dlq_topic(a)), cursor_group(dlq_topic(a))]
    assert all(len(n) <= 249 for n in names) and dlq_topic(a) != dlq_topic(b)
    assert all(p.valid_topic_name(n) for n in names[:3])
    assert dlq_topic(a).endswith(".dlq") and dlq_name(a) == dlq_topic(a)
    assert ledger_topic(dlq_topic(a)).endswith(".replayed")
    assert ledger_topic("orders.dlq") == "orders.dlq.replayed"


@pytest.mark.parametrize(("spec", "bounds"), [
    ("3..7", (3, 7)), ("3..", (3, None)), ("..7", (None, 7)), ("5", (5, 5)), ("0..0", (0, 0))])
def test_offset_ranges_are_inclusive_and_may_be_open(spec: str, bounds: tuple) -> None:
    assert parse_offsets(spec) == bounds


@pytest.mark.parametrize("spec", ["7..3", "a..b", "-1..2", "1...2"])
def test_bad_offset_ranges_say_how_to_write_them(spec: str) -> None:
    with pytest.raises(ValueError, match="offsets"):
        parse_offsets(spec)


def test_locations_parse_back_even_with_dots_and_brackets_in_the_topic() -> None:
    assert parse_location("orders.dlq[2]@17") == ("orders.dlq", 2, 17)
    assert parse_location("a[b].dlq[0]@1") == ("a[b].dlq", 0, 1)
    assert parse_location("orders.dlq@17") is None


def test_a_replayed_event_keeps_its_own_headers_and_says_where_it_came_from() -> None:
    letter = dead(4, {"n": 1})
    assert original_headers(letter.headers) == {"trace": "x"}
    assert replay_headers(letter) == {"trace": "x", REPLAYED_FROM: "orders.dlq[0]@4"}


def test_a_refailure_keeps_the_replayed_from_header() -> None:
    replayed = Event("orders", 0, 12, {"n": 1}, None, {REPLAYED_FROM: "orders.dlq[0]@4"}, 0)
    assert dead_letter_headers(replayed, ValueError("again"), 4)[REPLAYED_FROM] == "orders.dlq[0]@4"


def test_a_selection_matches_error_and_text_as_list_shows_them() -> None:
    letter = dead(2, {"pizza": "margherita"}, error="no cheese")
    assert Selection(error="cheese").selects(letter)
    assert not Selection(error="oven").selects(letter)
    assert Selection(match='"pizza": "marg').selects(letter)
    assert Selection(match="marg").selects(dead(0, b"margherita"))
    assert not Selection(offsets=(3, None)).selects(letter)
    assert not Selection(partition=1).selects(letter)
    assert Selection(offsets=(2, 2), partition=0).selects(letter)


def test_a_selection_bounds_clamp_to_what_the_partition_holds() -> None:
    info = p.PartitionInfo(partition=0, start_offset=5, end_offset=10, size_bytes=0)
    assert Selection().bounds(info) == (5, 10)
    assert Selection(offsets=(0, 6)).bounds(info) == (5, 7)
    assert Selection(offsets=(20, None)).bounds(info) == (20, 20)


def test_replayed_means_below_the_cursor_or_in_the_ledger_for_the_same_dead_letter() -> None:
    record = ReplayRecord("orders.dlq", cursors={0: 3},
                          replayed={(0, 5): {"to": "orders[0]@9", "ts": 1000}})
    assert record.is_replayed(dead(2)) and not record.is_replayed(dead(3))
    assert record.is_replayed(dead(5)) and record.where(dead(5)) == "orders[0]@9"
    assert not record.is_replayed(dead(5, ts=2000))  # same offset, a DLQ created again
    assert not record.is_replayed(dead(5, partition=1))
