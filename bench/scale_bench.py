"""Rail at scale: partitions, consumer groups and connections, with Redis Streams alongside.

    python bench/scale_bench.py --quick    # smoke test: small sizes, 1 run (~3 min)
    python bench/scale_bench.py            # full: 3 runs, medians (~15 min on 2 cores)

Three sweeps, each point on a fresh broker (``python -m brokerd``, free loopback ports,
temp data dir, fsync "interval"), every client in a process of its own:

  partitions   10 / 100 / 1,000 / 10,000 (10 topics x 1,000: a topic holds at most 1,024).
               Keyed produce: one ``Producer``, ``send()`` with a distinct key per event,
               round robin over the topics, one flush.  Group consume: one ``Consumer`` of a
               new group polls and commits them all.  Redis, same run: as many streams,
               XADD pipelined to the stream each key hashes to, then one XREADGROUP
               consumer over all the streams (XACK per read).
  groups       1 / 100 / 1,000 groups of one member each, all held by one process on a
               DEALER socket per 250 members, heartbeating at the interval the broker gives
               (default session).  Each group drains a 10-partition topic of
               group-events / G events and commits; keyed produce to another topic runs
               while they heartbeat; idle CPU is measured while they heartbeat.
  connections  1 / 1,000 DEALER connections held by one process, which produces the keyed
               events over all of them (raw produce requests of 100 records, 8 in flight
               per connection); the group consume runs with them open; idle CPU with them
               open; the kill -9 restart with them reconnecting.

At each point: events/s, broker CPU per event (all its threads, from /proc), RSS, idle CPU
(psutil cpu_times over the idle window), open descriptors, the time of ``metadata`` (every
topic) and ``describe_group``, and the restart after kill -9 (from ``Popen`` to the first
``ping`` reply, same data and ports).  ``OUT_OF_ORDER_SEQUENCE`` is read from the broker's
``stats`` counts around each produce.  Targets (issue 11) are checked on the medians.

Beside it: ``scale_broker`` (the broker under test, seen from outside), ``scale_clients``
(Rail's clients and the processes that hold many members or connections), ``scale_redis``
(Redis Streams doing the same) and ``scale_report`` (medians, targets, tables).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # spawned children inherit sys.path: they import runtime/
    sys.path.insert(0, str(ROOT))

if __package__:
    from .common import cpu_stall_us, run_in_process, spawn, wait_until
    from .scale_broker import STARTED, ScaleBroker
    from .scale_clients import group_consume, hold_connections, hold_members, keyed_produce
    from .scale_redis import redis_groups, redis_streams
    from .scale_report import report
else:  # run as a script
    from common import cpu_stall_us, run_in_process, spawn, wait_until
    from scale_broker import STARTED, ScaleBroker
    from scale_clients import group_consume, hold_connections, hold_members, keyed_produce
    from scale_redis import redis_groups, redis_streams
    from scale_report import report

from brokerd import protocol as p  # noqa: E402

SIZE = 100  # bytes per event
MAX_PARTITIONS = 1000  # per topic here (the broker allows 1,024)
GROUP_TOPIC_PARTITIONS = 10  # topic of the groups and connections sweeps
OOO = "error.OUT_OF_ORDER_SEQUENCE"
SETTLE_S = 2.0  # quiet before an idle measurement: the interval flush and trims run out
CHILD_TIMEOUT_S = 900.0
FULL: dict[str, Any] = {"partitions": [10, 100, 1000, 10000], "groups": [1, 100, 1000],
                        "connections": [1, 1000], "events": 200_000, "group_events": 200_000,
                        "idle_s": 10.0, "idle_target_s": 30.0, "runs": 3}
QUICK: dict[str, Any] = {**FULL, "events": 20_000, "group_events": 20_000, "idle_s": 3.0,
                         "idle_target_s": 5.0, "runs": 1}


# --- measurements on one broker ---------------------------------------------------


def _result(child: Any, broker: ScaleBroker, timeout: float) -> Any:
    """The child's result; fail at once (not at the timeout) if the broker died meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return child.result(1.0)
        except TimeoutError:
            died = broker.death_note()
            if died:
                raise RuntimeError(died) from None
            if time.monotonic() > deadline:
                raise


