"""A script with its own loop (``run_hosted``) runs under the worker host like any worker:
it gets the parsed options, its counters reach the health socket, SIGTERM stops it cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import msgspec
import zmq

from tests.helpers import ROOT, free_port, python_env

SCRIPT = textwrap.dedent("""
    import json, sys, time

    def run_hosted(host):
        print(json.dumps({"topics": host.options.topics, "group": host.options.group,
                          "name": host.options.name}), flush=True)
        host.state = "running"
        while not host.stopping:
            host.processed += 1
            time.sleep(0.05)
        print("stopped", flush=True)
        return 0
""")


def test_a_script_with_its_own_loop_reports_health_and_stops_on_sigterm(tmp_path):
    script = tmp_path / "hosted.py"
    script.write_text(SCRIPT)
    port = free_port()
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{port}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.worker", str(script), "--broker", "tcp://127.0.0.1:1",
         "--group", "g", "--topics", "a,b", "--name", "hosted", "--member-id", "hosted-0",
         "--health", f"tcp://127.0.0.1:{port}"],
        cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert msgspec.json.decode(first) == {"topics": ["a", "b"], "group": "g", "name": "hosted"}
        assert pull.poll(5000), "no health report from a hosted loop"
        reports = []
        while pull.poll(3000) and len(reports) < 2:
            reports.append(msgspec.msgpack.decode(pull.recv()))
        assert reports[-1]["member_id"] == "hosted-0"
        assert reports[-1]["state"] == "running" and reports[-1]["processed"] > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read().strip() == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        pull.close(0)
