"""What a task must know to resume exactly: written with its state, in SQLite and in the
changelog, in the same transaction / batch as the state updates it goes with."""

from __future__ import annotations

import msgspec


class Checkpoint(msgspec.Struct, kw_only=True):
    """A task's position after commit number ``commit``.

    ``offset``: the next input offset to process.  ``seqs``: the next sequence of this task's
    producer per output ``[topic, partition]``.  ``changelog_seq``: the next sequence of the
    changelog producer, ``writer``.  ``incarnation``: which restore of the task wrote it (a
    random id), so that a host coming back with old local files can tell another host wrote
    since; each incarnation writes the changelog under a producer id of its own, so that
    the broker never takes one incarnation's batch for another's retry.
    """

    commit: int = 0
    incarnation: str = ""
    offset: int = 0
    stream_time: int = -1
    seqs: list[tuple[str, int, int]] = []
    changelog_seq: int = 0
    writer: int = 0  # the changelog producer id of this incarnation (0: from before it had one)
    late: int = 0
    dead_letters: int = 0


encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(Checkpoint).decode
