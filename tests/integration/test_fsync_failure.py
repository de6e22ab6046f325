"""A failed fsync never leads to an acknowledgement of what it failed to store.

On Linux, after an fsync fails the dirty pages may be dropped (or kept, marked clean), and a
later fsync that succeeds says nothing about them.  The broker must then treat the
partition's unsynced tail as lost: the producer gets STORAGE_ERROR, and its idempotent retry
is stored again instead of being answered ``duplicate`` with the first attempt's offsets.
An ``LD_PRELOAD`` shim makes exactly one fsync of a ``.log`` file fail with EIO.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.helpers import BrokerProcess, start_broker
from tests.integration.wire import RawClient

SHIM_SOURCE = Path(__file__).parent / "shims" / "fsync_fail.c"


def build_shim(folder: Path) -> Path:
    """The fsync-failure shim, built into ``folder`` (the test skips without gcc)."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the fsync-failure shim (.ci/run installs it)")
    shim = folder / "fsync_fail.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(shim), str(SHIM_SOURCE), "-ldl"],
                   check=True)
    return shim


@pytest.fixture
def failing_broker(tmp_path: Path) -> Iterator[tuple[BrokerProcess, Path]]:
    shim = build_shim(tmp_path)
    trigger = tmp_path / "fail-next-fsync"
    broker = start_broker(tmp_path / "data", env={"LD_PRELOAD": str(shim),
                                                  "RAIL_TEST_FSYNC_FAIL": str(trigger)})
    try:
        yield broker, trigger
    finally:
        broker.stop()


def produce(raw: RawClient, values: list[int], sequence: int) -> dict:
    return raw.call("produce", topic="t", partition=0, acks="all", producer_id=42,
                    sequence=sequence, records=msgspec.Raw(msgspec.msgpack.encode(
                        [[v] for v in values])))


def stored(raw: RawClient) -> list[int]:
    reply = raw.ok("fetch", topic="t", partition=0, offset=0, max_bytes=1 << 20)
    return [rec[0] for _, _, recs in reply["batches"] for rec in recs]


def test_a_batch_whose_fsync_failed_is_stored_again_not_acked_as_a_duplicate(
        failing_broker: tuple[BrokerProcess, Path]) -> None:
    broker, trigger = failing_broker
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic="t", partitions=1, config={"fsync": "always"})
        first = produce(raw, [0, 1, 2, 3, 4], sequence=0)
        assert first["op"] == "produce" and first["offsets"] == [[0, 0, 5]]
        trigger.touch()
        failed = produce(raw, [5, 6, 7, 8, 9], sequence=5)
        assert failed["op"] == "error" and failed["code"] == "STORAGE_ERROR", failed
        assert not trigger.exists(), "the shim failed exactly one fsync"
        retry = produce(raw, [5, 6, 7, 8, 9], sequence=5)
        assert retry["op"] == "produce", retry
        assert not retry["duplicate"], "a batch whose fsync failed was acked as a duplicate"
        assert retry["offsets"] == [[0, 5, 5]]
        again = produce(raw, [5, 6, 7, 8, 9], sequence=5)
        assert again["duplicate"] and again["offsets"] == [[0, 5, 5]], "now it is durable"
        assert stored(raw) == list(range(10)), "every value once, in order"
        stats = raw.ok("stats")["stats"]["counts"]
        assert stats["fsync_failures"] == 1 and stats["records_discarded"] == 5
    assert broker.proc.poll() is None, "the broker kept serving"


def test_the_durable_part_survives_a_failed_fsync_and_a_restart(
        failing_broker: tuple[BrokerProcess, Path], tmp_path: Path) -> None:
    broker, trigger = failing_broker
    with RawClient(broker.api) as raw:
        raw.ok("create_topic", topic="t", partitions=1, config={"fsync": "always"})
        assert produce(raw, [0, 1], sequence=0)["op"] == "produce"
        trigger.touch()
        assert produce(raw, [2, 3], sequence=2)["code"] == "STORAGE_ERROR"
    broker.stop()
    restarted = start_broker(tmp_path / "data")
    try:
        with RawClient(restarted.api) as raw:
            assert stored(raw) == [0, 1], "the failed tail is gone, the acked part is there"
            retry = produce(raw, [2, 3], sequence=2)
            assert retry["op"] == "produce" and not retry["duplicate"]
            assert stored(raw) == [0, 1, 2, 3]
    finally:
        restarted.stop()
