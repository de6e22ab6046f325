"""``rail tail`` as a user runs it: partitions, offsets, time, counts, formats, pipes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from brokerd import protocol as p

from runtime.client import Producer
from runtime.connection import Connection
from tests.helpers import ROOT, BrokerProcess, wait_for
from tests.integration.cli import RAIL, create_topic, events, rail, rail_env


def fill(broker: BrokerProcess, topic: str, partitions: int, per_partition: int) -> None:
    """``per_partition`` events in each partition, valued ``"p<partition>-<n>"``."""
    create_topic(broker, topic, partitions)
    with Producer(broker.api) as producer:
        for part in range(partitions):
            for n in range(per_partition):
                producer.send(topic, f"p{part}-{n}", partition=part)


def values(out: str) -> list[str]:
    return [json.loads(line)["value"] for line in out.splitlines()]


def test_partition_and_offset_choose_where_to_read(broker: BrokerProcess) -> None:
    fill(broker, "t", 2, 20)
    assert values(rail(broker, "tail", "t", "-p", "1", "-o", "beginning", "--json").stdout) \
        == [f"p1-{n}" for n in range(20)]
    assert values(rail(broker, "tail", "t", "-p", "0", "-o", "17", "--json").stdout) \
        == ["p0-17", "p0-18", "p0-19"]
    assert sorted(values(rail(broker, "tail", "t", "-o", "-2", "--json").stdout)) \
        == ["p0-18", "p0-19", "p1-18", "p1-19"]
    assert rail(broker, "tail", "t", "-o", "end").stdout == ""
    assert len(values(rail(broker, "tail", "t", "--json").stdout)) == 20  # the last 10 of each
    assert values(rail(broker, "tail", "t", "-p", "0", "-o", "500", "--json").stdout) == []
    wrong = rail(broker, "tail", "t", "-p", "2", check=False)
    assert wrong.returncode == 2 and "topic t has 2 partitions: -p takes 0 to 1" in wrong.stderr
    wrong = rail(broker, "tail", "t", "-o", "middle", check=False)
    assert wrong.returncode == 2 and "-o 'middle'" in wrong.stderr


def test_from_time_starts_at_the_first_event_at_or_after_it(broker: BrokerProcess) -> None:
    create_topic(broker, "timed", 1)
    with Producer(broker.api) as producer:
        for second in range(1, 6):
            producer.send("timed", f"at {second}s", timestamp=second * 1000)
    assert values(rail(broker, "tail", "timed", "--from-time", "3000", "--json").stdout) \
        == ["at 3s", "at 4s", "at 5s"]
    assert values(rail(broker, "tail", "timed", "--from-time", "1970-01-01T00:00:04.5+00:00",
                       "--json").stdout) == ["at 5s"]


def test_count_stops_after_that_many_events_even_when_following(broker: BrokerProcess) -> None:
    fill(broker, "many", 1, 50)
    out = rail(broker, "tail", "many", "--from-beginning", "--follow", "-c", "3").stdout
    assert out.splitlines() == [f'many[0]@{n} "p0-{n}"' for n in range(3)]


def test_follow_prints_events_sent_after_it_started(broker: BrokerProcess) -> None:
    create_topic(broker, "live", 2)
    others = requests_by_others(broker)
    before = others()
    proc = subprocess.Popen([*RAIL, "tail", "live", "-f", "-o", "end", "-c", "2", "--format",
                             "%s\\n"], env=rail_env(broker), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:  # metadata, then a fetch per partition: the tail is parked at the end
        wait_for(lambda: others() >= before + 3, what="tail to park its fetches")
        rail(broker, "send", "live", "one")
        rail(broker, "send", "live", "two")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert sorted(out.splitlines()) == ["one", "two"]


def requests_by_others(broker: BrokerProcess) -> Callable[[], int]:
    """A counter of the requests the broker served, less the ones it made itself."""
    conn = Connection(broker.api, timeout_s=5.0)
    mine = 0

    def count() -> int:
        nonlocal mine
        mine += 1
        return int(conn.call(p.Stats()).stats["counts"]["requests"]) - mine
    return count


def test_format_writes_fields_and_raw_bytes_as_kcat_does(broker: BrokerProcess) -> None:
    create_topic(broker, "fmt", 1)
    with Producer(broker.api) as producer:
        producer.send("fmt", b"\xff raw", key="k1", headers={"a": "1", "b": "2"}, timestamp=7)
        producer.send("fmt", {"n": 1})
    done = subprocess.run([*RAIL, "tail", "fmt", "--format",
                           "%t|%p|%o|%k|%s|%h|%T|%%\\t.\\n"], env=rail_env(broker), cwd=ROOT,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b'fmt|0|0|k1|\xff raw|a=1,b=2|7|%\t.\n' + \
        b'fmt|0|1||{"n":1}||' + done.stdout.split(b"||")[-1]
    bad = rail(broker, "tail", "fmt", "--format", "%q", check=False)
    assert bad.returncode == 2 and "unknown '%q'" in bad.stderr


def test_text_output_shows_keys_and_headers(broker: BrokerProcess) -> None:
    rail(broker, "send", "orders", '{"pizza": 2}', "--key", "t7", "--header", "src=hall")
    out = rail(broker, "tail", "orders").stdout
    assert out == 'orders[0]@0 key="t7" headers={"src": "hall"} {"pizza": 2}\n'


def test_exit_and_follow_do_not_go_together(broker: BrokerProcess) -> None:
    fill(broker, "t", 1, 3)
    assert len(rail(broker, "tail", "t", "-e").stdout.splitlines()) == 3
    both = rail(broker, "tail", "t", "-e", "-f", check=False)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_a_group_tail_with_a_count_commits_only_what_it_printed(broker: BrokerProcess) -> None:
    fill(broker, "g", 1, 10)
    out = rail(broker, "tail", "g", "--group", "viewer", "--from-beginning", "-c", "4").stdout
    assert len(out.splitlines()) == 4
    described = json.loads(rail(broker, "groups", "describe", "viewer", "--json").stdout)
    assert described["partitions"][0]["committed"] == 4
    out = rail(broker, "tail", "g", "--group", "viewer").stdout
    assert [line.split()[0] for line in out.splitlines()] == [f"g[0]@{n}" for n in range(4, 10)]
    mixed = rail(broker, "tail", "g", "--group", "viewer", "-p", "0", check=False)
    assert mixed.returncode == 2


def test_tail_into_head_exits_quietly(broker: BrokerProcess) -> None:
    fill(broker, "big", 1, 20_000)  # far more than a pipe holds
    done = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -1; echo "status ${PIPESTATUS[0]}" >&2',
         "-", *RAIL, "tail", "big", "--from-beginning"],
        env=rail_env(broker), cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert done.stdout == 'big[0]@0 "p0-0"\n'
    assert done.stderr == "status 141\n"  # like a Unix tool killed by SIGPIPE; nothing else


def test_a_reader_gone_before_the_first_line_gets_no_traceback(broker: BrokerProcess) -> None:
    fill(broker, "small", 1, 3)
    for args in (["tail", "small"], ["tail", "small", "--group", "g", "--from-beginning"],
                 ["topics"], ["groups"], ["topics", "describe", "small"]):
        proc = subprocess.Popen([*RAIL, *args], env=rail_env(broker), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before the command writes anything: every write is EPIPE
        err = proc.stderr.read()
        assert proc.wait(30) == 141 and err == b"", (args, err)
    assert len(events(broker, "small")) == 3


# ``rail`` as a terminal starts it: SIGINT at its default and unblocked.  A process that
# inherits SIGINT ignored or blocked keeps it so (as it should: that is how nohup and
# background jobs work), and the whole suite's CI run twice started it that way here.
AS_IN_A_TERMINAL = [sys.executable, "-c", "import os, signal, sys; "
                    "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                    "os.execv(sys.executable, [sys.executable, '-m', 'runtime.cli', "
                    "*sys.argv[1:]])"]


def test_ctrl_c_stops_a_following_tail_with_130_and_no_traceback(broker: BrokerProcess) -> None:
    import signal
    create_topic(broker, "quiet", 1)
    for extra in ([], ["--group", "watchers"]):
        others = requests_by_others(broker)
        before = others()
        proc = subprocess.Popen([*AS_IN_A_TERMINAL, "tail", "quiet", "-f", *extra],
                                env=rail_env(broker),
                                cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            wait_for(lambda: others() >= before + 2, what="tail to wait for events")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert (proc.returncode, out, err) == (130, "", ""), extra
