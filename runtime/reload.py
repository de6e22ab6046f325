"""``rail reload``: what changes when ``rail.toml`` is read again, worked out as a plan the
supervisor then carries out.  Pure: tested without processes.

The plan compares the new file with the one read last (not with what runs now), so a
``rail scale`` of a rail.toml worker stays until rail.toml's own ``replicas`` changes, and
workers registered at run time are never touched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import msgspec

from runtime.config import RailConfig, WorkerSpec


@dataclass
class Change:
    """One step: ``add``, ``remove``, ``scale`` or ``restart`` a worker, ``create`` a topic,
    or a ``note`` about something reload does not apply."""

    kind: str
    name: str
    spec: WorkerSpec | None = None
    why: str = ""


def script_digest(script: str) -> str:
    """What a worker's script holds now ("" if unreadable): an edit means a restart."""
    try:
        return hashlib.sha256(Path(script).read_bytes()).hexdigest()
    except OSError:
        return ""


def differences(old: WorkerSpec, new: WorkerSpec) -> list[str]:
    """The settings of a worker that differ, by name (replicas aside)."""
    a, b = msgspec.structs.asdict(old), msgspec.structs.asdict(new)
    return [key for key in a if key != "replicas" and a[key] != b[key]]


def plan(old: RailConfig, old_digests: dict[str, str], new: RailConfig,
         new_digests: dict[str, str], registered: set[str]) -> list[Change]:
    """The changes that take the workers and topics of ``old`` to those of ``new``."""
    changes = [Change("create", topic) for topic in new.topics if topic not in old.topics]
    changes += [Change("note", topic, why="partitions changed in rail.toml: rail.toml's "
                       "partitions apply only when a topic is created")
                for topic, section in new.topics.items()
                if topic in old.topics and section != old.topics[topic]]
    if (old.broker, old.supervisor) != (new.broker, new.supervisor):
        changes.append(Change("note", "rail.toml", why="[broker] and [supervisor] changes "
                              "apply at the next rail up"))
    for name, spec in new.workers.items():
        if name in registered:
            changes.append(Change("note", name, why="registered at run time: its rail.toml "
                                  "entry is ignored (rail unregister it first)"))
        elif name not in old.workers:
            changes.append(Change("add", name, spec))
        else:
            changed = differences(old.workers[name], spec)
            if new_digests.get(name) != old_digests.get(name) and "script" not in changed:
                changed.append("script's code")
            if changed:
                changes.append(Change("restart", name, spec, ", ".join(changed)))
            elif spec.replicas != old.workers[name].replicas:
                changes.append(Change("scale", name, spec))
    changes += [Change("remove", name) for name in old.workers
                if name not in new.workers and name not in registered]
    return changes
