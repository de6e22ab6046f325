"""The topics page's data: every topic in one row, one topic partition by partition, and
create/delete (the page asks for a confirmation first; the broker checks the rest)."""

from __future__ import annotations

from typing import Any

from brokerd import protocol as p
from runtime.connection import Connection

RETENTION_KEYS = ("retention_ms", "retention_bytes", "cleanup_policy", "compact")


def topic_row(topic: p.TopicInfo) -> dict[str, Any]:
    """One topic's line: partitions, events held, bytes on disk, replication health."""
    parts = topic.partitions
    clustered = any(part.replicas for part in parts)
    return {"name": topic.name, "partitions": len(parts),
            "events": sum(x.end_offset - x.start_offset for x in parts),
            "end_offset": sum(x.end_offset for x in parts),
            "size_bytes": sum(x.size_bytes for x in parts),
            "under_replicated": sum(len(x.isr) < len(x.replicas) for x in parts)
            if clustered else None,
            "dlq": topic.name.endswith(".dlq")}


def list_topics(conn: Connection) -> dict[str, Any]:
    meta = conn.call(p.Metadata())
    return {"topics": [topic_row(t) for t in meta.topics],
            "clustered": bool(meta.brokers), "controller": meta.controller}


def describe_topic(conn: Connection, name: str) -> dict[str, Any]:
    topic = conn.call(p.Metadata(topics=[name])).topics[0]
    config = dict(topic.config)
    return {**topic_row(topic), "config": config,
            "retention": {k: config[k] for k in RETENTION_KEYS if k in config},
            "clustered": any(part.replicas for part in topic.partitions),
            "partition_list": [
                {"partition": x.partition, "start_offset": x.start_offset,
                 "end_offset": x.end_offset, "events": x.end_offset - x.start_offset,
                 "size_bytes": x.size_bytes, "leader": x.leader, "replicas": x.replicas,
                 "isr": x.isr} for x in topic.partitions]}


def create_topic(conn: Connection, name: str, partitions: int | None,
                 config: dict[str, Any]) -> dict[str, Any]:
    reply = conn.call(p.CreateTopic(topic=name, partitions=partitions, config=config))
    return {"topic": name, "created": reply.created}


def delete_topic(conn: Connection, name: str) -> dict[str, Any]:
    conn.call(p.DeleteTopic(topic=name))
    return {"topic": name, "deleted": True}
