"""Consumer groups with members in their own processes: assignment, failover, commits."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from runtime.client import Producer
from tests.helpers import ROOT, BrokerProcess, python_env, wait_for, written_lines
from tests.integration.wire import RawClient

TOPIC, GROUP, PARTITIONS, PER_PARTITION = "orders", "kitchen", 6, 1000
SESSION_MS = 1000


@dataclass
class Member:
    name: str
    proc: subprocess.Popen[bytes]
    journal: Path

    def lines(self) -> list[tuple[float, str, str]]:
        """(timestamp, tag, rest) of each complete line of its journal."""
        out = []
        for line in written_lines(self.journal):
            stamp, tag, rest = line.split(" ", 2)
            out.append((float(stamp), tag, rest))
        return out

    def member_id(self) -> str | None:
        return next((rest for _, tag, rest in self.lines() if tag == "R"), None)

    def assignment(self) -> list[int] | None:
        """The partitions of the last assignment it learned."""
        found = [json.loads(rest) for _, tag, rest in self.lines() if tag == "A"]
        return sorted(part for _, part in found[-1]) if found else None

    def processed(self) -> int:
        return sum(tag == "E" for _, tag, _ in self.lines())


def start_member(broker: BrokerProcess, name: str, tmp_path: Path) -> Member:
    journal = tmp_path / f"{name}.journal"
    journal.touch()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.group_member", broker.api, GROUP, TOPIC,
         str(journal), "--name", name, "--session-ms", str(SESSION_MS)],
        stdout=open(tmp_path / f"{name}.out", "wb"), stderr=subprocess.STDOUT,
        env=python_env(), cwd=ROOT)
    return Member(name, proc, journal)


def describe(broker: BrokerProcess) -> dict:
    with RawClient(broker.api) as raw:
        return raw.ok("describe_group", group=GROUP)


def assignments(described: dict) -> dict[str, list[int]]:
    return {m["member_id"]: sorted(part for _, part in m["assignment"])
            for m in described["members"]}


@dataclass
class Tenure:
    """One member's uninterrupted ownership of a partition, as its journal tells it."""

    member: str
    started: float
    offsets: list[int] = field(default_factory=list)
    intents: list[int] = field(default_factory=list)
    commits: list[int] = field(default_factory=list)


def tenures(members: list[Member]) -> dict[int, list[Tenure]]:
    """Per partition, every tenure with processed events, in the order they began."""
    found: dict[int, list[Tenure]] = {p: [] for p in range(PARTITIONS)}
    for member in members:
        current: dict[int, Tenure] = {}
        owned: set[int] = set()
        for stamp, tag, rest in member.lines():
            if tag == "A":
                now = {part for _, part in json.loads(rest)}
                for part in owned - now:
                    current.pop(part, None)
                owned = now
            elif tag in "EcC":
                part, offset = map(int, rest.split())
                tenure = current.get(part)
                if tenure is None:
                    tenure = current[part] = Tenure(member.name, stamp)
                    found[part].append(tenure)
                {"E": tenure.offsets, "c": tenure.intents, "C": tenure.commits}[tag].append(offset)
    for runs in found.values():
        runs.sort(key=lambda t: t.started)
    return found


def assert_every_event_processed_and_duplicates_only_uncommitted(
        members: list[Member], killed: Member) -> int:
    """Check each partition's history; return how many events were processed twice.

    A partition's next owner starts at the last accepted commit (or, after the killed
    member, possibly at the commit it sent but died before journaling); so every event is
    processed, and only events nobody had committed are processed again.
    """
    duplicates = 0
    for part, runs in tenures(members).items():
        committed = 0  # the group starts at the earliest offset
        seen: set[int] = set()
        for before, tenure in zip([None, *runs], runs):
            offsets = tenure.offsets
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), \
                f"{tenure.member} skipped or reordered offsets of partition {part}"
            allowed = {committed}
            if before is not None and before.member == killed.name and before.intents:
                allowed.add(before.intents[-1])  # killed between commit and its journal line
            assert offsets[0] in allowed, (
                f"{tenure.member} took partition {part} at {offsets[0]}, not at the last "
                f"commit {sorted(allowed)}")
            redone = seen & set(offsets)
            assert all(o >= committed for o in redone), "a committed event was redone"
            duplicates += len(redone)
            seen |= set(offsets)
            committed = max([offsets[0], *tenure.commits])
        assert seen == set(range(PER_PARTITION)), f"partition {part} lost events"
    return duplicates


def test_members_split_partitions_and_survivors_take_over_a_killed_member_at_its_commit(
        broker: BrokerProcess, tmp_path: Path) -> None:
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic=TOPIC, partitions=PARTITIONS)
    members = [start_member(broker, f"cook-{i}", tmp_path) for i in range(3)]
    try:
        def settled() -> dict[str, list[int]] | None:
            split = assignments(describe(broker))
            ids = {m.member_id(): m for m in members}
            if len(split) != 3 or set(split) != set(ids):
                return None
            return split if all(ids[mid].assignment() == parts
                                for mid, parts in split.items()) else None
        split = wait_for(settled, 30, what="three members to agree on an assignment")
        assert split is not None
        dealt = sorted(part for parts in split.values() for part in parts)
        assert dealt == list(range(PARTITIONS)), f"assignments overlap or miss: {split}"
        assert all(len(parts) == 2 for parts in split.values())

        with Producer(broker.api, batch_size=25, linger_ms=1) as producer:
            for n in range(PARTITIONS * PER_PARTITION):
                producer.send(TOPIC, n, partition=n % PARTITIONS)

        victim = random.choice(members)
        kill_after = random.randint(100, 600)
        wait_for(lambda: victim.processed() >= kill_after, 30,
                 what=f"{victim.name} to process {kill_after} events")
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(5)
        killed_at = victim.lines()[-1][0]
        survivors = [m for m in members if m is not victim]

        def drained() -> bool:
            described = describe(broker)
            done = [g["committed"] for g in described["partitions"]]
            return len(described["members"]) == 2 and done == [PER_PARTITION] * PARTITIONS
        wait_for(drained, 60, what="the survivors to commit every partition to its end")

        after = assignments(describe(broker))
        assert victim.member_id() not in after
        assert sorted(p for parts in after.values() for p in parts) == list(range(PARTITIONS))
        takeover = min(stamp for m in survivors for stamp, tag, _ in m.lines()
                       if tag == "A" and stamp > killed_at)
        assert 0.3 < takeover - killed_at < 8, \
            f"the takeover came {takeover - killed_at:.2f} s after the kill (session 1 s)"

        for member in survivors:
            member.proc.send_signal(signal.SIGTERM)
        for member in survivors:
            assert member.proc.wait(15) == 0, (tmp_path / f"{member.name}.out").read_text()
        assert_every_event_processed_and_duplicates_only_uncommitted(members, victim)
    finally:
        for member in members:
            if member.proc.poll() is None:
                member.proc.kill()
                member.proc.wait(5)
