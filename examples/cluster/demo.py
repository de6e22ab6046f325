"""The pizzeria on a three-broker cluster, with a leader killed mid-way:

    python examples/cluster/demo.py [--orders 200] [--keep]

Needs Debian's ``zookeeper`` package (it brings Java).  In a temp folder, on free loopback
ports, it starts a one-node ZooKeeper and three brokers that join it (``python -m brokerd
--broker-id N --zookeeper ...``), then ``rail up`` with a copy of the pizzeria's rail.toml
and ``--broker`` naming all three (rail.toml's topics are created with three replicas),
its Rail Streams step (``dishes``) included.
The hall takes half the orders (``acks="all"``, the producer's default on a cluster), the
leader of ``orders`` partition 0 is killed with kill -9 while the kitchen cooks them, and
the hall takes the other half from the new leaders.  It ends with the pizzeria's exact count check (every ordered item made
exactly once, the streams step's dishes per station equal to the tally, every group's lag
0).  Everything it started is stopped by its pid, also on
a failure or Ctrl-C; the exit code is 0 only if the check passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from brokerd import protocol as p
from runtime.connection import BrokerError, Connection
from runtime.routing import Router
from tests.cluster.client import start_member
from tests.cluster.zookeeper import ZooKeeper, available, start_zookeeper
from tests.helpers import BrokerProcess

BROKERS = 3


def load(name: str, path: Path) -> ModuleType:
    """The pizzeria's demo.py and hall.py, reused (not copied) by path: this file is a
    ``demo`` module too."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pizzeria = load("pizzeria_demo", ROOT / "examples" / "pizzeria" / "demo.py")
hall = load("pizzeria_hall", ROOT / "examples" / "pizzeria" / "hall.py")
Fail = pizzeria.Fail


class Cluster:
    """ZooKeeper, the brokers and ``rail up``: what this demo started, stopped by pid."""

    def __init__(self) -> None:
        self.zookeeper: ZooKeeper | None = None
        self.brokers: dict[int, BrokerProcess] = {}
        self.up: subprocess.Popen[bytes] | None = None

    def pids(self) -> list[int]:
        procs = [self.up, *(b.proc for b in self.brokers.values()),
                 *(self.zookeeper.procs if self.zookeeper else [])]
        return [proc.pid for proc in procs if proc is not None]

    def stop(self) -> None:
        pids = self.pids()
        if self.up is not None:
            pizzeria.stop(self.up)  # SIGTERM (its workers stop first), SIGKILL after a grace
        for broker in self.brokers.values():
            broker.stop()
        if self.zookeeper is not None:
            self.zookeeper.stop()
        print("cluster: stopped pids " + " ".join(map(str, pids)), flush=True)


def start_cluster(cluster: Cluster, tmp: Path) -> str:
    """ZooKeeper and three brokers; the brokers' endpoints, comma-separated, once every
    broker sees all three (so topics get three replicas)."""
    cluster.zookeeper = start_zookeeper(tmp / "zk")
    for broker_id in range(BROKERS):
        cluster.brokers[broker_id] = start_member(tmp / "brokers", cluster.zookeeper,
                                                  broker_id)
    every = ",".join(b.api for b in cluster.brokers.values())
    pizzeria.wait(lambda: all(brokers_seen(b.api) == BROKERS for b in cluster.brokers.values()),
                  30, "every broker to see the others", lambda: None)
    print(f"cluster: ZooKeeper at {cluster.zookeeper.hosts}, brokers "
          + ", ".join(f"{i}={b.api}" for i, b in cluster.brokers.items()))
    return every


def brokers_seen(api: str) -> int:
    """How many live brokers the broker at ``api`` knows of."""
    conn = Connection(api, timeout_s=5)
    try:
        return len(conn.call(p.Metadata(topics=[])).brokers)
    except BrokerError:
        return 0
    finally:
        conn.close()


def leader_of(router: Router, topic: str, partition: int) -> int:
    meta = router.call(p.Metadata(topics=[topic]))
    return meta.topics[0].partitions[partition].leader


def run_demo(args: argparse.Namespace, tmp: Path, cluster: Cluster) -> int:
    every = start_cluster(cluster, tmp)
    toml, config = pizzeria.prepare(tmp)
    data = Path(config["broker"]["data_dir"])
    up_log = tmp / "rail-up.log"
    print(f"pizzeria: rail up -c {toml} --broker {every}")
    with open(up_log, "w") as log:
        cluster.up = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "up", "-c", str(toml), "--broker", every],
            cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=pizzeria.env())
    alive = pizzeria.watch(cluster.up, up_log)
    router = Router(every, timeout_s=5)
    try:
        pizzeria.wait(lambda: pizzeria.stations_ready(router, config), pizzeria.READY_S,
                      "every station to join", alive)
        print("pizzeria: every station is at its post")
        started = time.monotonic()
        first = args.orders // 2
        expected = [hall.take_orders(every, first)]
        victim = leader_of(router, "orders", 0)
        cluster.brokers[victim].kill9()
        print(f"cluster: took {first} orders, then killed broker {victim} (leader of "
              "orders[0]) with kill -9")
        expected.append(hall.take_orders(every, args.orders - first))
        print(f"cluster: took {args.orders - first} more orders from the new leaders")
        return pizzeria.count_check(router, config, data, merged(expected), started,
                                    args.timeout, alive)
    finally:
        router.close()


def merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The expected counts of several hall runs as one."""
    items = {kind: sum(part["items"][kind] for part in parts) for kind in parts[0]["items"]}
    return {"orders": sum(part["orders"] for part in parts), "items": items,
            "total": sum(items.values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds to wait for the kitchen (default 120)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (data, logs)")
    args = ap.parse_args()
    why = available()
    if why:
        print(f"cluster: cannot run: ZooKeeper {why}", file=sys.stderr)
        return 1
    # SIGTERM as Ctrl-C: the finally below stops what was started
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    tmp = Path(tempfile.mkdtemp(prefix="rail-cluster-"))
    cluster = Cluster()
    try:
        return run_demo(args, tmp, cluster)
    except (Fail, BrokerError, TimeoutError, RuntimeError) as exc:
        print(f"cluster: FAIL: {exc} (data and logs kept in {tmp})", file=sys.stderr)
        args.keep = True
        return 1
    except KeyboardInterrupt:
        print("cluster: interrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        cluster.stop()
        if args.keep:
            print(f"cluster: data and logs in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
