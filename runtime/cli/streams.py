"""``rail streams get APP STORE KEY``: read a pipeline's table from outside it.

The value comes from the application's changelog (every partition, up to its last commit),
so it works from any host, whether the pipeline runs or not.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from runtime.cli.common import (
    CommandError,
    UsageError,
    connect,
    guarded,
    jsonable,
    leaf,
    set_handler,
    with_broker,
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    ap = with_broker(sub.add_parser(
        "streams", help="read the tables of Rail Streams pipelines",
        description="Read the tables of Rail Streams pipelines (docs/streams.md)."))
    inner = ap.add_subparsers(dest="streams_action", metavar="ACTION", required=True)
    get = leaf(inner, "get", "print one key's value in a pipeline's store, as JSON")
    get.add_argument("app", help="the application name (Pipeline's first argument)")
    get.add_argument("store", help="the store name (given to count/sum/reduce/aggregate)")
    get.add_argument("key", help="the key, as text (with --json-key: JSON, e.g. 42 or "
                     "'[\"oven-1\", 1700000000000]' for a window)")
    get.add_argument("--json-key", action="store_true", help="parse KEY as JSON")
    set_handler(get, guarded(cmd_streams_get, "streams get"))


def _key(args: argparse.Namespace) -> Any:
    if not args.json_key:
        return args.key
    try:
        return json.loads(args.key)
    except ValueError as exc:
        raise UsageError(f"--json-key: {args.key!r} is not JSON ({exc})") from None


def cmd_streams_get(args: argparse.Namespace) -> int:
    from runtime.streams import StreamsError, query
    key = _key(args)
    conn = connect(args)
    try:
        values = query.table(conn, args.app, args.store)
    except StreamsError as exc:
        raise CommandError(str(exc)) from None
    finally:
        conn.close()
    raw = query.encode_key(key)
    if raw not in values:
        raise CommandError(f"store {args.store!r} of {args.app!r} has no key {key!r} "
                           f"({len(values)} keys; a window's key is [key, start ms]: use "
                           "--json-key)")
    print(json.dumps(jsonable(values[raw])))
    return 0
