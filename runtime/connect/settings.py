"""A ``[[connectors]]`` entry, typed, and what it builds: the connector, its converter and
transforms, and the worker entry the supervisor runs it as.

    [[connectors]]
    name = "orders-in"
    kind = "source"                 # or "sink"
    class = "file"                  # a built-in (see CLASSES) or "module:Class"
    topics = ["orders"]             # a source writes the first; a sink reads all
    tasks = 1                       # replicas of the worker
    converter = "json"              # json, msgpack, string, bytes
    errors.tolerance = "none"       # or "all": bad records go to <topic>.dlq
    transforms = [{type = "key", field = "id"}]
    config = {path = "orders.jsonl"}
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from runtime.connect.converters import Converter, converter
from runtime.connect.errors import ConnectorConfigError
from runtime.connect.transforms import apply_all, build

ENV = "RAIL_CONNECTOR_"  # + the connector's name: its entry, as JSON, in the environment
TASK_SCRIPT = str(Path(__file__).resolve().parent / "task.py")
GROUP_PREFIX = "connect-"
CLASSES = {  # (kind, class) -> module:Class
    ("source", "file"): "runtime.connect.file_source:FileSource",
    ("source", "http"): "runtime.connect.http_source:HttpSource",
    ("source", "table"): "runtime.connect.table_source:TableSource",
    ("sink", "jsonl"): "runtime.connect.jsonl_sink:JsonlSink",
    ("sink", "http"): "runtime.connect.http_sink:HttpSink",
    ("sink", "sqlite"): "runtime.connect.sql_sink:SqliteSink",
    ("sink", "postgres"): "runtime.connect.postgres_sink:PostgresSink",
}


class Errors(msgspec.Struct, forbid_unknown_fields=True):
    tolerance: Literal["none", "all"] = "none"


class ConnectorSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True,
                        rename={"class_": "class"}):
    name: str
    kind: Literal["source", "sink"]
    class_: str
    topics: Annotated[list[str], msgspec.Meta(min_length=1)]
    tasks: Annotated[int, msgspec.Meta(ge=0, le=256)] = 1
    converter: str = "json"
    errors: Errors = msgspec.field(default_factory=Errors)
    transforms: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    linger_ms: Annotated[float, msgspec.Meta(ge=0)] = 50.0
    acks: Literal[1, "all"] | None = None
    """The producer acks of a source (and of a sink's dead letters); None (the default):
    the producer's own default, by the brokers: 1 on a single broker (what it acknowledged
    survives its kill -9), "all" on a cluster (what the leader alone acknowledged is lost
    if it dies before its followers copy it)."""

    def __post_init__(self) -> None:
        try:
            self._converter = converter(self.converter)
        except ConnectorConfigError as exc:
            raise ConnectorConfigError(f"connectors.{self.name}.converter: {exc}") from None
        self._transforms = build(self.transforms, f"connectors.{self.name}")

    @property
    def tolerance(self) -> str:
        return self.errors.tolerance

    @property
    def linger_s(self) -> float:
        return self.linger_ms / 1000

    @property
    def value_converter(self) -> Converter:
        return self._converter

    @property
    def group(self) -> str:
        return GROUP_PREFIX + self.name

    def prepare(self, value: Any, key: Any, topic: str) -> tuple[Any, Any, str] | None:
        """A source record's value converted (raw bytes only) and transformed; None when a
        transform dropped it.  Raises BadRecord."""
        if value.__class__ is bytes or isinstance(value, bytearray):
            value = self._converter.decode(bytes(value))
        record = (value, key, topic)
        for transform in self._transforms:  # apply_all inlined: this runs once a record
            out = transform(record)
            if out is None:
                return None
            record = out
        return record

    def sink_value(self, value: Any, key: Any, topic: str) -> tuple[Any, Any, str] | None:
        """An event's value as the sink writes it (a tombstone stays None)."""
        if value is None:
            return None, key, topic
        return apply_all(self._transforms, (self._converter.value_of(value), key, topic))

    def build(self, task: int) -> Any:
        path = CLASSES.get((self.kind, self.class_), self.class_)
        module_name, _, class_name = path.partition(":")
        try:
            kind = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConnectorConfigError(
                f"connectors.{self.name}.class: {self.class_!r} is neither a built-in "
                f"{self.kind} ({', '.join(c for k, c in CLASSES if k == self.kind)}) nor an "
                f"importable module:Class ({exc})") from None
        return kind(self.name, self.config, task=task, tasks=max(1, self.tasks))


def parse(raw: dict[str, Any], where: str = "connectors") -> ConnectorSettings:
    """One entry, typed; ConnectorConfigError naming the key otherwise."""
    try:
        return msgspec.convert(raw, ConnectorSettings)
    except ConnectorConfigError:
        raise
    except msgspec.ValidationError as exc:
        name = raw.get("name", "?") if isinstance(raw, dict) else "?"
        raise ConnectorConfigError(f"{where}.{name}: {exc}") from None


def env_name(name: str) -> str:
    return ENV + name


def worker_entry(settings: ConnectorSettings) -> dict[str, Any]:
    """The ``[workers.<name>]`` table a connector runs as: the task script, one replica per
    task, in group ``connect-<name>``."""
    return {"script": TASK_SCRIPT, "topics": list(settings.topics), "group": settings.group,
            "replicas": settings.tasks}


def connector_workers(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """rail.toml's ``[[connectors]]`` as worker tables (for ``runtime.config``).

    Each entry is also put, as JSON, in this process's environment under
    ``RAIL_CONNECTOR_<name>``: the supervisor passes its environment to every child, so a
    task finds its entry there without the supervisor knowing about connectors.
    """
    from runtime.config import ConfigError

    workers: dict[str, dict[str, Any]] = {}
    for raw in entries:
        try:
            settings = parse(raw)
        except ConnectorConfigError as exc:
            raise ConfigError(str(exc)) from None
        if settings.name in workers:
            raise ConfigError(f"connectors.{settings.name}: two connectors have this name")
        os.environ[env_name(settings.name)] = json.dumps(msgspec.to_builtins(settings))
        workers[settings.name] = worker_entry(settings)
    return workers
