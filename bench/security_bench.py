"""What security costs: CURVE against plaintext, and the ACL check, in one run.

    python bench/security_bench.py            # 300,000 events, 3 runs (medians)
    python bench/security_bench.py --quick    # smoke test: 30,000 events, 1 run

Three brokers per run, started alike (fsync=interval) on free loopback ports:
  plaintext   no security options (the default);
  curve       --curve-secret-key and --acl with principals only (allow-list, no rules);
  curve+acl   the same with rules enforced (the client may write and read every topic).
Workloads, from bench/broker_bench.py (clients in their own processes, keys from
RAIL_CURVE_SERVER_KEY / RAIL_CURVE_KEY_FILE like every Rail client):
  W1 produce  Producer.send() per event, and send_many() in chunks of 1,000 (acks=1);
  W2 consume  one group member polls and commits everything send_many() wrote.
The ACL's cost is the broker's CPU time (/proc schedstat, all threads) per event during W1 send(),
curve+acl against curve (the same encryption, so the difference is the check); and the
check itself timed in-process (Security.authorize on a produce, a remembered decision).
Where W2's time goes: the CPU of the broker and of the consumer during W2, each split into
Python (the main and heartbeat threads) and ZeroMQ's I/O thread, where libzmq encrypts and
decrypts every CURVE message; their sum against W2's elapsed time says how many of the
machine's cores W2 kept busy.
Targets (issue 13): W1 and W2 with CURVE >= 70% of plaintext; the ACL adds <= 5% produce CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
for path in (str(ROOT), str(BENCH)):
    if path not in sys.path:  # spawned children inherit sys.path
        sys.path.insert(0, path)

from broker_bench import (
    STARTED,
    RailBroker,
    _rail_drain,
    _rail_send,
    _rail_send_many,
    _topic,
)
from common import median, print_table, spawn

MODES = ("plaintext", "curve", "curve+acl")


class Keys:
    """A broker key pair, a client key pair and the two acl.toml files, in a temp dir."""

    def __init__(self) -> None:
        from runtime.security.keys import new_keypair
        self.dir = Path(tempfile.mkdtemp(prefix="rail-bench-keys-"))
        _, self.broker_secret, _ = new_keypair(self.dir, "broker")
        self.broker_public = self.dir / "broker.key"
        _, self.client_secret, client = new_keypair(self.dir, "bench")
        principal = f'[[principal]]\nname = "bench"\nkey = "{client.decode()}"\n\n'
        self.allow_list = self.dir / "allow-list.toml"
        self.allow_list.write_text(principal)
        self.acl = self.dir / "acl.toml"
        self.acl.write_text(principal + "".join(
            f'[[rule]]\nprincipal = "bench"\nresource = "{kind}"\nname = ""\n'
            f'match = "prefix"\nops = {ops}\n\n'
            for kind, ops in (("topic", '["write", "read"]'), ("group", '["read"]'))))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Broker(RailBroker):
    """bench/broker_bench.py's broker with the security settings in its TOML config."""

    def __init__(self, settings: str) -> None:
        super().__init__("interval")
        self.settings = settings

    def start(self) -> Broker:
        self.dir = tempfile.mkdtemp(prefix="rail-bench-security-")
        config = Path(self.dir, "broker.toml")
        config.write_text(f'{self.settings}[topic_defaults]\nfsync = "interval"\n')
        command = [sys.executable, "-m", "brokerd", "--data-dir", str(Path(self.dir, "data")),
                   "--bind", "tcp://127.0.0.1:*", "--ingest", "tcp://127.0.0.1:*",
                   "--config", str(config), "--log-level", "WARNING"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(Path(self.dir, "broker.log"), "w") as log:
            self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                          env=env, cwd=ROOT)
        STARTED.append(self._proc.pid)
        try:
            self.api = self._read_api_endpoint()
        except BaseException:
            self.stop()
            raise
        return self


def settings(mode: str, keys: Keys) -> str:
    if mode == "plaintext":
        return ""
    acl = keys.acl if mode == "curve+acl" else keys.allow_list
    return f'curve_secret_key = "{keys.broker_secret}"\nacl = "{acl}"\n'


