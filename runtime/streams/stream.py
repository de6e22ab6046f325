"""The pipeline's building blocks: a Stream pushes (key, value, timestamp) to its children.

Each operator is a small function of (task, key, value, timestamp); the state it keeps lives
in the task's stores (see ``tables``), never in the operator, so one definition serves every
partition.  Every operator must be deterministic: a replay after a crash must produce the
same outputs in the same order (no clocks, no randomness, no iteration over unordered sets).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.streams.pipeline import Pipeline
    from runtime.streams.tables import Grouped
    from runtime.streams.task import Task

Push = Callable[["Task", Any, Any, int], None]


class Stream:
    """A stream of keyed records inside a pipeline; operators return new streams."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.children: list[Push] = []

    def push(self, task: Task, key: Any, value: Any, ts: int) -> None:
        for child in self.children:
            child(task, key, value, ts)

    def _then(self, op: Callable[[Task, Any, Any, int, Stream], None]) -> Stream:
        out = Stream(self.pipeline)
        self.children.append(lambda task, k, v, ts: op(task, k, v, ts, out))
        return out

    # -- stateless --------------------------------------------------------------------
    def filter(self, predicate: Callable[[Any], bool]) -> Stream:
        """Keep the records whose value passes ``predicate``."""
        def op(task: Task, k: Any, v: Any, ts: int, out: Stream) -> None:
            if predicate(v):
                out.push(task, k, v, ts)
        return self._then(op)

    def map(self, fn: Callable[[Any], Any]) -> Stream:
        """Replace each value by ``fn(value)`` (the key stays)."""
        def op(task: Task, k: Any, v: Any, ts: int, out: Stream) -> None:
            out.push(task, k, fn(v), ts)
        return self._then(op)

    def flat_map(self, fn: Callable[[Any], Iterable[Any]]) -> Stream:
        """Replace each value by the values ``fn(value)`` yields, in order."""
        def op(task: Task, k: Any, v: Any, ts: int, out: Stream) -> None:
            for item in fn(v):
                out.push(task, k, item, ts)
        return self._then(op)

    def key_by(self, fn: Callable[[Any], Any]) -> Stream:
        """Give each record the key ``fn(value)``.  Outputs are partitioned by it; tables
        built after it are kept per input partition (see docs/streams.md, re-keying)."""
        def op(task: Task, k: Any, v: Any, ts: int, out: Stream) -> None:
            out.push(task, fn(v), v, ts)
        return self._then(op)

    def branch(self, *predicates: Callable[[Any], bool]) -> list[Stream]:
        """One stream per predicate; a record goes to the first whose predicate it passes
        (and to none if it passes none)."""
        outs = [Stream(self.pipeline) for _ in predicates]

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
        self.children.append(lambda task, k, v, ts: task.emit(topic, k, v, ts))

    # -- stateful ---------------------------------------------------------------------
    def group_by(self, key: Callable[[Any], Any] | None = None) -> Grouped:
        """Group by ``key(value)`` (or by the record's key) for a table or a window."""
        from runtime.streams.tables import Grouped
        return Grouped(self, key)
