"""What each request needs: a list of (operation, resource, name) an ACL must allow.

Kafka's mapping, cut to three operations: writing a topic needs ``write``; reading one,
or acting as a member of a group, needs ``read``; changing what exists (topics,
partitions, records, groups, replicas) needs ``admin`` on the cluster.  An op missing here
needs cluster admin, so a new op is closed until someone decides what it needs.

One exception: a ``create_topic`` with ``exist_ok`` and neither partitions nor config is
what a producer sends to learn a topic's partitions, and does no more than the produce
that follows would (auto-create it with the defaults); where the broker auto-creates
topics, it needs what that produce needs: write on the topic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Need = tuple[str, str, str]  # (operation, resource kind, resource name)
CLUSTER_ADMIN: tuple[Need, ...] = (("admin", "cluster", ""),)
NOTHING: tuple[Need, ...] = ()


def _read_topic(r: Any) -> tuple[Need, ...]:
    return (("read", "topic", r.topic),)


def _read_group(r: Any) -> tuple[Need, ...]:
    return (("read", "group", r.group),)


def _join(r: Any) -> tuple[Need, ...]:
    return (("read", "group", r.group), *(("read", "topic", t) for t in r.topics))


def _commit(r: Any) -> tuple[Need, ...]:
    return (("read", "group", r.group), *(("read", "topic", t) for t in {o[0] for o in r.offsets}))


def _seek(r: Any) -> tuple[Need, ...]:
    return (("read", "group", r.group), ("read", "topic", r.topic))


def _produce_batches(r: Any) -> tuple[Need, ...]:
    return tuple(("write", "topic", t) for t in {b.topic for b in r.batches})


def _metadata(r: Any) -> tuple[Need, ...]:
    """Naming topics needs ``describe`` on each: read or write (Kafka's implied Describe),
    so a producer may learn the partitions it writes to."""
    return NOTHING if r.topics is None else tuple(("describe", "topic", t) for t in r.topics)


NEEDS: dict[str, Callable[[Any], tuple[Need, ...]]] = {
    "produce": lambda r: (("write", "topic", r.topic),),
    "produce_batches": _produce_batches,
    "fetch": _read_topic,
    "list_offsets": _read_topic,
    "join": _join,
    "heartbeat": _read_group,
    "poll": _read_group,  # its topics were checked when the member joined
    "leave": _read_group,
    "release": _read_group,
    "describe_group": _read_group,
    "find_coordinator": _read_group,  # a member finds where its group lives
    "commit": _commit,
    "seek": _seek,
    "metadata": _metadata,  # every topic's name and offsets: for any allowed principal
    "list_groups": lambda r: NOTHING,
    "stats": lambda r: NOTHING,
    "ping": lambda r: NOTHING,
}


def needs(request: Any, auto_create: bool = True) -> tuple[Need, ...]:
    """What ``request`` needs; cluster admin for anything not listed above."""
    tag = request.__struct_config__.tag
    if (tag == "create_topic" and auto_create and request.exist_ok
            and request.partitions is None and not request.config):
        return (("write", "topic", request.topic),)
    check = NEEDS.get(tag)
    return CLUSTER_ADMIN if check is None else check(request)