def _produce(broker: ScaleBroker, topics: list[str], n: int) -> dict[str, Any]:
    """Keyed ``Producer.send`` in a child process; rate, broker CPU per event, OOO errors."""
    before = broker.counts()
    cpu = broker.cpu_s()
    with spawn(keyed_produce, broker.api, topics, n, SIZE) as child:
        out = _result(child, broker, CHILD_TIMEOUT_S)
    cpu = broker.cpu_s() - cpu
    after = broker.counts()
    if out["errors"]:
        print(f"  producer errors: {out['errors']} {out['first_errors']}", flush=True)
    return {"produce": n / out["seconds"], "produce_us": cpu / n * 1e6, "produce_client_us": out["cpu_s"] / n * 1e6,
            "ooo": after[OOO] - before[OOO], "events_per_request": n / max(1, after["requests"] - before["requests"] - 1),
            "producer_errors": out["errors"], "replies_dropped": after["replies_dropped"] - before["replies_dropped"]}


def _consume(broker: ScaleBroker, topics: list[str], n: int, group: str) -> dict[str, Any]:
    """One ``Consumer`` drains n events in a child process; rate, broker CPU per event."""
    cpu = broker.cpu_s()
    with spawn(group_consume, broker.api, topics, n, group) as child:
        out = _result(child, broker, CHILD_TIMEOUT_S)
    cpu = broker.cpu_s() - cpu
    return {"consume": n / out["seconds"], "consume_us": cpu / n * 1e6, "consume_client_us": out["cpu_s"] / n * 1e6}


def _steady(broker: ScaleBroker, idle_s: float, group: str) -> dict[str, Any]:
    """RSS, descriptors, idle CPU over ``idle_s``, and two admin requests, timed."""
    time.sleep(SETTLE_S)
    idle = broker.idle_cpu_pct(idle_s)
    metadata = broker.request_ms(lambda: p.Metadata())
    describe = broker.request_ms(lambda: p.DescribeGroup(group=group))
    return {"idle_cpu_pct": idle, "idle_s": idle_s, "rss_mb": broker.rss_mb(), "fds": broker.fds(),
            "metadata_ms": metadata[0], "metadata_decoded_ms": metadata[1],
            "describe_ms": describe[0], "describe_decoded_ms": describe[1]}


def _restart(broker: ScaleBroker) -> dict[str, Any]:
    seconds = broker.kill9_restart()
    return {"restart_s": seconds, "rss_restart_mb": broker.rss_mb()}


def _stage(row: dict[str, Any], broker: ScaleBroker, name: str, measure: Any) -> bool:
    """``row.update(measure())``; a failure is written down in ``row["failures"]`` instead of
    ending the run, and a broker that died is started again for the stages that follow."""
    try:
        row.update(measure())
        return True
    except Exception as exc:  # noqa: BLE001 - recorded in the results, and the run goes on
        died = broker.death_note()
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        note = died or f"{type(exc).__name__}: {lines[-1][:300]}"
        row.setdefault("failures", []).append(f"{name}: {note}")
        print(f"  FAILED {row['sweep']} {row['size']:,} {name}: {note}", flush=True)
        if died:
            row["crash_restart_s"] = broker.start()  # the next stages run on a restarted broker
        return False


def _await_phase(flags: Path, phase: str, child: Any, broker: ScaleBroker, timeout: float) -> dict[str, Any]:
    path = flags / f"{phase}.json"

    def done() -> bool:
        child.ensure_alive()
        died = broker.death_note()
        if died:
            raise RuntimeError(died)
        return path.exists()

    wait_until(done, timeout, interval=0.02, what=phase)
    return dict(json.loads(path.read_text()))


def _idle_for(size: int, target_size: int, sizes: dict[str, Any]) -> float:
    """The idle window: the targets' points get the long one (>= 30 s in a full run)."""
    return sizes["idle_target_s"] if size == target_size else sizes["idle_s"]


