"""The pipeline's building blocks: a Stream pushes (key, value, timestamp) to its children.

Each operator is a small function of (task, key, value, timestamp); the state it keeps lives
in the task's stores (see ``tables``), never in the operator, so one definition serves every
partition.  Every operator must be deterministic: a replay after a crash must produce the
same outputs in the same order (no clocks, no randomness, no iteration over unordered sets).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from runtime.streams.errors import PipelineError

if TYPE_CHECKING:
    from runtime.consumer import Event
    from runtime.streams.chain import BatchRun
    from runtime.streams.pipeline import Pipeline
    from runtime.streams.tables import Grouped, Table
    from runtime.streams.task import Task
    from runtime.streams.topictable import TopicTable

Push = Callable[["Task", Any, Any, int], None]
# Runs a task's input events (and the value decoder, or None) through a whole operator at
# once: the same work as pushing each one, without a call per event and operator.
Run = Callable[["Task", "list[Event]", "Callable[[Any], Any] | None"], None]


def _drop(task: Task, key: Any, value: Any, ts: int) -> None:
    """Where a stream nobody reads from sends its records."""


class Stream:
    """A stream of keyed records inside a pipeline; operators return new streams."""

    def __init__(self, pipeline: Pipeline, topology: int = 0, rekeyed: bool = False) -> None:
        self.pipeline = pipeline
        self.topology = topology  # which input topic's tasks run it (0: the source)
        self.rekeyed = rekeyed  # keys changed since the input: a table needs a repartition
        self.children: list[Push] = []
        self.runs: dict[Push, Run] = {}  # children that can also take whole batches
        self.run: Run | None = None  # set by freeze: the only child's, if it has one
        # Set by Pipeline.freeze on a root whose children are a stateless chain: runs a
        # consumer Batch through it (runtime.streams.chain)
        self.run_batch: BatchRun | None = None
        # Stateless children, for runtime.streams.chain: ("filter"/"map", fn, out stream)
        # or ("to", topic, None)
        self.stages: dict[Push, tuple[str, Any, Stream | None]] = {}
        pipeline.streams.append(self)

    def push(self, task: Task, key: Any, value: Any, ts: int) -> None:
        for child in self.children:
            child(task, key, value, ts)

    def freeze(self) -> None:
        """Once the pipeline is defined: a stream with one child calls it directly."""
        if len(self.children) == 1:
            self.push = self.children[0]  # type: ignore[method-assign,assignment]
            self.run = self.runs.get(self.children[0])
        elif not self.children:
            self.push = _drop  # type: ignore[method-assign]

    def _then(self, op: Callable[[Task, Any, Any, int, Stream], None],
              rekeys: bool = False) -> Stream:
        out = Stream(self.pipeline, self.topology, self.rekeyed or rekeys)
        self.children.append(lambda task, k, v, ts: op(task, k, v, ts, out))
        return out

    # -- stateless --------------------------------------------------------------------
    def filter(self, predicate: Callable[[Any], bool]) -> Stream:
        """Keep the records whose value passes ``predicate``."""
        out = Stream(self.pipeline, self.topology, self.rekeyed)

        def op(task: Task, k: Any, v: Any, ts: int) -> None:
            if predicate(v):
                out.push(task, k, v, ts)
        self.children.append(op)
        self.stages[op] = ("filter", predicate, out)
        return out

    def map(self, fn: Callable[[Any], Any]) -> Stream:
        """Replace each value by ``fn(value)`` (the key stays)."""
        out = Stream(self.pipeline, self.topology, self.rekeyed)

        def op(task: Task, k: Any, v: Any, ts: int) -> None:
            out.push(task, k, fn(v), ts)
        self.children.append(op)
        self.stages[op] = ("map", fn, out)
        return out

    def flat_map(self, fn: Callable[[Any], Iterable[Any]]) -> Stream:
        """Replace each value by the values ``fn(value)`` yields, in order."""
        def op(task: Task, k: Any, v: Any, ts: int, out: Stream) -> None:
            for item in fn(v):
                out.push(task, k, item, ts)
        return self._then(op)

    def key_by(self, fn: Callable[[Any], Any]) -> Stream:
        """Give each record the key ``fn(value)``; outputs are partitioned by it, and a
        table grouped after it goes through a repartition topic first."""
        def op(task: Task, k: Any, v: Any, ts: int, out: Stream) -> None:
            out.push(task, fn(v), v, ts)
        return self._then(op, rekeys=True)

    def repartition(self) -> Stream:
        """Send the records through an internal topic, partitioned by their key, to tasks
        that each see every record of their keys (``<app>.repartition-N``)."""
        topic, root = self.pipeline.add_topology()
        self.children.append(lambda task, k, v, ts: task.emit(topic, k, v, ts))
        return root

    def branch(self, *predicates: Callable[[Any], bool]) -> list[Stream]:
        """One stream per predicate; a record goes to the first whose predicate it passes
        (and to none if it passes none)."""
        outs = [Stream(self.pipeline, self.topology, self.rekeyed) for _ in predicates]

        def op(task: Task, k: Any, v: Any, ts: int) -> None:
            for predicate, out in zip(predicates, outs):
                if predicate(v):
                    out.push(task, k, v, ts)
                    return
        self.children.append(op)
        return outs

    def to(self, topic: str) -> None:
        """Send every record to ``topic`` (partitioned by key; a keyless record goes to the
        partition with the input's number, modulo the topic's partition count)."""
        self.pipeline.outputs.add(topic)

        def op(task: Task, k: Any, v: Any, ts: int) -> None:
            task.emit(topic, k, v, ts, None)
        self.children.append(op)
        self.stages[op] = ("to", topic, None)

    # -- stateful ---------------------------------------------------------------------
    def group_by(self, key: Callable[[Any], Any] | None = None) -> Grouped:
        """Group by ``key(value)`` (or by the record's key) for a table or a window.

        Unless the records keep the input's keys (no ``key`` given, no ``key_by`` before),
        they go through a repartition topic first, so that one task holds all of a key."""
        from runtime.streams.tables import Grouped
        stream = self if key is None else self.key_by(key)
        return Grouped(stream.repartition() if stream.rekeyed else stream)

    def join(self, table: Table | TopicTable, fn: Callable[[Any, Any], Any],
             left: bool = False) -> Stream:
        """Each record's value becomes ``fn(value, the table's value for the record's key)``;
        a record whose key is not in the table is dropped (``left``: joined with None).

        A table read from a topic (``Pipeline.table``) joins any stream: both go through
        one internal topic by key.  A table built by the pipeline must be built by the same
        tasks, from records keyed the same way."""
        from runtime.streams.tables import encode_key
        from runtime.streams.topictable import TopicTable
        if isinstance(table, TopicTable):
            return table.join_from(self, fn, left)
        if table.topology != self.topology or self.rekeyed:
            raise PipelineError(
                f"join with table {table.name!r}: the stream must be keyed like the table "
                "and read by the same tasks; re-key it with key_by(...).repartition() and "
                "build the table from that stream")
        name = table.name

        def op(task: Task, k: Any, v: Any, ts: int, out: Stream) -> None:
            found = task.store(name).get(encode_key(k))
            if found is not None or left:
                out.push(task, k, fn(v, found), ts)
        return self._then(op)
