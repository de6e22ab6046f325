"""Connect on a cluster, many times over: a file source writes a file of numbered lines to
a 3-broker cluster while the leader of its topic is killed with kill -9 at a random
moment; each round checks that every line is in the topic exactly once, then restarts
the killed broker for the next round.  ``tests/cluster/test_connect_cluster.py`` is one
such round in CI; a loss that happens once in 25-50 rounds (a source that sent with
``acks=1``: the batch a killed leader alone had acknowledged) needs this many.

    .venv/bin/python bench/connect_chaos.py                  # 50 rounds
    .venv/bin/python bench/connect_chaos.py --rounds 200 --seed 7
    .venv/bin/python bench/connect_chaos.py --acks 1      # the loss it once had

A round that loses or repeats a line, or stands still for 30 s, stops the run with the
task's thread stacks (``kill -USR1``), its log and each broker's view; exit 1.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster.client import metadata, start_member, wait_in_sync  # noqa: E402
from tests.cluster.zookeeper import available, start_zookeeper  # noqa: E402
from tests.connect.tasks import Task, count, read_topic, write_lines  # noqa: E402
from tests.integration.wire import RawClient  # noqa: E402

LINES = 30_000
STILL_S = 30.0


def one_round(n: int, rng: random.Random, root: Path, zk, brokers: list, every: str,
              acks: str | None) -> float:
    apis = [b.api for b in brokers]
    topic = f"lines{n}"
    with RawClient(apis[0]) as raw:
        raw.ok("create_topic", topic=topic, partitions=1)
    leader = wait_in_sync(apis, topic, 1, 3)[0]
    path = root / f"in{n}.jsonl"
    write_lines(path, 0, LINES, "w")
    settings = {"name": f"src{n}", "kind": "source", "class": "file", "topics": [topic],
                "config": {"path": str(path)}, "batch": 200}
    if acks is not None:
        settings["acks"] = 1 if acks == "1" else acks
    task = Task(settings, every, root / f"task{n}.log")
    started = time.monotonic()
    try:
        kill_at = rng.randrange(1_000, LINES // 2)
        while count(every, topic) < kill_at:
            time.sleep(0.005)
            if time.monotonic() - started > 60:
                raise SystemExit(f"round {n}: the source never reached {kill_at} lines")
        brokers[leader].kill9()
        last, since = -1, time.monotonic()
        while (now := count(every, topic)) < LINES:
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > STILL_S:
                fail(n, f"stood still at {now} lines for {STILL_S:.0f} s", task, apis, topic)
            time.sleep(0.05)
        took = time.monotonic() - started
        ids = Counter(e.value["id"] for e in read_topic(every, topic))
        missing = sorted(set(range(LINES)) - set(ids))
        twice = sorted(i for i, c in ids.items() if c > 1)
        if missing or twice:
            fail(n, f"missing {missing[:5]}... ({len(missing)}), twice {twice[:5]}... "
                 f"({len(twice)})", task, apis, topic)
    finally:
        task.stop()
    brokers[leader] = start_member(root, zk, leader,
                                   api_port=int(apis[leader].rsplit(":", 1)[1]))
    for name in (topic, "_connect-offsets"):
        wait_in_sync(apis, name, 1, 3, timeout=90)
    return took


def fail(n: int, what: str, task: Task, apis: list[str], topic: str) -> None:
    os.kill(task.proc.pid, signal.SIGUSR1)  # its stacks, to its log
    time.sleep(1)
    print(f"round {n}: {what}\n--- the task's log:\n{task.log()[-12000:]}", flush=True)
    for api in apis:
        print(api, metadata(api, topic), flush=True)
    raise SystemExit(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--acks", choices=["1", "all"], default=None,
                    help="the connector's acks (default: its own, \"all\" on a cluster); "
                    "1 shows the loss it had")
    args = ap.parse_args()
    why = available()
    if why:
        print(f"connect_chaos: {why}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="connect-chaos-") as tmp:
        root = Path(tmp)
        zk = start_zookeeper(root / "zk")
        brokers = [start_member(root, zk, i) for i in range(3)]
        every = ",".join(b.api for b in brokers)
        times = []
        try:
            for n in range(args.rounds):
                times.append(one_round(n, rng, root, zk, brokers, every, args.acks))
                print(f"round {n}: every line once, {times[-1]:.1f} s", flush=True)
        finally:
            for b in brokers:
                b.stop()
            zk.stop()
    times.sort()
    print(f"{args.rounds} rounds, each line once in every one; time a round: median "
          f"{times[len(times) // 2]:.1f} s, slowest {times[-1]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