# --- the three sweeps --------------------------------------------------------------


def partitions_point(count: int, sizes: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``count`` partitions in ceil(count / 1000) topics; Rail, then Redis with as many streams."""
    topics = [f"keyed{t}" for t in range(math.ceil(count / MAX_PARTITIONS))]
    n, group = sizes["events"], "scale-consumer"
    row: dict[str, Any] = {"sweep": "partitions", "size": count}
    with ScaleBroker(folder, sizes["nofile"]) as broker:
        started = time.perf_counter()
        for topic in topics:
            broker.call(p.CreateTopic(topic=topic, partitions=count // len(topics)), timeout_s=300.0)
        row["setup_s"] = time.perf_counter() - started
        _stage(row, broker, "produce", lambda: _produce(broker, topics, n))
        _stage(row, broker, "consume", lambda: _consume(broker, topics, n, group))
        _stage(row, broker, "steady", lambda: _steady(broker, _idle_for(count, 10_000, sizes), group))
        _stage(row, broker, "restart", lambda: _restart(broker))
    try:
        row.update({f"redis_{k}": v for k, v in redis_streams(count, n, SIZE).items()})
    except Exception as exc:  # noqa: BLE001 - recorded; Rail's figures stand alone
        row.setdefault("failures", []).append(f"redis: {type(exc).__name__}: {str(exc)[:300]}")
    return row


def _drain(broker: ScaleBroker, flags: Path, holder: Any) -> dict[str, Any]:
    cpu = broker.cpu_s()
    (flags / "go").touch()
    drained = _await_phase(flags, "drained", holder, broker, CHILD_TIMEOUT_S)
    events = drained["events"]
    return {"consume": events / drained["seconds"], "consume_us": (broker.cpu_s() - cpu) / events * 1e6,
            "consume_client_us": drained["cpu_s"] / events * 1e6}


def _heartbeat_idle(broker: ScaleBroker, count: int, interval_s: float, idle_s: float) -> dict[str, Any]:
    out = _steady(broker, idle_s, "scale-g0")
    beats_per_s = count / interval_s  # broker CPU per heartbeat, as if all idle CPU were theirs
    return {**out, "heartbeats_per_s": beats_per_s,
            "idle_us_per_heartbeat": out["idle_cpu_pct"] / 100 / beats_per_s * 1e6}


def _stop_members(flags: Path, holder: Any) -> dict[str, Any]:
    (flags / "stop").touch()
    held = holder.result(60.0)
    if held["errors"]:
        print(f"  member errors: {held['errors']}", flush=True)
    return {"heartbeats_idle": held["heartbeats_idle"], "client_errors": sum(held["errors"].values())}


def groups_point(count: int, sizes: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``count`` one-member groups draining a shared topic, then heartbeating."""
    per_group = max(sizes["group_events"] // count, 100)
    row: dict[str, Any] = {"sweep": "groups", "size": count}
    flags = folder / "flags"
    flags.mkdir(parents=True)
    with ScaleBroker(folder, sizes["nofile"]) as broker:
        for topic in ("shared", "keyed"):
            broker.call(p.CreateTopic(topic=topic, partitions=GROUP_TOPIC_PARTITIONS))
        run_in_process(keyed_produce, broker.api, ["shared"], per_group, SIZE, timeout=CHILD_TIMEOUT_S)
        with spawn(hold_members, broker.api, "shared", count, per_group, str(flags), CHILD_TIMEOUT_S) as holder:
            joined = _await_phase(flags, "joined", holder, broker, CHILD_TIMEOUT_S)
            row["setup_s"] = joined["seconds"]
            _stage(row, broker, "drain", lambda: _drain(broker, flags, holder))
            _stage(row, broker, "produce", lambda: _produce(broker, ["keyed"], sizes["events"]))
            _stage(row, broker, "steady", lambda: _heartbeat_idle(broker, count, joined["interval_s"],
                                                                   _idle_for(count, 1000, sizes)))
            _stage(row, broker, "members", lambda: _stop_members(flags, holder))
        _stage(row, broker, "restart", lambda: _restart(broker))
    try:
        row.update({f"redis_{k}": v for k, v in redis_groups(count, per_group, GROUP_TOPIC_PARTITIONS, SIZE).items()})
    except Exception as exc:  # noqa: BLE001 - recorded; Rail's figures stand alone
        row.setdefault("failures", []).append(f"redis: {type(exc).__name__}: {str(exc)[:300]}")
    return row


def _produce_over(broker: ScaleBroker, flags: Path, holder: Any, n: int) -> dict[str, Any]:
    cpu = broker.cpu_s()
    (flags / "go").touch()
    produced = _await_phase(flags, "produced", holder, broker, CHILD_TIMEOUT_S)
    return {"produce": n / produced["seconds"], "produce_us": (broker.cpu_s() - cpu) / n * 1e6,
            "produce_client_us": produced["cpu_s"] / n * 1e6,
            "client_errors": sum(produced["errors"].values())}


def connections_point(count: int, sizes: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``count`` connections producing together, then open and idle."""
    n = sizes["events"]
    row: dict[str, Any] = {"sweep": "connections", "size": count}
    flags = folder / "flags"
    flags.mkdir(parents=True)
    with ScaleBroker(folder, sizes["nofile"]) as broker:
        broker.call(p.CreateTopic(topic="keyed", partitions=GROUP_TOPIC_PARTITIONS))
        with spawn(hold_connections, broker.api, "keyed", count, n, SIZE, str(flags), CHILD_TIMEOUT_S) as holder:
            row["setup_s"] = _await_phase(flags, "connected", holder, broker, CHILD_TIMEOUT_S)["seconds"]
            _stage(row, broker, "produce", lambda: _produce_over(broker, flags, holder, n))
            _stage(row, broker, "consume", lambda: _consume(broker, ["keyed"], n, "scale-consumer"))
            _stage(row, broker, "steady", lambda: _steady(broker, _idle_for(count, 1000, sizes), "scale-consumer"))
            _stage(row, broker, "restart", lambda: _restart(broker))  # the connections open: they reconnect
            (flags / "stop").touch()
    return row


# --- runs, report, targets -----------------------------------------------------------

SWEEPS = {"partitions": partitions_point, "groups": groups_point, "connections": connections_point}


def _one_line(row: dict[str, Any]) -> str:
    def fig(key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None else fmt.format(value)

    return (f"produce {fig('produce', '{:,.0f}/s')}, consume {fig('consume', '{:,.0f}/s')}, "
            f"idle {fig('idle_cpu_pct', '{:.2f} %')}, RSS {fig('rss_mb', '{:.0f} MB')}, "
            f"restart {fig('restart_s', '{:.2f} s')}, metadata {fig('metadata_ms', '{:.1f} ms')}, "
            f"OOO {row.get('ooo', '-')}")


def one_run(sizes: dict[str, Any], sweeps: list[str], folder: Path) -> list[dict[str, Any]]:
    rows = []
    for sweep in sweeps:
        for size in sizes[sweep]:
            stall, started = cpu_stall_us(), time.perf_counter()
            try:
                row = SWEEPS[sweep](size, sizes, folder / f"{sweep}-{size}")
            except Exception as exc:  # noqa: BLE001 - the point is recorded as failed; the run goes on
                lines = str(exc).strip().splitlines() or [type(exc).__name__]
                row = {"sweep": sweep, "size": size, "failures": [f"setup: {type(exc).__name__}: {lines[-1][:300]}"]}
                print(f"  FAILED {sweep} {size:,} setup: {row['failures'][0]}", flush=True)
            seconds = time.perf_counter() - started
            after = cpu_stall_us()
            row.update(point_s=seconds, load_avg_1m=os.getloadavg()[0])
            if stall is not None and after is not None:
                row["cpu_wait_pct"] = (after - stall) / 1e4 / seconds
            shutil.rmtree(folder / f"{sweep}-{size}", ignore_errors=True)
            print(f"  {sweep} {size:,}: {seconds:.0f} s, {_one_line(row)}", flush=True)
            rows.append(row)
    return rows


# --- main ------------------------------------------------------------------------------


def leftovers() -> list[str]:
    """Command lines of brokers and redis-servers this run started that still live."""
    found = subprocess.run(["pgrep", "-f", "brokerd|redis-server"], capture_output=True, text=True).stdout
    alive = {int(pid) for pid in found.split()} & set(STARTED)
    out = []
    for pid in alive:
        try:
            out.append(f"{pid} {' '.join(psutil.Process(pid).cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Rail at scale: partitions, groups, connections; Redis alongside.")
    parser.add_argument("--quick", action="store_true", help="smoke test: 20,000 events, short idle windows, 1 run")
    parser.add_argument("--runs", type=int, help="runs to take medians over (default 3, quick 1)")
    parser.add_argument("--only", default="partitions,groups,connections", help="sweeps to run, comma separated")
    parser.add_argument("--partitions", help="partition counts, e.g. 10,1000 (default 10,100,1000,10000)")
    parser.add_argument("--groups", help="group counts (default 1,100,1000)")
    parser.add_argument("--connections", help="connection counts (default 1,1000)")
    parser.add_argument("--events", type=int, help="events per produce and consume (default 200,000; quick 20,000)")
    parser.add_argument("--nofile", type=int, help="open-files limit (soft and hard) for the brokers, at most this shell's hard "
                        "limit; default: this shell's (the broker raises its soft limit to the hard one)")
    parser.add_argument("--json", help="write every figure here (default bench/results/scale-<date>.json)")
    parser.add_argument("--markdown", help="also write the tables, as markdown, to this file")
    return parser.parse_args(argv)


def _sizes(args: argparse.Namespace) -> dict[str, Any]:
    sizes = dict(QUICK if args.quick else FULL)
    for sweep in SWEEPS:
        if getattr(args, sweep):
            sizes[sweep] = [int(x) for x in getattr(args, sweep).split(",")]
    if args.events:
        sizes["events"] = sizes["group_events"] = args.events
    sizes["runs"] = args.runs or sizes["runs"]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if args.nofile and hard != resource.RLIM_INFINITY and args.nofile > hard:
        raise SystemExit(f"--nofile {args.nofile} is above this shell's hard limit ({hard}), which a child cannot raise")
    sizes["nofile"] = args.nofile
    sizes["nofile_limits"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
    return sizes


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds every `with`, so each process is stopped by pid


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


def _uncommitted() -> list[str]:
    """Files of brokerd/ and runtime/ that differ from the commit: the code measured is the tree's."""
    out = subprocess.run(["git", "status", "--porcelain", "--", "brokerd", "runtime"], cwd=ROOT,
                         capture_output=True, text=True)
    return out.stdout.splitlines()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    sizes, sweeps = _sizes(args), args.only.split(",")
    command = "python bench/scale_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    json_path = Path(args.json) if args.json else ROOT / "bench" / "results" / f"scale-{stamp}.json"
    print(f"{command.strip()}: {sizes}", flush=True)
    commit, uncommitted = _commit(), _uncommitted()
    if uncommitted:
        print(f"at {commit} with uncommitted changes to {len(uncommitted)} file(s) of brokerd/ and runtime/", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="rail-scale-"))
    runs: list[list[dict[str, Any]]] = []
    failed = False
    try:
        for run in range(1, sizes["runs"] + 1):
            print(f"run {run}/{sizes['runs']}", flush=True)
            runs.append(one_run(sizes, sweeps, folder / f"run{run}"))
        rows, checks, md = report(runs)
        failed = any(c["result"] == "FAIL" for c in checks)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"command": command.strip(), "commit": commit, "uncommitted": uncommitted,
                                         "date": stamp,
                                         "sizes": sizes, "medians": rows, "targets": checks, "runs": runs},
                                        indent=1, default=str))
        print(f"\nfigures written to {json_path}")
        if args.markdown:
            Path(args.markdown).write_text(f"`{command.strip()}` at {commit}\n\n{md}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        left = leftovers()
        print("left running: " + ("; ".join(left) if left else "nothing (no brokerd or redis-server of this run)"))
    return 1 if left else 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
