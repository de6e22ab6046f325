"""What each request needs: a list of (operation, resource, name) an ACL must allow.

Kafka's mapping, cut to three operations: writing a topic needs ``write``; reading one,
or acting as a member of a group, needs ``read``; changing what exists (topics,
partitions, records, groups, replicas) needs ``admin`` on the cluster.  An op missing here
needs cluster admin, so a new op is closed until someone decides what it needs.
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
    return NOTHING if r.topics is None else tuple(("read", "topic", t) for t in r.topics)


NEEDS: dict[str, Callable[[Any], tuple[Need, ...]]] = {
    "produce": lambda r: (("write", "topic", r.topic),),
    "produce_batches": _produce_batches,
    "fetch": _read_topic,
    "list_offsets": _read_topic,
    "join": _join,
    "heartbeat": _read_group,
    "poll": _read_group,  # its topics were checked when the member joined
    "leave": _read_group,
    "describe_group": _read_group,
    "commit": _commit,
    "seek": _seek,
    "metadata": _metadata,  # every topic's name and offsets: for any allowed principal
    "list_groups": lambda r: NOTHING,
    "stats": lambda r: NOTHING,
    "ping": lambda r: NOTHING,
}


def needs(request: Any) -> tuple[Need, ...]:
    """What ``request`` needs; cluster admin for anything not listed above."""
    check = NEEDS.get(request.__struct_config__.tag)
    return CLUSTER_ADMIN if check is None else check(request)
