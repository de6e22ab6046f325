"""Which topic a local partition copy belongs to: its topic id, beside its data.

    <partition dir>/partition.metadata    JSON {"topic_id": "<32 hex digits>"}

ZooKeeper gives every topic a new random id when it is created (Kafka's KIP-516).  A
broker that finds a local copy whose id is not the id ZooKeeper holds for that name (the
topic was deleted and created again while the broker was away) deletes the copy instead
of serving or replicating it: two logs of one name never mix.  A copy without the file
(written before ids existed) adopts the id ZooKeeper holds on first sight.  Written by
replace_atomically; owned by the loop.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from brokerd.errors import StorageError
from brokerd.log.files import replace_atomically

FILE = "partition.metadata"


class _Metadata(msgspec.Struct):
    topic_id: str = ""


def read_topic_id(directory: Path) -> str:
    """The id stored with the partition copy in ``directory``; "" if none is."""
    try:
        return msgspec.json.decode((Path(directory) / FILE).read_bytes(),
                                   type=_Metadata).topic_id
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return ""


def write_topic_id(directory: Path, topic_id: str) -> None:
    try:
        replace_atomically(Path(directory) / FILE, msgspec.json.encode(_Metadata(topic_id)))
    except OSError as exc:
        raise StorageError.of(f"cannot store the topic id in {directory}", exc) from exc
