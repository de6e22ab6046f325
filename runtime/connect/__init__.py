"""Rail Connect: sources and sinks declared in rail.toml, run as supervised workers.

A ``[[connectors]]`` entry (``settings``) becomes a worker whose script is ``task.py``; a
source task (``source_task``) keeps its offsets in the compacted topic ``_connect-offsets``
(``offsets``), a sink task (``sink_task``) hands batches to a sink, and a database sink
stores its offsets in the same transaction as its rows.  Write a connector against ``api``
(``Source``, ``Sink``, ``SourceRecord``).  See docs/connect.md.
"""

from __future__ import annotations

from runtime.connect.api import Connector, Sink, Source
from runtime.connect.records import SourceRecord

__all__ = ["Connector", "Sink", "Source", "SourceRecord"]
