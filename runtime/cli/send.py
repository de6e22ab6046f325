"""``rail send``: one event from the command line, or one per line of a file (kcat -P).

Lines are read as bytes: a plain line is JSON if it parses, else its raw bytes (so a line
that is not UTF-8 is sent as it is); ``--jsonl`` lines carry key, headers and timestamp.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from runtime.cli.common import (
    CommandError, UsageError, arg_bytes, arg_text, guarded, parse_pairs, parse_time,
    parse_value, parse_value_bytes, plural, set_handler, with_broker,
)
from runtime.client import Producer

PROGRESS_EVERY_S = 0.5
MAX_PACING_SLEEP_S = 0.5  # --rate sleeps at most this long at a time
JSONL_FIELDS = {"key", "value", "headers", "timestamp", "topic", "partition", "offset"}
Record = tuple[Any, Any, "dict[str, Any] | None", "int | None"]  # value, key, headers, ts


def add_send(sub: argparse._SubParsersAction) -> None:
    ap = with_broker(sub.add_parser(
        "send", help="send one event, or one per line of a file",
        description="Send VALUE (JSON if it parses, else its bytes) or each line of --file "
        "to TOPIC.  Prints where a single event went, or a count for a file."))
    ap.add_argument("topic", help="the topic to send to (created on first use if the "
                    "broker auto-creates topics)")
    ap.add_argument("value", nargs="?", help="the event's value (omit with --file)")
    ap.add_argument("--key", help="event key: events with one key go to one partition, "
                    "in order (with --file: the key of every line without its own)")
    ap.add_argument("--header", action="append", default=[], metavar="K=V",
                    help="a header, repeatable (with --file: on every line without its own)")
    ap.add_argument("--file", metavar="PATH",
                    help="send each non-empty line of PATH ('-' for stdin) as one event")
    line = ap.add_mutually_exclusive_group()
    line.add_argument("--jsonl", action="store_true",
                      help='with --file: each line is {"value": V, "key": K, '
                      '"headers": {...}, "timestamp": MS}, only "value" required '
                      "(rail tail --json output is accepted)")
    line.add_argument("-K", "--key-delimiter", metavar="DELIM",
                      help="with --file: each line is KEY DELIM VALUE (as kcat -K); a line "
                      "without DELIM has no key")
    ap.add_argument("--delay", type=_non_negative_float, metavar="SECONDS",
                    help="deliver the event SECONDS from now (parked in rail.delayed; "
                    "needs rail up with [supervisor] delays = true)")
    ap.add_argument("--rate", type=_positive_float, metavar="N",
                    help="with --file: send at most N events per second")
    set_handler(ap, guarded(cmd_send))
    cancel = with_broker(sub.add_parser(
        "cancel-delayed", help="cancel an event sent with --delay, by its delay id",
        description="Cancel an event sent with --delay (or send_delayed), by the delay id "
        "that printed: the delay mover drops it if it reads the cancel before the event "
        "falls due; after that the cancel changes nothing."))
    cancel.add_argument("delay_id", help="the id rail send --delay printed")
    set_handler(cancel, guarded(cmd_cancel_delayed))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def cmd_send(args: argparse.Namespace) -> int:
    if (args.value is None) == (args.file is None):
        raise UsageError("give either a VALUE or --file PATH (one event per line)")
    if args.delay is not None and args.file is not None:
        raise UsageError("--delay goes with one VALUE, not --file")
    if args.file is None and (args.jsonl or args.key_delimiter or args.rate):
        raise UsageError("--jsonl, -K and --rate go with --file")
    headers = parse_pairs(args.header, "header") or None
    key = None if args.key is None else arg_text(args.key)
    if args.file is None:
        return _send_one(args, parse_value(args.value), key, headers)
    return _send_file(args, key, headers)


def _send_one(args: argparse.Namespace, value: Any, key: Any,
              headers: dict[str, Any] | None) -> int:
    where: list[tuple[int, int]] = []
    delay_id = ""
    with Producer(args.broker, request_timeout_s=5.0, delivery_timeout_s=10.0) as producer:
        if args.delay is not None:
            from runtime.worker.delays import send_delayed
            delay_id = send_delayed(producer, args.topic, value, key=key, headers=headers,
                                    delay_s=args.delay)
        else:
            producer.send(args.topic, value, key=key, headers=headers,
                          callback=lambda part, off, err: where.append((part, off)))
        producer.flush(10.0)
        _raise_first(producer)
    if args.delay is not None:
        print(delay_id)  # alone on stdout: ID=$(rail send ... --delay 60)
        print(f"parked for {args.topic}, due in {args.delay:g} s (rail cancel-delayed "
              f"{delay_id} cancels it)", file=sys.stderr)
    elif where:
        print(f"sent to {args.topic}[{where[0][0]}]@{where[0][1]}", file=sys.stderr)
    return 0


def cmd_cancel_delayed(args: argparse.Namespace) -> int:
    from runtime.worker.delays import cancel_delayed, delay_partition
    try:
        delay_partition(args.delay_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with Producer(args.broker, request_timeout_s=5.0, delivery_timeout_s=10.0) as producer:
        cancel_delayed(producer, args.delay_id)
        producer.flush(10.0)
        _raise_first(producer)
    print(f"cancel of {args.delay_id} queued: the delay mover drops the event if it has "
          "not forwarded it yet", file=sys.stderr)
    return 0


def _raise_first(producer: Producer) -> None:
    if producer.errors:
        raise producer.errors[0]


# -- a file ---------------------------------------------------------------------------
class _Progress:
    """Counts what was sent; on a terminal, rewrites one status line every half second."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.count = 0
        self.start = self.shown_at = time.monotonic()
        self.live = sys.stderr.isatty()

    def sent(self) -> None:
        self.count += 1
        if self.live and time.monotonic() - self.shown_at >= PROGRESS_EVERY_S:
            self.shown_at = time.monotonic()
            print(f"\r{self.line()}", end="", file=sys.stderr, flush=True)

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        return (f"sent {plural(self.count, 'event')} to {self.topic} in {elapsed:.1f} s "
                f"({rate:,.0f}/s)")

    def done(self) -> None:
        print(f"\r{self.line()}" if self.live else self.line(), file=sys.stderr, flush=True)


