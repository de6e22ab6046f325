"""How the console shows a record's key, value and headers: JSON, msgpack, text or hex.

A value is stored as the producer encoded it: raw bytes, a string, or any msgpack value.
``auto`` picks the most readable form; the other modes force one and say when it does not
apply, rather than showing something misleading.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

MODES = ("auto", "json", "msgpack", "text", "hex")
_MAX_SHOWN = 64 * 1024  # characters of one value sent to the page (the rest is cut, said so)


def jsonable(value: Any) -> Any:
    """Bytes as text when they are UTF-8, else ``{"hex": ...}``; the rest unchanged."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return {"hex": raw.hex()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def as_text(value: Any) -> str:
    """One line of text a substring search runs against (what the page shows in ``auto``)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode(errors="replace")
    return json.dumps(jsonable(value), ensure_ascii=False)


def shown(value: Any, mode: str = "auto") -> dict[str, str]:
    """``{"as": kind, "text": ...}`` for the page; kind is json, msgpack, text, hex, null or
    ``error`` (the mode asked for does not fit this value)."""
    if value is None:
        return {"as": "null", "text": ""}
    kind, text = _decode(value, mode)
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + f"\n… cut at {_MAX_SHOWN:,} of {len(text):,} characters"
    return {"as": kind, "text": text}


def _decode(value: Any, mode: str) -> tuple[str, str]:
    raw = value if isinstance(value, bytes) else None
    if mode == "hex":
        data = raw if raw is not None else (value.encode() if isinstance(value, str)
                                             else msgspec.msgpack.encode(value))
        return "hex", data.hex(" ")
    if mode == "text":
        return "text", as_text(value)
    if not isinstance(value, (bytes, str)):  # a structured msgpack value
        return "msgpack", json.dumps(jsonable(value), ensure_ascii=False, indent=2)
    if mode in ("auto", "json"):
        parsed = _json(value)
        if parsed is not None:
            return "json", json.dumps(parsed, ensure_ascii=False, indent=2)
        if mode == "json":
            return "error", "not JSON: " + as_text(value)[:200]
    if mode in ("auto", "msgpack") and raw is not None:
        unpacked = _msgpack(raw)
        if unpacked is not None:
            return "msgpack", json.dumps(jsonable(unpacked), ensure_ascii=False, indent=2)
        if mode == "msgpack":
            return "error", "not msgpack: " + raw[:64].hex(" ")
    if mode == "msgpack":
        return "error", "a string, not msgpack bytes: " + as_text(value)[:200]
    if raw is None:
        return "text", str(value)
    try:
        return "text", raw.decode()
    except UnicodeDecodeError:
        return "hex", raw.hex(" ")


def _json(value: str | bytes) -> Any:
    """The parsed JSON object or array, else None (a bare number or word stays text)."""
    text = value.strip()
    if not text or text[:1] not in ("{", "[", b"{", b"["):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _msgpack(raw: bytes) -> Any:
    """A msgpack map or array that is all of ``raw``, else None (short bytes decode as
    something by chance: only containers are believed)."""
    if not raw or not (0x80 <= raw[0] <= 0x9F or raw[0] in (0xDC, 0xDD, 0xDE, 0xDF)):
        return None
    try:
        return msgspec.msgpack.decode(raw)
    except (msgspec.DecodeError, ValueError):
        return None
