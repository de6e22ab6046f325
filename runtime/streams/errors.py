"""The streams layer's one error tree."""

from __future__ import annotations


class StreamsError(Exception):
    """A pipeline cannot go on exactly: the message says why and what to do."""


class PipelineError(StreamsError):
    """A pipeline is defined wrongly (found before it runs)."""


class Fenced(Exception):
    """Another replica wrote this task's changelog partition since this one restored it (this
    one was a zombie, paused past its session, or lost the race with one): its changelog
    batch was refused (``OFFSET_MISMATCH``) and nothing of it stored.  The replica exits to
    rejoin the group and restore from the changelog (not a StreamsError: a restart cures it)."""
