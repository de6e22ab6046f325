"""Rail Streams: pipelines over topics with tables and event-time windows, exact after a
kill -9 without broker transactions (docs/streams.md)."""

from __future__ import annotations

from runtime.streams.errors import PipelineError, StreamsError
from runtime.streams.pipeline import Pipeline
from runtime.streams.stream import Stream
from runtime.streams.tables import Grouped, Table
from runtime.streams.windows import Hopping, Session, Tumbling

__all__ = ["Grouped", "Hopping", "Pipeline", "PipelineError", "Session", "Stream", "StreamsError",
           "Table", "Tumbling"]
