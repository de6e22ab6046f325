"""Dishes per station per minute (Rail Streams): a tumbling window over kitchen.done.

Each dish is re-keyed by its station (through the internal topic dishes.repartition-1),
counted per station and minute of the dish's timestamp in the store
``per-station-minute``, and every new count goes to ``kitchen.per-minute``.  Exact after a
kill -9 (docs/streams.md); read it with

    rail streams get dishes per-station-minute '["pizza", 1700000040000]' --json-key
"""

from runtime.streams import Pipeline, Tumbling

app = Pipeline("dishes", source="kitchen.done")
# A grace of a minute: after a broker failover (examples/cluster/demo.py) the app is
# restarted and replays 10-20 s of dishes behind those other partitions brought since;
# with less grace some would be late (dropped and counted, docs/streams.md) and the
# demo's check, the minutes summed against the tally, would not hold.
(app.stream.group_by(lambda dish: dish["station"])
    .window(Tumbling(60_000, grace_ms=60_000), emit="update")
    .count("per-station-minute")
    .to("kitchen.per-minute"))
run_hosted = app.run_hosted
