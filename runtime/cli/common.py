"""What every ``rail`` data command shares: the broker flag, one-line errors, JSON output."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from typing import Any, Callable

from runtime.client import DEFAULT_BROKER, Event
from runtime.connection import BrokerError, Connection


def set_handler(parser: argparse.ArgumentParser,
                handler: Callable[[argparse.Namespace], int]) -> None:
    """The handler under both names a ``rail`` main may call: ``func`` and ``run``."""
    parser.set_defaults(func=handler, run=handler)


def with_broker(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--broker", default=os.environ.get("RAIL_BROKER", DEFAULT_BROKER),
                        help="broker API endpoint (default: $RAIL_BROKER or %(default)s)")
    return parser


def guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a broker error or Ctrl-C into one line on stderr and an exit code."""
    name = func.__name__.removeprefix("cmd_").replace("_", " ")

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except BrokerError as exc:
            print(f"rail {name}: {exc.code}: {exc.message}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"rail {name}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    run.__name__ = func.__name__
    return run


def connect(args: argparse.Namespace) -> Connection:
    return Connection(args.broker, timeout_s=5.0)


# -- values ---------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """JSON if ``text`` parses as JSON, else its UTF-8 bytes."""
    try:
        return json.loads(text)
    except ValueError:
        return text.encode()


def parse_pairs(pairs: list[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"rail: {what} {pair!r} is not k=v: write it as name=value")
        out[name] = value
    return out


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


def event_line(event: Event) -> str:
    key = "" if event.key is None else f" key={json.dumps(jsonable(event.key))}"
    return (f"{event.topic}[{event.partition}]@{event.offset}{key} "
            f"{json.dumps(jsonable(event.value), ensure_ascii=False)}")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


