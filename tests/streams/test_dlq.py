"""Bad input goes to the source's DLQ with the error, exactly once, and processing goes on."""

from __future__ import annotations

from pathlib import Path

from runtime.dlq import header
from tests.helpers import BrokerProcess
from tests.streams.harness import Replica, produce, read, wait_caught_up, write_script

PIPELINE = """
import msgspec

class Order(msgspec.Struct):
    n: int
    qty: int

app = Pipeline("typed", source="orders", value_type=Order)
app.stream.map(lambda o: {"n": o.n, "each": 12 // o.qty}).to("priced")
run_hosted = app.run_hosted
"""


def test_values_that_do_not_decode_or_fail_go_to_the_dlq_and_the_rest_goes_on(
        broker: BrokerProcess, tmp_path: Path) -> None:
    items = [(None, {"n": i, "qty": 1 + i % 3}, i) for i in range(300)]
    items[10] = (None, {"n": 10, "qty": "two"}, 10)  # does not decode as an Order
    items[20] = (None, b"\xff\x00", 20)               # not even a map
    items[30] = (None, {"n": 30, "qty": 0}, 30)       # the pipeline's map raises
    produce(broker, "orders", items, 2)
    replica = Replica(broker, write_script(tmp_path, PIPELINE), tmp_path / "state", "d-0")
    try:
        wait_caught_up(broker, "typed")
    finally:
        assert replica.stop() == 0, replica.log()
    assert sorted(e.value["n"] for e in read(broker, "priced")) == [
        i for i in range(300) if i not in (10, 20, 30)]
    letters = sorted(read(broker, "orders.dlq"), key=lambda e: int(header(e, "rail.source.offset")
                                                                    or 0) + 0)
    by_value = {repr(e.value): e for e in letters}
    assert len(letters) == 3
    assert "Expected `int`, got `str`" in header(by_value[repr({"n": 10, "qty": "two"})],
                                                  "rail.error")
    assert "ValidationError" in header(by_value[repr(b"\xff\x00")], "rail.error")
    assert "ZeroDivisionError" in header(by_value[repr({"n": 30, "qty": 0})], "rail.error")
    assert {header(e, "rail.source.topic") for e in letters} == {"orders"}
