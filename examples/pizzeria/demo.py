"""The whole pizzeria in one command, on free ports in a temp folder:

    python examples/pizzeria/demo.py [--orders 200] [--keep] [--hall python|node]

Starts ``rail up`` with a copy of rail.toml, waits for every station to join, takes the
orders with hall.py (or, with ``--hall node``, the Node producer of
examples/node), waits until the tally has counted every ordered item, prints what each
station made, checks the counts and every group's lag, then stops ``rail up`` (SIGTERM,
SIGKILL after a grace period).  Exits 1 with a FAIL line if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from brokerd import protocol as p
from runtime.connection import BrokerError, Connection

READY_S = 60.0
STOP_GRACE_S = 20.0


class Fail(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def dump_toml(config: dict[str, Any]) -> str:
    """Enough TOML for rail.toml: tables of scalars and lists, nested one or two deep."""
    out: list[str] = []
    def table(name: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if scalars or not body:
            out.append(f"[{name}]")
            out.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
            out.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{name}.{json.dumps(k) if '.' in k else k}", v)
    for name, body in config.items():
        table(name, body)
    return "\n".join(out)


def prepare(tmp: Path, without: tuple[str, ...] = ()) -> tuple[Path, dict[str, Any]]:
    """A copy of rail.toml with free ports, data in ``tmp`` and absolute script paths,
    without the workers named in ``without``."""
    config = tomllib.loads((HERE / "rail.toml").read_text())
    for name in without:
        del config["workers"][name]
    config["broker"].update(data_dir=str(tmp / "data"),
                            bind=f"tcp://127.0.0.1:{free_port()}",
                            ingest=f"tcp://127.0.0.1:{free_port()}")
    config["supervisor"]["control"] = f"tcp://127.0.0.1:{free_port()}"
    for spec in config["workers"].values():
        spec["script"] = str((HERE / spec["script"]).resolve())
    path = tmp / "rail.toml"
    path.write_text(dump_toml(config))
    return path, config


def wait(predicate: Callable[[], Any], timeout: float, what: str,
         alive: Callable[[], None]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        alive()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def describe(conn: Connection, group: str) -> p.DescribeGroupReply | None:
    try:
        return conn.call(p.DescribeGroup(group=group), timeout_s=5)
    except BrokerError:
        return None


def stations_ready(conn: Connection, config: dict[str, Any]) -> bool:
    for name, spec in config["workers"].items():
        reply = describe(conn, spec.get("group") or name)
        if reply is None or len(reply.members) < spec.get("replicas", 1):
            return False
    return True


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_demo(args: argparse.Namespace, tmp: Path) -> int:
    toml, config = prepare(tmp)
    data = Path(config["broker"]["data_dir"])
    api = config["broker"]["bind"]
    up_log = tmp / "rail-up.log"
    print(f"pizzeria: rail up -c {toml}  (logs in {data / 'logs'})")
    with open(up_log, "w") as log:
        up = subprocess.Popen([sys.executable, "-m", "runtime.cli", "up", "-c", str(toml)],
                              cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=env())
    try:
        return check_kitchen(args, config, api, data, up, up_log)
    finally:
        stop(up)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def watch(up: subprocess.Popen[bytes], up_log: Path) -> Callable[[], None]:
    """A check that ``rail up`` still runs: Fail with the tail of its log if not."""
    def alive() -> None:
        if up.poll() is not None:
            tail = "\n".join(up_log.read_text(errors="replace").splitlines()[-15:])
            raise Fail(f"rail up exited with code {up.returncode}:\n{tail}")
    return alive


def check_kitchen(args: argparse.Namespace, config: dict[str, Any], api: str, data: Path,
                  up: subprocess.Popen[bytes], up_log: Path) -> int:
    alive = watch(up, up_log)
    conn = Connection(api, timeout_s=5)
    try:
        wait(lambda: stations_ready(conn, config), READY_S, "every station to join", alive)
        print("pizzeria: every station is at its post")
        started = time.monotonic()
        expected_path = data / "expected.json"
        hall = [sys.executable, str(HERE / "hall.py")] if args.hall == "python" else \
            ["node", str(ROOT / "examples" / "node" / "producer.js")]  # npm ci there first
        subprocess.run([*hall, "--broker", api, "--orders", str(args.orders), "--expected",
                        str(expected_path)], check=True, env=env())
        expected = json.loads(expected_path.read_text())
        return count_check(conn, config, data, expected, started, args.timeout, alive)
    finally:
        conn.close()


def count_check(conn: Any, config: dict[str, Any], data: Path, expected: dict[str, Any],
                started: float, timeout: float, alive: Callable[[], None]) -> int:
    """Wait until the tally counted every ordered item and every group's lag is 0, then
    print the report and check the counts: 0 if every item was made exactly once.
    ``conn``: a Connection to the broker, or a Router over a cluster's brokers.  Without
    the streams worker (``dishes``) in ``config`` its table is not compared."""
    tally_path = data / "tally.json"
    tally = wait(lambda: (t := read_json(tally_path)) and t["dishes"] >= expected["total"]
                 and t, timeout, f"the tally to count {expected['total']} dishes", alive)
    elapsed = time.monotonic() - started
    lags = wait(lambda: zero_lags(conn, config), 30, "every group to reach lag 0", alive)
    streams = "dishes" in config["workers"]
    return report(expected, tally, lags, elapsed, dishes_per_station(conn) if streams else None)


def dishes_per_station(conn: Connection) -> dict[str, int]:
    """The streams step's table, summed over its minutes: dishes per station."""
    from runtime.streams import query
    totals: dict[str, int] = {}
    for (station, _minute), (count, _closed) in query.decoded(
            query.table(conn, "dishes", "per-station-minute")):
        totals[station] = totals.get(station, 0) + count
    return totals


