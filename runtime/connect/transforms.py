"""Single-message transforms, configured per connector as a list applied in order.

Each is a small function of one record (value, key, topic) returning the changed record,
or None to drop it (``filter``).  A value that is not a map where a transform needs one
raises BadRecord (``errors.tolerance`` decides).  The kinds::

    {type = "rename", from = "a", to = "b"}
    {type = "drop", fields = ["secret"]}
    {type = "insert", field = "source", value = "web"}
    {type = "filter", field = "status", equals = "test", keep = false}
    {type = "route", field = "country", prefix = "orders."}   # topic = prefix + value
    {type = "mask", fields = ["card"], with = "****"}
    {type = "key", field = "id"}                               # key = value[field]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime.connect.errors import BadRecord, ConnectorConfigError

Record = tuple[Any, Any, str]  # value, key, topic
Transform = Callable[[Record], "Record | None"]


def _fields(value: Any, kind: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRecord(f"transform {kind!r} needs a map value, got {type(value).__name__}")
    return value


def rename(conf: dict[str, Any]) -> Transform:
    old, new = str(conf["from"]), str(conf["to"])

    def apply(r: Record) -> Record:
        value = dict(_fields(r[0], "rename"))
        if old in value:
            value[new] = value.pop(old)
        return value, r[1], r[2]
    return apply


def drop(conf: dict[str, Any]) -> Transform:
    fields = [str(f) for f in conf["fields"]]

    def apply(r: Record) -> Record:
        value = {k: v for k, v in _fields(r[0], "drop").items() if k not in fields}
        return value, r[1], r[2]
    return apply


def insert(conf: dict[str, Any]) -> Transform:
    field, constant = str(conf["field"]), conf["value"]

    def apply(r: Record) -> Record:
        return {**_fields(r[0], "insert"), field: constant}, r[1], r[2]
    return apply


def keep_if(conf: dict[str, Any]) -> Transform:
    field, wanted, keep = str(conf["field"]), conf["equals"], bool(conf.get("keep", True))

    def apply(r: Record) -> Record | None:
        matches = _fields(r[0], "filter").get(field) == wanted
        return r if matches == keep else None
    return apply


def route(conf: dict[str, Any]) -> Transform:
    field, prefix = str(conf["field"]), str(conf.get("prefix", ""))

    def apply(r: Record) -> Record:
        value = _fields(r[0], "route")
        if field not in value:
            raise BadRecord(f"transform 'route': no field {field!r} to route by")
        return r[0], r[1], f"{prefix}{value[field]}"
    return apply


def mask(conf: dict[str, Any]) -> Transform:
    fields, replacement = [str(f) for f in conf["fields"]], conf.get("with", "****")

    def apply(r: Record) -> Record:
        value = dict(_fields(r[0], "mask"))
        for f in fields:
            if f in value:
                value[f] = replacement
        return value, r[1], r[2]
    return apply


def key_from(conf: dict[str, Any]) -> Transform:
    field = str(conf["field"])

    def apply(r: Record) -> Record:
        value = _fields(r[0], "key")
        if field not in value:
            raise BadRecord(f"transform 'key': no field {field!r} in the value")
        return r[0], value[field], r[2]
    return apply


KINDS: dict[str, Callable[[dict[str, Any]], Transform]] = {
    "rename": rename, "drop": drop, "insert": insert, "filter": keep_if, "route": route,
    "mask": mask, "key": key_from}


def build(confs: list[dict[str, Any]], where: str) -> list[Transform]:
    out = []
    for i, conf in enumerate(confs):
        kind = KINDS.get(str(conf.get("type", "")))
        if kind is None:
            raise ConnectorConfigError(f"{where}.transforms[{i}]: type must be one of "
                                       f"{', '.join(KINDS)}, not {conf.get('type')!r}")
        try:
            out.append(kind(conf))
        except KeyError as exc:
            raise ConnectorConfigError(f"{where}.transforms[{i}] ({conf['type']}): missing "
                                       f"key {exc}") from None
    return out


def apply_all(transforms: list[Transform], record: Record) -> Record | None:
    for transform in transforms:
        out = transform(record)
        if out is None:
            return None
        record = out
    return record
