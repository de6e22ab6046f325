"""``rail reload``: what changes when ``rail.toml`` is read again, worked out as a plan the
supervisor then carries out.  Pure: tested without processes.

The plan compares the new file with the one read last (not with what runs now), so a
``rail scale`` of a rail.toml worker stays until rail.toml's own ``replicas`` changes, and
workers registered at run time are never touched.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from runtime.config import ConfigError, RailConfig, WorkerSpec, load_config
from runtime.control import counted
from runtime.process import Watcher
from runtime.registry import validate_script

if TYPE_CHECKING:
    from runtime.supervisor import Supervisor

LOG = logging.getLogger("rail.supervisor")


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
    if old.schedules != new.schedules:
        changes.append(Change("note", "rail.toml", why="[schedules] changes apply at the "
                              "next rail up"))
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


class Reloader:
    """Carries out a plan on a running supervisor, from its loop (never concurrently)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def reload(self) -> list[str]:
        """Read rail.toml again and apply what changed in its workers and topics; one line
        per change.  Nothing is applied if the file or a new script is unusable."""
        if self.sup.config_path is None:
            raise ValueError("this supervisor was not started from a rail.toml")
        if self.sup.stopping:
            raise ValueError("the supervisor is stopping")
        new, _ = load_config(self.sup.config_path)
        digests = {name: script_digest(spec.script) for name, spec in new.workers.items()}
        registered = {name for name, w in self.sup.watchers.items() if w.registered}
        changes = plan(self.sup.toml, self.sup.digests, new, digests, registered)
        for change in changes:
            watcher = self.sup.watchers.get(change.name)
            if watcher is not None and watcher.removing and change.kind in ("add", "scale",
                                                                          "restart"):
                raise ValueError(f"{change.name} is still stopping: run rail reload again once "
                                 "it is gone from rail status")
            if change.spec is not None and change.kind in ("add", "restart"):
                try:
                    validate_script(change.spec.script)
                except ConfigError as exc:
                    raise ConfigError(f"workers.{change.name}: {exc}: nothing reloaded") from None
        lines = [self.apply(change, new) for change in changes]
        self.sup.toml, self.sup.digests = new, digests
        for line in lines:
            LOG.info("reload: %s", line)
        return lines

    def apply(self, change: Change, new: RailConfig) -> str:
        name, spec = change.name, change.spec
        kind = change.kind
        if kind in ("scale", "restart", "remove") and name not in self.sup.watchers:
            if kind == "remove":  # stopped already by rail unregister
                return f"removed {name}"
            kind = "add"  # unregistered at run time, and now changed in the file
        match kind:
            case "create":
                self.sup.create_topic(name, new.topics[name].partitions)
                return f"created topic {name}"
            case "add":
                assert spec is not None
                watcher = self.sup.watchers[name] = Watcher(name, msgspec.structs.replace(spec),
                                                        registered=False)
                self.sup.start_watcher(watcher)
                return f"added {name} ({counted(spec.replicas, 'replica')})"
            case "remove":
                self.sup.retire(self.sup.watchers[name])
                self.sup.baselines.remove(name)
                return f"removed {name}"
            case "scale":
                assert spec is not None
                self.sup.rescale(self.sup.watchers[name], spec.replicas)
                return f"scaled {name} to {counted(spec.replicas, 'replica')}"
            case "restart":
                assert spec is not None
                self.sup.respec(self.sup.watchers[name], msgspec.structs.replace(spec))
                return f"restarted {name} ({change.why} changed)"
        return f"{name}: {change.why}"
