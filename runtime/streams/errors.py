"""The streams layer's one error tree."""

from __future__ import annotations


class StreamsError(Exception):
    """A pipeline cannot go on exactly: the message says why and what to do."""


class PipelineError(StreamsError):
    """A pipeline is defined wrongly (found before it runs)."""
