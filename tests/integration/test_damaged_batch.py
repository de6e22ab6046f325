"""A batch damaged on disk (a flipped bit in a closed, indexed segment: nothing checks it
until it is read) is never served: a read reaching it gets STORAGE_ERROR naming the file
and byte, and everything else is served as before.  Served, it made the whole reply
undecodable (its bytes are spliced into the reply), so the consumer could not read even
the other batches."""

from __future__ import annotations

from pathlib import Path

import msgspec

from tests.helpers import start_broker
from tests.integration.wire import RawClient


def test_a_read_reaching_a_damaged_batch_is_refused_and_the_rest_is_served(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = start_broker(data)
    try:
        with RawClient(broker.api) as raw:
            raw.ok("create_topic", topic="t", config={"segment_bytes": 4096})
            for i in range(40):
                raw.ok("produce", topic="t", records=[[f"v-{i}-{j}-" + "x" * 100]
                                                      for j in range(5)])
            # The bit flips under the running broker (a restart's recovery would scan
            # the segment and find it).
            segments = sorted((data / "topics" / "t" / "0").glob("*.log"))
            assert len(segments) > 3
            damaged = bytearray(segments[1].read_bytes())
            damaged[300] ^= 0xFF
            segments[1].write_bytes(damaged)
            first_after = int(segments[2].stem)
            before = raw.ok("fetch", topic="t", partition=0, offset=0, max_bytes=1000)
            assert before["batches"] and before["batches"][0][0] == 0
            reply = raw.call("fetch", topic="t", partition=0, offset=int(segments[1].stem),
                             max_bytes=100_000)
            assert reply["op"] == "error" and reply["code"] == "STORAGE_ERROR", reply
            assert segments[1].name in reply["message"] and "CRC" in reply["message"]
            after = raw.ok("fetch", topic="t", partition=0, offset=first_after,
                           max_bytes=100_000)
            values = [msgspec.msgpack.decode(r)[0] if isinstance(r, bytes) else r[0]
                      for b in after["batches"] for r in b[2]]
            assert values[0] == f"v-{first_after // 5}-0-" + "x" * 100
            raw.ok("ping")
    finally:
        broker.stop()