def zero_lags(conn: Connection, config: dict[str, Any]) -> dict[str, int] | None:
    lags = {}
    for name, spec in config["workers"].items():
        group = spec.get("group") or name
        reply = describe(conn, group)
        if reply is None:
            return None
        lags[group] = sum(gp.lag for gp in reply.partitions)
    return lags if not any(lags.values()) else None


def report(expected: dict[str, Any], tally: dict[str, Any], lags: dict[str, int],
           elapsed: float, per_minute: dict[str, int] | None) -> int:
    for station, cooks in sorted(tally["by_station"].items()):
        detail = ", ".join(f"{c}: {n}" for c, n in sorted(cooks.items()))
        print(f"  {station:8} made {sum(cooks.values()):5} dishes  ({detail})")
    print(f"  tally    counted {tally['dishes']} dishes for {tally['orders']} orders, "
          f"dropped {tally['duplicates']} redelivered duplicates")
    print("  groups   " + ", ".join(f"{g} lag {n}" for g, n in lags.items()))
    made_by_station = {s: sum(c.values()) for s, c in tally["by_station"].items()}
    streams_ok = per_minute is None or per_minute == made_by_station
    if per_minute is not None:
        print("  dishes   per station and minute (Rail Streams), summed: "
              + ", ".join(f"{s} {n}" for s, n in sorted(per_minute.items()))
              + (": equal to the tally" if streams_ok else ": DIFFERENT from the tally"))
    made = tally["by_kind"]
    ordered = expected["items"]
    line = ", ".join(f"{kind} {made.get(kind, 0)}/{n}" for kind, n in ordered.items())
    print(f"summary: {expected['orders']} orders, {expected['total']} items in "
          f"{elapsed:.1f} s; made/ordered: {line}")
    if all(made.get(kind, 0) == n for kind, n in ordered.items()) \
            and tally["dishes"] == expected["total"] and streams_ok:
        print("every ordered item made exactly once: OK")
        return 0
    print("every ordered item made exactly once: FAIL (made/ordered differ, see above)")
    return 1


def stop(up: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``rail up`` (it stops its workers and broker), SIGKILL after the grace."""
    if up.poll() is not None:
        return
    up.send_signal(signal.SIGTERM)
    try:
        up.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        up.kill()
        up.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds to wait for the kitchen (default 120)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (data, logs)")
    ap.add_argument("--hall", choices=["python", "node"], default="python",
                    help="who takes the orders: hall.py, or examples/node/producer.js")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rail-pizzeria-"))
    try:
        return run_demo(args, tmp)
    except (Fail, subprocess.CalledProcessError) as exc:
        print(f"pizzeria: FAIL: {exc} (data and logs kept in {tmp})", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        if args.keep:
            print(f"pizzeria: data and logs in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
