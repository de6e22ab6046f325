"""What every ``rail`` data command shares: the broker flag, one-line errors, exit codes,
values from the command line, and how events and counts are written out."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from datetime import datetime
from typing import Any, Callable

import zmq

from runtime.client import DEFAULT_BROKER, Event
from runtime.connection import BrokerError, Connection
from runtime import routing
from runtime.routing import Router

# Exit codes of the data commands (docs/cli.md); 78 (config) belongs to ``rail up``.
EXIT_OK = 0
EXIT_ERROR = 1  # the broker refused, or the operation failed: the message says why
EXIT_USAGE = 2  # bad flags or arguments (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_BROKEN_PIPE = 141  # the reader went away (``rail tail t | head``), as for a Unix tool


class CommandError(Exception):
    """An operation failed: one line on stderr and exit code 1."""


class UsageError(CommandError):
    """The command line asks for something impossible: one line and exit code 2."""


def set_handler(parser: argparse.ArgumentParser,
                handler: Callable[[argparse.Namespace], int]) -> None:
    """The handler under both names a ``rail`` main may call: ``func`` and ``run``."""
    parser.set_defaults(func=handler, run=handler)


def with_broker(parser: argparse.ArgumentParser, inherited: bool = False
                ) -> argparse.ArgumentParser:
    """Add ``--broker``.  ``inherited``: a sub-command whose parent has the flag too (its
    default must not hide the value given before the sub-command's name)."""
    default = argparse.SUPPRESS if inherited else os.environ.get("RAIL_BROKER", DEFAULT_BROKER)
    parser.add_argument("--broker", default=default,
                        help="broker API endpoint (default: $RAIL_BROKER or "
                        f"{DEFAULT_BROKER})")
    return parser


def leaf(inner: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-command's action (``rail topics create``), with the parent's ``--broker``."""
    return with_broker(inner.add_parser(name, help=help, description=help), inherited=True)


def with_json(parser: argparse.ArgumentParser, what: str, inherited: bool = False
              ) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true",
                        default=argparse.SUPPRESS if inherited else False,
                        help=f"print {what} as JSON instead of a table")
    return parser


def guarded(func: Callable[[argparse.Namespace], int],
            name: str | None = None) -> Callable[[argparse.Namespace], int]:
    """Turn an error, Ctrl-C or a closed pipe into one line on stderr and an exit code."""
    name = name or func.__name__.removeprefix("cmd_").replace("_", " ")

    def run(args: argparse.Namespace) -> int:
        try:
            code = func(args)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return code
        except BrokenPipeError:
            return _quiet_broken_pipe()
        except UsageError as exc:
            print(f"rail {name}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except CommandError as exc:
            print(f"rail {name}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except BrokerError as exc:
            print(f"rail {name}: {exc.code}: {exc.message}", file=sys.stderr)
            return EXIT_ERROR
        except UnicodeEncodeError as exc:  # a name from argv that is not UTF-8
            bad = arg_bytes(exc.object[exc.start:exc.end])
            print(f"rail {name}: {arg_bytes(exc.object)!r} is not UTF-8 (byte {bad[0]:#x}): "
                  "topic and group names must be UTF-8 text", file=sys.stderr)
            return EXIT_ERROR
        except zmq.ZMQError as exc:  # an endpoint ZeroMQ cannot use (a --broker without tcp://)
            hint = (": give tcp://HOST:PORT (a cluster's several, comma-separated)"
                    if exc.errno == zmq.EINVAL else "")
            print(f"rail {name}: {exc}{hint}", file=sys.stderr)
            return EXIT_ERROR
        except OSError as exc:
            print(f"rail {name}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    run.__name__ = func.__name__
    return run


def _quiet_broken_pipe() -> int:
    """The reader of stdout is gone: point stdout at /dev/null so that the interpreter's
    last flush at exit does not print "Exception ignored ... BrokenPipeError"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def connect(args: argparse.Namespace) -> Connection | Router:
    """A connection to ``--broker``; given a cluster's endpoints (``tcp://a,tcp://b``), each
    request goes to the broker that serves it (runtime/routing.py)."""
    return routing.connect(args.broker, timeout_s=5.0)


# -- words ----------------------------------------------------------------------------
def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 event``, ``2 events``, ``1,000 events``."""
    return f"{count:,} {word if count == 1 else (words or word + 's')}"


# -- values from the command line -----------------------------------------------------
def arg_bytes(text: str) -> bytes:
    """The bytes the shell passed: argv that is not UTF-8 arrives as surrogate escapes."""
    return os.fsencode(text)


def arg_text(text: str) -> str | bytes:
    """``text`` itself, or its raw bytes when the shell passed something that is not UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return arg_bytes(text)
    return text


def parse_value(text: str) -> Any:
    """JSON if ``text`` parses as JSON, else its bytes (raw, even when not UTF-8)."""
    return parse_value_bytes(arg_bytes(text))


def parse_value_bytes(raw: bytes) -> Any:
    """JSON if ``raw`` is UTF-8 that parses as JSON, else ``raw`` itself."""
    try:
        return json.loads(raw.decode())
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return raw


def parse_pairs(pairs: list[str], what: str) -> dict[str, Any]:
    """``["k=v", ...]`` as a dict; a value that is not UTF-8 stays bytes."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"{what} {pair!r} is not k=v: write it as name=value")
        if isinstance(arg_text(name), bytes):
            raise UsageError(f"{what} name {arg_bytes(name)!r} is not UTF-8")
        out[name] = arg_text(value)
    return out


def parse_time(text: str) -> int:
    """Milliseconds since the epoch from ``text``: an integer (already ms) or ISO-8601
    (``2026-11-29T20:00:00Z``; without a zone, local time)."""
    if text.strip().isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"time {text!r} is neither ms since the epoch nor ISO-8601 "
                         "(e.g. 2026-11-29T20:00:00Z)") from None
    return int(when.timestamp() * 1000)


# -- events and values on the way out ------------------------------------------------
def jsonable(value: Any) -> Any:
    """Bytes as text when they are UTF-8, else ``{"base64": ...}``; the rest unchanged."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def event_json(event: Event) -> dict[str, Any]:
    return {"topic": event.topic, "partition": event.partition, "offset": event.offset,
            "timestamp": event.timestamp, "key": jsonable(event.key),
            "value": jsonable(event.value), "headers": jsonable(event.headers or {})}


def _compact(value: Any) -> str:
    return json.dumps(jsonable(value), ensure_ascii=False)


def event_line(event: Event) -> str:
    """``topic[partition]@offset key="k" headers={...} value``: one line a person reads."""
    key = "" if event.key is None else f" key={_compact(event.key)}"
    headers = f" headers={_compact(event.headers)}" if event.headers else ""
    return f"{event.topic}[{event.partition}]@{event.offset}{key}{headers} {_compact(event.value)}"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))
