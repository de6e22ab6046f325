"""The broker's one error tree.

Every error a client can cause carries a stable ``code`` (sent on the wire, see
``docs/protocol.md``) and a message a person can act on.  ``CorruptLogError`` is the
exception: it means a storage invariant broke, and it names the file and position.
"""

from __future__ import annotations

import errno
import resource


class RailError(Exception):
    """Base of every error the broker reports to a client."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RailError):
    code = "BAD_REQUEST"


class UnknownOp(RailError):
    code = "UNKNOWN_OP"


class UnknownTopic(RailError):
    code = "UNKNOWN_TOPIC"


class UnknownPartition(RailError):
    code = "UNKNOWN_PARTITION"


class InvalidTopic(RailError):
    code = "INVALID_TOPIC"


class TopicExists(RailError):
    code = "TOPIC_EXISTS"


class OffsetOutOfRange(RailError):
    code = "OFFSET_OUT_OF_RANGE"


class MessageTooLarge(RailError):
    code = "MESSAGE_TOO_LARGE"


class NotMember(RailError):
    code = "NOT_MEMBER"


class UnknownGroup(RailError):
    code = "UNKNOWN_GROUP"


class GroupNotEmpty(RailError):
    code = "GROUP_NOT_EMPTY"


class NotLeader(RailError):
    code = "NOT_LEADER"


class FencedLeaderEpoch(RailError):
    code = "FENCED_LEADER_EPOCH"


class UnknownLeaderEpoch(RailError):
    code = "UNKNOWN_LEADER_EPOCH"


class NotEnoughReplicas(RailError):
    code = "NOT_ENOUGH_REPLICAS"


class NotController(RailError):
    """A cluster operation reached a broker that cannot reach ZooKeeper now."""

    code = "NOT_CONTROLLER"


class NotCoordinator(RailError):
    """A group op reached a broker that does not coordinate the group: ask
    ``find_coordinator`` which one does (retriable)."""

    code = "NOT_COORDINATOR"


class CoordinatorLoading(RailError):
    """This broker just became the group's coordinator and is still loading its committed
    offsets: retry shortly (retriable)."""

    code = "COORDINATOR_LOADING"


class StaleGeneration(RailError):
    code = "STALE_GENERATION"


class OutOfOrderSequence(RailError):
    """An idempotent producer skipped a sequence number: a batch before this one is missing."""

    code = "OUT_OF_ORDER_SEQUENCE"


class OffsetMismatch(RailError):
    """A produce with ``expected_offset``: the partition's log ends elsewhere (another writer
    appended since the producer last looked); nothing was appended."""

    code = "OFFSET_MISMATCH"


class NotAuthorized(RailError):
    """The connection's principal lacks the ACL rule this request needs (docs/security.md)."""

    code = "NOT_AUTHORIZED"


class TooManyWaiting(RailError):
    code = "TOO_MANY_WAITING"


class StorageError(RailError):
    """The disk refused a write (full, read-only, I/O error); nothing was appended."""

    code = "STORAGE_ERROR"

    @classmethod
    def of(cls, what: str, exc: OSError) -> StorageError:
        """``what`` failed with ``exc``; out of descriptors, say which limit to raise."""
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            return cls(f"{what}: the broker is out of file descriptors (limit {soft}; each "
                       "segment of each partition holds one): raise LimitNOFILE or ulimit -n "
                       "(docs/operations.md), or use fewer partitions")
        return cls(f"{what}: {exc.strerror or exc}")


class CorruptLogError(StorageError):
    """A batch in a closed segment is damaged: the file and byte position say where."""

    def __init__(self, path: str, position: int, why: str) -> None:
        super().__init__(f"corrupt batch in {path} at byte {position}: {why}")
        self.path = path
        self.position = position
