"""Converters: between the bytes a source reads (or a sink is handed) and a record value.

``decode`` turns raw bytes from outside (a line of a file, an HTTP body) into the value
stored in the log; ``value_of`` turns an event's value, whatever a producer stored, into
what a sink writes (a JSON sink wants objects, a bytes sink wants bytes).  A value that
does not convert raises BadRecord, which ``errors.tolerance`` handles.
"""

from __future__ import annotations

from typing import Any

import msgspec

from runtime.connect.errors import BadRecord, ConnectorConfigError


class Converter:
    name = ""

    def decode(self, raw: bytes) -> Any:
        raise NotImplementedError

    def value_of(self, value: Any) -> Any:
        raise NotImplementedError


class JsonConverter(Converter):
    name = "json"

    def decode(self, raw: bytes | str) -> Any:
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise BadRecord(f"not JSON: {exc}") from None

    def value_of(self, value: Any) -> Any:
        return self.decode(value) if isinstance(value, (bytes, str)) else value


class MsgpackConverter(Converter):
    name = "msgpack"

    def decode(self, raw: bytes) -> Any:
        try:
            return msgspec.msgpack.decode(raw)
        except msgspec.DecodeError as exc:
            raise BadRecord(f"not msgpack: {exc}") from None

    def value_of(self, value: Any) -> Any:
        return self.decode(value) if isinstance(value, bytes) else value


class StringConverter(Converter):
    name = "string"

    def decode(self, raw: bytes) -> Any:
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise BadRecord(f"not UTF-8 text: {exc}") from None

    def value_of(self, value: Any) -> Any:
        if isinstance(value, bytes):
            return self.decode(value)
        return value if isinstance(value, str) else msgspec.json.encode(value).decode()


class BytesConverter(Converter):
    name = "bytes"

    def decode(self, raw: bytes) -> Any:
        return bytes(raw)

    def value_of(self, value: Any) -> Any:
        if isinstance(value, bytes):
            return value
        return value.encode() if isinstance(value, str) else msgspec.msgpack.encode(value)


CONVERTERS: dict[str, type[Converter]] = {
    c.name: c for c in (JsonConverter, MsgpackConverter, StringConverter, BytesConverter)}


def converter(name: str) -> Converter:
    """The converter called ``name``; ConnectorConfigError naming the choices otherwise."""
    kind = CONVERTERS.get(name)
    if kind is None:
        raise ConnectorConfigError(f"unknown converter {name!r}: use one of "
                                   f"{', '.join(sorted(CONVERTERS))}")
    return kind()
