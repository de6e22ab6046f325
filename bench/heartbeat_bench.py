"""What an idle broker pays per heartbeat, against the floor of any Python ZeroMQ server.

    python bench/heartbeat_bench.py [--groups 1000] [--seconds 20] [--runs 3]

Rail: a broker, ``--groups`` one-member groups (raw DEALER clients, four sockets) joined
to a 10-partition topic, heartbeating at the interval the broker hands out (3.3 s with the
default 10 s session), spread evenly over it, as scale_bench's groups sweep does.  The
floor: a ROUTER that echoes each message back, woken the same way (epoll on its FD), sent
the same number of requests per second, spread the same way.  Both are measured by their
process's CPU time over the window; medians of the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port  # noqa: E402

ECHO = """
import select, sys, zmq
s = zmq.Context().socket(zmq.ROUTER)
s.bind(sys.argv[1])
print("ready", flush=True)
ep = select.epoll()
ep.register(s.getsockopt(zmq.FD), select.EPOLLIN)
while True:
    ep.poll(1.0)
    while s.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        s.send_multipart(s.recv_multipart())
"""


def drive(sockets: list[zmq.Socket], requests: list[tuple[zmq.Socket, bytes]], rate: float,
          seconds: float, proc: psutil.Process) -> tuple[float, int]:
    """Send ``requests`` round robin at ``rate`` per second, evenly spaced, for ``seconds``;
    return the server's CPU time over the window and the count sent."""
    poller = zmq.Poller()
    for s in sockets:
        poller.register(s, zmq.POLLIN)
    start, before = time.monotonic(), proc.cpu_times()
    sent, due = 0, start
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        while due <= now:
            sock, body = requests[sent % len(requests)]
            sock.send(body)
            sent += 1
            due += 1 / rate
        for s, _ in poller.poll(max(0, int((due - time.monotonic()) * 1000))):
            while s.poll(0):
                s.recv()
    after = proc.cpu_times()
    return after.user + after.system - before.user - before.system, sent


@contextlib.contextmanager
def serving(command: list[str]) -> Iterator[tuple[psutil.Process, list[zmq.Socket]]]:
    """Start a server (``command`` + its endpoint; it prints a line once ready), and four
    DEALER sockets connected to it; stop both by the end."""
    api = f"tcp://127.0.0.1:{free_port()}"
    server = subprocess.Popen([*command, api], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    context = zmq.Context()
    sockets = [context.socket(zmq.DEALER) for _ in range(4)]
    try:
        assert server.stdout is not None
        server.stdout.readline()
        for s in sockets:
            s.connect(api)
        yield psutil.Process(server.pid), sockets
    finally:
        for s in sockets:
            s.close(linger=0)
        context.term()
        server.kill()
        server.wait(10)


def rail_run(groups: int, seconds: float) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="rail-hb-")
    broker = [sys.executable, "-m", "brokerd", "--data-dir", folder,
              "--ingest", f"tcp://127.0.0.1:{free_port()}", "--bind"]
    with serving(broker) as (proc, sockets):
        def call(s: zmq.Socket, request: dict[str, Any]) -> dict[str, Any]:
            s.send(msgspec.msgpack.encode(request))
            return msgspec.msgpack.decode(s.recv())
        call(sockets[0], {"op": "create_topic", "id": 1, "topic": "t", "partitions": 10})
        requests = []
        interval_ms = 3333
        for g in range(groups):
            s = sockets[g % len(sockets)]
            reply = call(s, {"op": "join", "id": 1, "group": f"g{g}", "topics": ["t"]})
            interval_ms = reply["heartbeat_interval_ms"]
            requests.append((s, msgspec.msgpack.encode(
                {"op": "heartbeat", "id": 2, "group": f"g{g}", "member_id": reply["member_id"]})))
        cpu, sent = drive(sockets, requests, groups / (interval_ms / 1000), seconds, proc)
    return {"rate": sent / seconds, "cpu_pct": 100 * cpu / seconds, "us": 1e6 * cpu / sent}


def echo_run(rate: float, seconds: float) -> dict[str, Any]:
    with serving([sys.executable, "-c", ECHO]) as (proc, sockets):
        cpu, sent = drive(sockets, [(s, b"x" * 80) for s in sockets], rate, seconds, proc)
    return {"rate": sent / seconds, "cpu_pct": 100 * cpu / seconds, "us": 1e6 * cpu / sent}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rail, echo = [], []
    for run in range(args.runs):
        rail.append(rail_run(args.groups, args.seconds))
        echo.append(echo_run(rail[-1]["rate"], args.seconds))
        print(f"run {run + 1}: rail {rail[-1]['cpu_pct']:.2f}% ({rail[-1]['us']:.0f} us/hb), "
              f"echo {echo[-1]['cpu_pct']:.2f}% ({echo[-1]['us']:.0f} us/req) at "
              f"{rail[-1]['rate']:.0f}/s; load {psutil.getloadavg()[0]:.1f}")

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)
    print(f"medians of {args.runs}: rail {med(rail, 'cpu_pct'):.2f}% of a core, "
          f"{med(rail, 'us'):.0f} us per heartbeat; echo floor {med(echo, 'cpu_pct'):.2f}%, "
          f"{med(echo, 'us'):.0f} us per request; rail / floor "
          f"{med(rail, 'us') / med(echo, 'us'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