def _send_file(args: argparse.Namespace, key: Any, headers: dict[str, Any] | None) -> int:
    source = _open(args.file)
    try:
        return _send_lines(args, source, key, headers)
    finally:
        if source is not sys.stdin.buffer:
            source.close()


def _send_lines(args: argparse.Namespace, source: BinaryIO, key: Any,
                headers: dict[str, Any] | None) -> int:
    progress = _Progress(args.topic)
    failed: CommandError | None = None
    with Producer(args.broker, request_timeout_s=5.0, delivery_timeout_s=30.0) as producer:
        try:
            for value, k, h, ts in _records(args, source, key, headers):
                if args.rate:
                    _pace(progress, args.rate)
                producer.send(args.topic, value, key=k, headers=h, timestamp=ts)
                progress.sent()
        except CommandError as exc:
            failed = exc  # what came before the bad line is still sent, and counted
        producer.flush(30.0)
        _raise_first(producer)
    progress.done()
    if failed is not None:
        raise failed
    return 0


def _pace(progress: _Progress, rate: float) -> None:
    """Wait until event number ``progress.count`` is due at ``rate`` events per second."""
    due = progress.start + progress.count / rate
    while (ahead := due - time.monotonic()) > 0:
        time.sleep(min(ahead, MAX_PACING_SLEEP_S))


def _open(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(arg_bytes(path), "rb")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None


def _records(args: argparse.Namespace, source: BinaryIO, key: Any,
             headers: dict[str, Any] | None) -> Iterator[Record]:
    """One record per non-empty line (a trailing \\n or \\r\\n is not part of it)."""
    delimiter = None if args.key_delimiter is None else arg_bytes(args.key_delimiter)
    for number, raw in enumerate(source, 1):
        line = raw.removesuffix(b"\n").removesuffix(b"\r")
        if not line:
            continue
        if args.jsonl:
            yield _jsonl_record(line, f"{args.file} line {number}", key, headers)
        elif delimiter is not None and delimiter in line:
            k, _, v = line.partition(delimiter)
            yield parse_value_bytes(v), _key_text(k), headers, None
        else:
            yield parse_value_bytes(line), key, headers, None


def _key_text(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def _jsonl_record(line: bytes, where: str, key: Any, headers: dict[str, Any] | None
                  ) -> Record:
    try:
        obj = json.loads(line.decode())
    except UnicodeDecodeError as exc:
        raise CommandError(f"{where}: not UTF-8 (byte {exc.start + 1}): --jsonl lines "
                           "are JSON; send raw bytes without --jsonl") from None
    except ValueError as exc:
        raise CommandError(f"{where}: not JSON ({exc})") from None
    if not isinstance(obj, dict) or "value" not in obj:
        raise CommandError(f'{where}: not an object with a "value" field')
    unknown = sorted(set(obj) - JSONL_FIELDS)
    if unknown:
        raise CommandError(f"{where}: unknown field {unknown[0]!r}: use key, value, "
                           "headers, timestamp")
    got_headers = obj.get("headers", headers)
    if got_headers is not None and not (isinstance(got_headers, dict) and all(
            isinstance(v, str) for v in got_headers.values())):
        raise CommandError(f'{where}: "headers" must map names to strings')
    return obj["value"], obj.get("key", key), got_headers or None, _timestamp(obj, where)


def _timestamp(obj: dict[str, Any], where: str) -> int | None:
    ts = obj.get("timestamp")
    if ts is None:
        return None
    if isinstance(ts, int) and not isinstance(ts, bool) and ts >= 0:
        return ts
    if isinstance(ts, str):
        try:
            return parse_time(ts)
        except UsageError as exc:
            raise CommandError(f"{where}: {exc}") from None
    raise CommandError(f'{where}: "timestamp" must be ms since the epoch or ISO-8601')
