"""Rate limits: under ``rail up``, ``rate = "40/s"`` holds for a worker's replicas together
within 5% over 10 s, and what is not handled yet waits in the log (lag), none dropped; a
rate per key (``--key-rate``) holds each key without holding the others back."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from brokerd import protocol as p
from runtime.client import Producer
from runtime.connection import Connection
from tests.helpers import wait_for, written_lines
from tests.integration.test_supervisor import Rail, rail  # noqa: F401
from tests.integration.test_worker import Workers

STAMPER = """
import os, time
def handle(event, ctx):
    with open({out!r}, "a") as f:
        f.write(f"{{os.getpid()}} {{time.time()}}\\n")
"""


def test_a_rate_limit_holds_within_5_percent_over_10_s_across_replicas(rail: Rail) -> None:  # noqa: F811
    rail.script("stamp.py", STAMPER.format(out=str(rail.out)))
    rail.write_toml('[workers.stamp]\nscript = "stamp.py"\ntopics = ["orders"]\nreplicas = 2\n'
                    'rate = "40/s"\n', topics="[topics.orders]\npartitions = 2\n")
    with_events = 1000
    rail.up()
    with Producer(rail.api) as producer:
        for i in range(with_events):
            producer.send("orders", i, key=str(i))
    wait_for(lambda: rail.running("stamp", 2), timeout=20, what="2 replicas")

    def stamps() -> dict[int, list[float]]:
        out: dict[int, list[float]] = defaultdict(list)
        for line in written_lines(rail.out):
            pid, at = line.split()
            out[int(pid)].append(float(at))
        return out

    # the window starts once both replicas handle (until the 2nd joins, the 1st has both
    # partitions at its own share of the rate)
    wait_for(lambda: len(stamps()) == 2, timeout=20, what="both replicas handling")
    start = max(times[0] for times in stamps().values()) + 0.5
    time.sleep(max(0.0, start + 10.5 - time.time()))
    handled = sum(1 for times in stamps().values() for t in times if start <= t < start + 10)
    assert 380 <= handled <= 420, handled
    conn = Connection(rail.api)
    try:
        group = conn.call(p.DescribeGroup(group="stamp"))
    finally:
        conn.close()
    assert sum(g.lag or 0 for g in group.partitions) > 0  # the rest waits, visibly


def test_a_rate_per_key_holds_each_key_and_lets_the_others_go(workers: Workers,
                                                              tmp_path: Path) -> None:
    with Producer(workers.broker.api) as producer:
        producer._call(p.CreateTopic(topic="orders", partitions=1))
        for i in range(300):
            producer.send("orders", i, key="ab"[i % 2])
    out = tmp_path / "out.txt"
    workers.start(workers.script("""
        import os, time
        def handle(event, ctx):
            with open(os.environ["OUT"], "a") as f:
                f.write(f"{event.key} {time.time()}\\n")
        """), "--key-rate", "20", env={"OUT": str(out)})

    def stamps() -> dict[str, list[float]]:
        got: dict[str, list[float]] = defaultdict(list)
        for line in written_lines(out):
            key, at = line.split()
            got[key].append(float(at))
        return got

    wait_for(lambda: len(stamps()) == 2, timeout=20, what="both keys handled")
    start = min(times[0] for times in stamps().values()) + 0.5
    time.sleep(max(0.0, start + 3.5 - time.time()))
    for key, times in stamps().items():
        handled = sum(1 for t in times if start <= t < start + 3)
        assert 57 <= handled <= 63, (key, handled)  # 20/s each, side by side
