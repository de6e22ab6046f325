"""The broker's log: one line per message, whatever a client put in a name.

Group names, member ids and other client strings reach log messages; a newline, a NUL or
an escape sequence in one could forge a line or hide one.  ``EscapeControl`` rewrites each
message with every unprintable character escaped (``\\n``, ``\\x00``, ``\\x1b``), before
any formatter sees it; tracebacks, which the formatter adds, keep their lines.
"""

from __future__ import annotations

import logging
import sys


def escape(text: str) -> str:
    """``text`` with every unprintable character written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class EscapeControl(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.isprintable():
            record.msg, record.args = escape(message), None
        return True


def setup(level: str) -> None:
    """Log to stderr, a line per message, with client strings escaped."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s brokerd %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(EscapeControl())
    logging.basicConfig(level=level.upper(), handlers=[handler])
