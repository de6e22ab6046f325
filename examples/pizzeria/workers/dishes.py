"""Dishes per station per minute (Rail Streams): a tumbling window over kitchen.done.

Each dish is re-keyed by its station (through the internal topic dishes.repartition-1),
counted per station and minute of the dish's timestamp in the store
``per-station-minute``, and every new count goes to ``kitchen.per-minute``.  Exact after a
kill -9 (docs/streams.md); read it with

    rail streams get dishes per-station-minute '["pizza", 1700000040000]' --json-key
"""

from runtime.streams import Pipeline, Tumbling

app = Pipeline("dishes", source="kitchen.done")
(app.stream.group_by(lambda dish: dish["station"])
    .window(Tumbling(60_000, grace_ms=10_000), emit="update")
    .count("per-station-minute")
    .to("kitchen.per-minute"))
run_hosted = app.run_hosted