def client_env(mode: str, keys: Keys) -> None:
    """Set (or clear) the client key variables that spawned clients inherit."""
    for name in ("RAIL_CURVE_SERVER_KEY", "RAIL_CURVE_KEY_FILE"):
        os.environ.pop(name, None)
    if mode != "plaintext":
        os.environ["RAIL_CURVE_SERVER_KEY"] = str(keys.broker_public)
        os.environ["RAIL_CURVE_KEY_FILE"] = str(keys.client_secret)


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``'s threads, ZeroMQ's I/O threads (``zmq_io``) apart from the
    rest (``python``), in nanoseconds' precision (the scheduler's sum_exec_runtime;
    psutil's user+system tick by 10 ms, an eighth of a W1 run here)."""
    out = {"python": 0.0, "zmq_io": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
        out["zmq_io" if name.startswith("ZMQbg/IO") else "python"] += ns / 1e9
    return out


def cpu_s(pid: int) -> float:
    """CPU seconds of every thread of ``pid``."""
    return sum(thread_cpu_s(pid).values())


def _drain_cpu(api: str, topic: str, n: int) -> dict[str, float]:
    """broker_bench's W2 (poll and commit all n), with this process's CPU split as
    thread_cpu_s splits it (joining and closing included: a few ms; importing not)."""
    import runtime.client  # noqa: F401 - imported by _rail_drain, here outside the count
    before = thread_cpu_s(os.getpid())
    seconds = _rail_drain(api, topic, n)
    after = thread_cpu_s(os.getpid())
    return {"seconds": seconds, **{k: after[k] - before[k] for k in after}}


def requests(api: str) -> int:
    """The broker's request count (this stats request included)."""
    from brokerd import protocol as p
    from runtime.connection import Connection
    conn = Connection(api, timeout_s=10)  # keys from the environment, as the clients'
    try:
        return int(conn.call(p.Stats()).stats["counts"]["requests"])
    finally:
        conn.close()


def session(mode: str, keys: Keys, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    client_env(mode, keys)
    try:
        with Broker(settings(mode, keys)) as broker:
            asked = requests(broker.api)
            before = cpu_s(broker.pid)
            with spawn(_rail_send, broker.api, _topic("send"), n, 1) as child:
                out["send"] = n / child.result(600.0)
            used = cpu_s(broker.pid) - before
            out["send_cpu_us"] = used / n * 1e6
            out["send_requests"] = requests(broker.api) - asked - 1
            out["request_cpu_us"] = used / out["send_requests"] * 1e6
            bulk = _topic("bulk")
            with spawn(_rail_send_many, broker.api, bulk, n, 1) as child:
                out["send_many"] = n / child.result(600.0)
            before_w2 = thread_cpu_s(broker.pid)
            with spawn(_drain_cpu, broker.api, bulk, n) as child:
                w2 = child.result(600.0)
            broker_w2 = thread_cpu_s(broker.pid)
            out["consume"] = n / w2["seconds"]
            for side, cpu in (("broker", {k: broker_w2[k] - before_w2[k] for k in broker_w2}),
                              ("client", w2)):
                for kind in ("python", "zmq_io"):
                    out[f"w2_{side}_{kind}_us"] = cpu[kind] / n * 1e6
            out["w2_elapsed_us"] = w2["seconds"] / n * 1e6
    finally:
        client_env("plaintext", keys)
    return out


def check_cost_ns(calls: int = 200_000) -> dict[str, float]:
    """Security.authorize on one produce (a remembered decision), and the test a broker
    without security makes instead, per request."""
    import msgspec
    import zmq

    from brokerd import protocol as p
    from brokerd.security import Security
    from brokerd.security.keys import KeyPair

    keys = Keys()
    try:
        public, secret = zmq.curve_keypair()
        security = Security(KeyPair(public, secret), str(keys.acl))
        request = p.Produce(topic="orders", records=msgspec.Raw(b"\x91\x91\xc0"))

        class Frame:  # what zmq.Frame.get("User-Id") returns for a CURVE client
            @staticmethod
            def get(_: str) -> str:
                return "bench"

        frame = Frame()
        started = time.perf_counter()
        for _ in range(calls):
            security.authorize(request, frame)  # type: ignore[arg-type]
        acl_ns = (time.perf_counter() - started) / calls * 1e9
        off: Security | None = None
        started = time.perf_counter()
        for _ in range(calls):
            if off is not None:
                off.authorize(request, frame)  # type: ignore[arg-type]
        off_ns = (time.perf_counter() - started) / calls * 1e9
    finally:
        keys.close()
    return {"acl_check_ns": acl_ns, "no_security_ns": off_ns}


def zmq_ceiling(frames: int = 3000, size: int = 100_000) -> dict[str, float]:
    """Raw pyzmq PUSH -> PULL of ``size``-byte frames over loopback TCP, plaintext and
    CURVE: what the encryption alone costs on this machine (MB/s)."""
    import threading

    import zmq

    def run(curve: bool) -> float:
        ctx = zmq.Context()
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        if curve:
            server_public, server_secret = zmq.curve_keypair()
            public, secret = zmq.curve_keypair()
            pull.curve_server, pull.curve_secretkey = True, server_secret
            push.curve_serverkey, push.curve_publickey, push.curve_secretkey = (
                server_public, public, secret)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        frame = b"x" * size
        push.send(frame)
        pull.recv()  # connected and handshaken before the clock starts
        sender = threading.Thread(target=lambda: [push.send(frame) for _ in range(frames)])
        started = time.perf_counter()
        sender.start()
        for _ in range(frames):
            pull.recv(copy=False)
        elapsed = time.perf_counter() - started
        sender.join()
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
        return frames * size / elapsed / 1e6

    return {"plain_mb_s": run(False), "curve_mb_s": run(True)}


def report(runs: list[dict[str, dict[str, float]]], micro: dict[str, float], n: int) -> None:
    m = {mode: {k: median(r[mode][k] for r in runs) for k in runs[0][mode]} for mode in MODES}
    rows = []
    for key, name in (("send", "W1 produce, send()"), ("send_many", "W1 produce, send_many()"),
                      ("consume", "W2 consume+commit")):
        for mode in ("curve", "curve+acl"):
            ratio = m[mode][key] / m["plaintext"][key]
            rows.append({"workload": name, "security": mode,
                         "plaintext": f"{m['plaintext'][key] / 1e3:,.1f}k/s",
                         "secured": f"{m[mode][key] / 1e3:,.1f}k/s", "ratio": f"{ratio:.2f}",
                         "target": ">= 0.70", "result": "pass" if ratio >= 0.70 else "FAIL"})
    print_table(rows, ["workload", "security", "plaintext", "secured", "ratio", "target",
                       "result"], title=f"CURVE against plaintext: medians of {len(runs)} "
                f"run(s), {n:,} events of 100 bytes")
    base, acl = m["curve"]["send_cpu_us"], m["curve+acl"]["send_cpu_us"]
    extra = (acl - base) / base * 100
    print_table([
        {"measure": "broker CPU per produced event, W1 send()", "curve": f"{base:.2f} us",
         "curve+acl": f"{acl:.2f} us", "acl adds": f"{extra:+.1f}%", "target": "<= 5%",
         "result": "pass" if extra <= 5 else "FAIL"},
        {"measure": "plaintext broker CPU per event (reference)",
         "curve": f"{m['plaintext']['send_cpu_us']:.2f} us", "curve+acl": "-", "acl adds": "-",
         "target": "-", "result": "-"},
    ], ["measure", "curve", "curve+acl", "acl adds", "target", "result"],
        title="The ACL check's CPU on produce")
    w2_rows = []
    for mode in MODES:
        cpu = {k: m[mode][f"w2_{k}_us"] for k in ("broker_python", "broker_zmq_io",
                                                   "client_python", "client_zmq_io")}
        total = sum(cpu.values())
        w2_rows.append({"security": mode, **{k: f"{v:.3f}" for k, v in cpu.items()},
                        "all": f"{total:.3f}", "elapsed": f"{m[mode]['w2_elapsed_us']:.3f}",
                        "cores busy": f"{total / m[mode]['w2_elapsed_us']:.2f}"})
    print_table(w2_rows, ["security", "broker_python", "broker_zmq_io", "client_python",
                          "client_zmq_io", "all", "elapsed", "cores busy"],
                title="Where W2's time goes: CPU us per consumed event (medians)")
    per_request = m["curve"]["request_cpu_us"] * 1000
    share = micro["acl_check_ns"] / per_request * 100
    print(f"\nin-process: Security.authorize(produce) {micro['acl_check_ns']:.0f} ns a request;"
          f" without security the broker tests one attribute: {micro['no_security_ns']:.0f} ns"
          f" (loop included).\nW1 send() made {m['curve']['send_requests']:,.0f} produce "
          f"requests of {n / m['curve']['send_requests']:,.0f} events on average, "
          f"{per_request / 1000:,.1f} us of broker CPU each with CURVE: the check is "
          f"{share:.2f}% of it (target <= 5%: {'pass' if share <= 5 else 'FAIL'})")
    ceiling = {k: median(r["zmq"][k] for r in runs) for k in runs[0]["zmq"]}
    print(f"raw pyzmq PUSH/PULL of 100 KB frames: plaintext {ceiling['plain_mb_s']:,.0f} MB/s,"
          f" CURVE {ceiling['curve_mb_s']:,.0f} MB/s "
          f"({ceiling['curve_mb_s'] / ceiling['plain_mb_s']:.2f} of plaintext)")
    for i, r in enumerate(runs, 1):
        print(f"run {i}: " + "; ".join(f"{mode} " + ", ".join(f"{k}={v:,.1f}" for k, v in
                                                          r[mode].items())
                                        for mode in ("zmq", *MODES)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30,000 events, 1 run")
    parser.add_argument("--events", type=int, help="events per workload (default 300,000)")
    parser.add_argument("--runs", type=int, help="runs (default 3; medians are reported)")
    args = parser.parse_args(argv)
    n = args.events or (30_000 if args.quick else 300_000)
    runs = args.runs or (1 if args.quick else 3)
    keys = Keys()
    results = []
    try:
        for run in range(runs):
            results.append({"zmq": zmq_ceiling(), **{mode: session(mode, keys, n)
                                                    for mode in MODES}})
            print(f"run {run + 1}/{runs} done", flush=True)
    finally:
        keys.close()
    report(results, check_cost_ns(), n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
