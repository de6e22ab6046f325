"""Where a partition lives in a cluster: metadata from whichever broker answers, and the
leader's endpoint per partition.  Shared by the producer and the cluster consumer."""

from __future__ import annotations

from typing import cast

import zmq

from brokerd import protocol as p
from runtime.connection import BrokerError, BrokerUnavailable, Connection


def bootstrap_list(broker: str, default: str) -> list[str]:
    """``"tcp://a,tcp://b"`` as a list of endpoints (``default`` when empty)."""
    return [e.strip() for e in broker.split(",") if e.strip()] or [default]


def metadata_from_any(endpoints: list[str], context: zmq.Context, topics: list[str] | None,
                      timeout_s: float) -> p.MetadataReply:
    """Metadata from the first of ``endpoints`` that answers, each on a connection of its
    own (so that no other request's replies interleave); BrokerUnavailable if none does."""
    error: BrokerError = BrokerUnavailable(",".join(endpoints), timeout_s)
    for endpoint in dict.fromkeys(endpoints):
        conn = Connection(endpoint, context=context, timeout_s=timeout_s)
        try:
            return cast(p.MetadataReply, conn.call(p.Metadata(topics=topics)))
        except BrokerError as exc:
            if exc.code != "UNAVAILABLE":
                raise
            error = exc
        finally:
            conn.close()
    raise error


def leaders_of(meta: p.MetadataReply) -> tuple[list[str], dict[tuple[str, int], str | None]]:
    """The live brokers' API endpoints, and each partition's leader endpoint (None while
    it has no live leader).  A single broker's metadata names no brokers: both empty."""
    if not meta.brokers:
        return [], {}
    by_id = {b.id: b.api for b in meta.brokers}
    leaders = {(topic.name, part.partition): by_id.get(part.leader)
               for topic in meta.topics for part in topic.partitions}
    return list(by_id.values()), leaders
