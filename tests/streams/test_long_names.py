"""A pipeline whose application, source and output have the longest valid names (249
characters) runs like any other: its changelog and repartition topics and its local files
are cut and hashed to fit, and its tables answer queries."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from brokerd import protocol as p
from brokerd.protocol import valid_topic_name
from runtime.connection import Connection
from runtime.streams import query
from runtime.streams.changelog import changelog_topic, is_changelog_of
from tests.helpers import BrokerProcess
from tests.streams.harness import Replica, produce, read, wait_caught_up, write_script

APP, SOURCE, OUT = "a" * 249, "s" * 249, "o" * 249
PIPELINE = f"""
app = Pipeline({APP!r}, source={SOURCE!r})
by_station = app.stream.key_by(lambda v: v["station"]).repartition()
by_station.group_by().count("per-station").to({OUT!r})
run_hosted = app.run_hosted
"""


def test_a_pipeline_of_249_character_names_runs_and_answers_queries(
        broker: BrokerProcess, tmp_path: Path) -> None:
    items = [(f"o{i}", {"station": f"s{i % 3}"}, 1_000 + i) for i in range(300)]
    produce(broker, SOURCE, items, 2)
    script = write_script(tmp_path, PIPELINE)
    replica = Replica(broker, script, tmp_path / "state", "long")
    try:
        wait_caught_up(broker, APP)
        conn = Connection(broker.api)
        try:
            counts = dict(query.decoded(query.table(conn, APP, "per-station")))
            names = [t.name for t in conn.call(p.Metadata()).topics]
        finally:
            conn.close()
    finally:
        assert replica.stop() == 0, replica.log()
    want = Counter(v["station"] for _, v, _ in items)
    assert counts == dict(want)
    latest = {e.key: e.value for e in read(broker, OUT)}
    assert latest == dict(want)
    internal = [n for n in names if n not in (SOURCE, OUT) and not n.startswith("__")
                and not n.endswith(".dlq")]
    assert len(internal) == 3, internal  # repartition-1, changelog-1, the source's changelog
    assert all(valid_topic_name(n) and len(n) == 249 for n in internal), internal
    assert sum(is_changelog_of(APP, n) for n in internal) == 2
    assert changelog_topic(APP, 1) in internal and not is_changelog_of("b" * 249, internal[0])
    files = list((tmp_path / "state").glob("*/*.sqlite"))
    assert len(files) == 4, files  # two partitions of the source, two of the repartition
    assert all(len(bytes(f)) <= 504 and len(f.name) <= 247 for f in files), files
    assert "ERROR" not in replica.log()
