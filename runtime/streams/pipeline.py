"""``Pipeline``: what a user writes; a worker script exposes its ``run_hosted``.

    app = Pipeline("dishes", source="orders")
    app.stream.filter(lambda o: o["qty"] > 0).to("valid-orders")
    run_hosted = app.run_hosted

Registered like any worker (``rail register`` or rail.toml), each replica joins the consumer
group named after the application and runs one task per partition of ``source`` assigned to
it.  See docs/streams.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from brokerd.protocol import fitted_name, valid_topic_name
from runtime.streams.errors import PipelineError
from runtime.streams.stream import Stream

if TYPE_CHECKING:
    from runtime.streams.tables import Table
    from runtime.streams.topictable import TopicTable
    from runtime.worker import Hosted

STATE_DIR_ENV = "RAIL_STREAMS_DIR"


class Pipeline:
    """A streams application reading ``source``.

    ``value_type``: values are converted to it (msgspec.convert) before the pipeline sees
    them; one that does not convert goes to the source's DLQ with the error.
    ``state_dir``: where the tasks' SQLite files live (default ``$RAIL_STREAMS_DIR`` or
    ``./.rail-streams``).  ``acks``: of every output and changelog produce.
    """

    def __init__(self, app: str, source: str, *, value_type: Any = None,
                 state_dir: str | Path | None = None,
                 acks: Literal[0, 1, "all"] = "all") -> None:
        for name in (app, source):
            if not valid_topic_name(name):
                raise PipelineError(f"{name!r} is not a valid name: [A-Za-z0-9._-]{{1,249}}")
        self.app = app
        self.source = source
        self.value_type = value_type
        self.state_dir = Path(state_dir or os.environ.get(STATE_DIR_ENV) or ".rail-streams")
        self.acks = acks
        self.outputs: set[str] = set()
        self.stores: dict[str, Table] = {}
        self.streams: list[Stream] = []
        self.stream = Stream(self)
        # Input topic and root stream of each topology: the source's, then one per
        # internal topic (a repartition, a table's join) and per table's own topic.
        self.topologies: list[tuple[str, Stream]] = [(source, self.stream)]

    def add_topology(self) -> tuple[str, Stream]:
        """A new internal topic, and the root stream of the tasks that read it."""
        index = len(self.topologies)
        topic = fitted_name("", self.app, f".repartition-{index}")
        root = Stream(self, index)
        self.topologies.append((topic, root))
        return topic, root

    def add_source(self, topic: str) -> Stream:
        """Another topic the pipeline reads (a table's), with its own tasks."""
        if not valid_topic_name(topic) or topic in self.topics:
            raise PipelineError(f"{topic!r} cannot be read again or is not a valid name")
        root = Stream(self, len(self.topologies))
        self.topologies.append((topic, root))
        return root

    def table(self, topic: str, store: str) -> TopicTable:
        """The latest value of each key of ``topic`` (a nil value deletes it), kept in
        store ``store``, to join streams with (``stream.join(table, fn)``)."""
        from runtime.streams.topictable import TopicTable
        if store in self.stores:
            raise PipelineError(f"two stores are named {store!r}: give each its own name")
        table = TopicTable(self, topic, store)
        self.stores[store] = table  # type: ignore[assignment]
        return table

    @property
    def topics(self) -> list[str]:
        """Every topic the pipeline's tasks read."""
        return [topic for topic, _ in self.topologies]

    def root(self, topic: str) -> Stream:
        return self.topologies[self.topics.index(topic)][1]

    def changelog(self, topic: str) -> str:
        """The changelog of the tasks reading ``topic``."""
        from runtime.streams.changelog import changelog_topic
        return changelog_topic(self.app, self.topics.index(topic))

    @property
    def decode(self) -> Any:
        """The function that converts a source value (None: values are used as they come)."""
        if self.value_type is None:
            return None
        value_type = self.value_type
        return lambda value: msgspec.convert(value, value_type)

    def run_hosted(self, host: Hosted) -> int:
        """The worker host's entry point: run until ``host.stopping``, then return 0."""
        from runtime.streams.runner import Runner
        return Runner(self, host).run()

    def freeze(self) -> None:
        """The definition is complete: let each stream call its children the fastest way."""
        from runtime.streams.chain import chain_run
        for stream in self.streams:
            stream.freeze()
        for _topic, root in self.topologies:
            root.run_batch = chain_run(root)
