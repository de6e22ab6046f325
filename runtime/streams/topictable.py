"""A table read from a topic of its own (the latest value per key; a nil value deletes),
for stream-table joins.

The table's topic and every stream joined with it are sent through one internal topic,
``<app>.repartition-N``, partitioned by key, each record tagged with where it came from:

    [0, value]          an update of the table
    [1 + j, value]      a record of the j-th stream joined with it

so one task sees a key's table updates and stream records in one order, the order the
internal topic holds them in: replays see the same order, and the join stays exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.streams.stream import Stream

if TYPE_CHECKING:
    from runtime.streams.pipeline import Pipeline
    from runtime.streams.task import Task

encode_key = msgspec.msgpack.Encoder().encode


class TopicTable:
    """Store ``name`` holds the latest value of each key of ``topic``."""

    def __init__(self, pipeline: Pipeline, topic: str, name: str) -> None:
        self.pipeline, self.topic, self.name = pipeline, topic, name
        self.union, root = pipeline.add_topology()
        self.topology = root.topology
        self.joins: list[tuple[Callable[[Any, Any], Any], bool, Stream]] = []
        source = pipeline.add_source(topic)
        union = self.union
        source.children.append(lambda task, k, v, ts: task.emit(union, k, [0, v], ts))
        root.children.append(self._dispatch)

    def join_from(self, stream: Stream, fn: Callable[[Any, Any], Any], left: bool) -> Stream:
        """What ``stream.join(self, fn, left)`` returns (see Stream.join)."""
        tag, union = 1 + len(self.joins), self.union
        out = Stream(self.pipeline, self.topology)
        self.joins.append((fn, left, out))
        stream.children.append(lambda task, k, v, ts: task.emit(union, k, [tag, v], ts))
        return out

    def _dispatch(self, task: Task, key: Any, tagged: Any, ts: int) -> None:
        tag, value = tagged
        store = task.store(self.name)
        if tag == 0:
            store.put(encode_key(key), value)  # None deletes
            return
        fn, left, out = self.joins[tag - 1]
        found = store.get(encode_key(key))
        if found is not None or left:
            out.push(task, key, fn(value, found), ts)
