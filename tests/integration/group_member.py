"""A consumer-group member the group tests run as its own process (so it can be SIGKILLed).

    python -m tests.integration.group_member BROKER GROUP TOPIC OUT [--session-ms N]

It polls, "processes" each event (``--work-ms`` of simulated work), appends what it did to
OUT, then commits after each batch.  Each line of OUT starts with a monotonic timestamp
(CLOCK_MONOTONIC is one clock for every process of the machine) and a tag:

    R <member_id>                joined
    A <json assignment>          the assignment changed
    E <partition> <offset>       processed an event (written before committing it)
    c <partition> <offset>       about to commit: the next offset to read
    C <partition> <offset>       that commit was accepted

SIGTERM asks it to finish the batch in hand, leave the group and exit 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from typing import TextIO

from runtime.client import Consumer, Event


class Journal:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, *lines: str) -> None:
        now = f"{time.monotonic():.6f}"
        self.out.write("".join(f"{now} {line}\n" for line in lines))
        self.out.flush()


def process(events: list[Event], work_s: float) -> dict[tuple[str, int], int]:
    """Simulate the work of each event; return the next offset of each partition."""
    nexts: dict[tuple[str, int], int] = {}
    for event in events:
        if work_s:
            time.sleep(work_s)  # the event's "work", not a wait for anything
        nexts[(event.topic, event.partition)] = event.offset + 1
    return nexts


def run(args: argparse.Namespace) -> int:
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    journal = Journal(open(args.out, "a"))
    on_assign = lambda assignment: journal.write(f"A {json.dumps(sorted(assignment))}")
    consumer = Consumer(args.broker, group=args.group, topics=[args.topic],
                        session_timeout_ms=args.session_ms, max_bytes=args.max_bytes,
                        client_id=args.name, on_assign=on_assign)
    journal.write(f"R {consumer.member_id}")
    while not stopping:
        events = consumer.poll(timeout_s=0.2)
        if not events:
            continue
        nexts = process(events, args.work_ms / 1000)
        journal.write(*(f"E {e.partition} {e.offset}" for e in events))
        journal.write(*(f"c {part} {offset}" for (_, part), offset in nexts.items()))
        consumer.commit(nexts)
        owned = set(consumer.assignment)
        journal.write(*(f"C {tp[1]} {offset}" for tp, offset in nexts.items() if tp in owned))
    consumer.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("broker")
    parser.add_argument("group")
    parser.add_argument("topic")
    parser.add_argument("out")
    parser.add_argument("--name", default="member")
    parser.add_argument("--session-ms", type=int, default=1000)
    parser.add_argument("--max-bytes", type=int, default=512)
    parser.add_argument("--work-ms", type=float, default=1.0)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
