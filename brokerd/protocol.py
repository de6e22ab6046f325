"""Rail's wire contract: every request and reply, error codes, limits and exit codes.

This is the one module shared by the broker and the runtime.  ``docs/protocol.md`` is its
prose twin, written so that a client in another language can be built from it alone.

Frames (ROUTER socket, default tcp://127.0.0.1:7400):
    DEALER client -> [body]           broker replies [body]
    REQ client    -> ["", body]       broker replies ["", body]
A body is a msgpack map with an ``op`` string and an ``id`` integer; the reply carries the
same ``id``.  Requests may be pipelined.  A failed request gets ``{"op": "error", ...}``.

The schema only grows by adding fields with defaults; ``PROTOCOL_VERSION`` counts changes
that a client may need to know about.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Annotated, Any, Literal, Union

import msgspec

PROTOCOL_VERSION = 8  # 2: create_partitions, delete_records, delete_group; 3: cluster;
# 4: produce_batches; 5: find_coordinator, NOT_COORDINATOR, COORDINATOR_LOADING;
# 6: join's rebalance_timeout_ms, release (partitions handed over, not taken);
# 7: produce's expected_offset, OFFSET_MISMATCH (a single writer's fence);
# 8: replica_fetch_many (a follower's one fetch per leader; brokers only)

# Limits (the broker's defaults; see BrokerConfig for the knobs).
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_FRAME_BYTES = 64 * 1024 * 1024
DEFAULT_FETCH_BYTES = 1024 * 1024
MAX_WAIT_MS = 60_000
MAX_POLL_REPLIES = 100_000  # replies one streaming poll may get

# Consumer-group timing defaults.
DEFAULT_SESSION_TIMEOUT_MS = 10_000
MIN_SESSION_TIMEOUT_MS = 100
MAX_SESSION_TIMEOUT_MS = 300_000

# Batches per (producer, partition) the broker remembers to recognise a retry: a producer
# may have this many batches of one partition in flight.
IDEMPOTENCE_WINDOW = 16

# Offsets accepted by list_offsets instead of a timestamp.
LATEST = -1
EARLIEST = -2

# Process exit codes, so a supervisor does not restart what will only fail again.
EXIT_OK = 0
EXIT_CONFIG = 78  # sysexits EX_CONFIG: bad flags or config file
EXIT_BIND = 76  # cannot bind a socket (address in use, bad endpoint)
EXIT_STORAGE = 74  # sysexits EX_IOERR: the data dir is unusable or a log is corrupt
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: ZooKeeper cannot be reached

ERROR_CODES = (
    "BAD_REQUEST", "UNKNOWN_OP", "UNKNOWN_TOPIC", "UNKNOWN_PARTITION", "INVALID_TOPIC",
    "TOPIC_EXISTS", "OFFSET_OUT_OF_RANGE", "MESSAGE_TOO_LARGE", "NOT_MEMBER",
    "STALE_GENERATION", "OUT_OF_ORDER_SEQUENCE", "STORAGE_ERROR", "TOO_MANY_WAITING",
    "SHUTTING_DOWN", "INTERNAL", "UNKNOWN_GROUP", "GROUP_NOT_EMPTY", "NOT_LEADER",
    "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH", "NOT_ENOUGH_REPLICAS", "NOT_CONTROLLER",
    "NOT_AUTHORIZED", "NOT_COORDINATOR", "COORDINATOR_LOADING", "OFFSET_MISMATCH",
)

NonNeg = Annotated[int, msgspec.Meta(ge=0)]
Partition = Annotated[int, msgspec.Meta(ge=0, le=65535)]
WaitMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_WAIT_MS)]
FetchBytes = Annotated[int, msgspec.Meta(ge=1, le=MAX_REQUEST_BYTES)]
Replies = Annotated[int, msgspec.Meta(ge=1, le=MAX_POLL_REPLIES)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=249)]
Acks = Literal[0, 1, "all"]


class _Request(msgspec.Struct, tag_field="op", kw_only=True):
    id: int = 0


# -- requests -------------------------------------------------------------------------
class Produce(_Request, tag="produce"):
    """Append records.  ``records`` is a msgpack array of ``[value, key, headers, ts]``."""

    topic: str
    records: msgspec.Raw
    partition: Partition | None = None
    acks: Acks = 1
    producer_id: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    sequence: Annotated[int, msgspec.Meta(ge=-1, le=2**31 - 1)] = -1
    # Append only if the partition's log ends at this offset (a single writer's fence,
    # version 7); a batch the broker already has (idempotent retry) is still a duplicate.
    expected_offset: NonNeg | None = None


class TopicBatch(msgspec.Struct, array_like=True):
    """One partition's batch in a ``produce_batches``: ``[topic, partition, sequence, records]``."""

    topic: str
    partition: Partition
    sequence: Annotated[int, msgspec.Meta(ge=-1, le=2**31 - 1)]
    records: msgspec.Raw


class ProduceBatches(_Request, tag="produce_batches"):
    """Append one batch to each of several partitions (of one or more topics) at once.

    What a producer with many partitions sends instead of one ``produce`` per partition:
    each batch is stored, refused or recognised as a duplicate on its own, exactly as a
    ``produce`` naming its partition would be, and the one reply lists the outcomes in the
    order of ``batches``.  A topic is never created by it.
    """

    batches: Annotated[list[TopicBatch], msgspec.Meta(min_length=1, max_length=65536)]
    acks: Acks = 1
    producer_id: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0


class Fetch(_Request, tag="fetch"):
    topic: str
    partition: Partition
    offset: NonNeg
    max_bytes: FetchBytes = DEFAULT_FETCH_BYTES
    max_wait_ms: WaitMs = 0
    min_bytes: NonNeg = 1
    raw_records: bool = False
    """Send each batch's records as one bin of the stored msgpack bytes, not inline."""


class Join(_Request, tag="join"):
    group: Name
    topics: list[str]
    member_id: str = ""
    session_timeout_ms: Annotated[int, msgspec.Meta(
        ge=MIN_SESSION_TIMEOUT_MS, le=MAX_SESSION_TIMEOUT_MS)] = DEFAULT_SESSION_TIMEOUT_MS
    start: Literal["earliest", "latest"] = "earliest"
    client_id: str = ""
    rebalance_timeout_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_SESSION_TIMEOUT_MS)] = 0
    """> 0: a partition moving away from this member waits (delivered to nobody) until it
    sends ``release``, leaves or expires, or this long (0: it moves at once)."""


class Release(_Request, tag="release"):
    """The member is done with these partitions that moved away from it (it committed what
    it handled of them): their new owner may have them now."""

    group: str
    member_id: str
    partitions: list[tuple[str, Partition]]


class Heartbeat(_Request, tag="heartbeat"):
    group: str
    member_id: str
    generation: int = -1


class Poll(_Request, tag="poll"):
    group: str
    member_id: str
    max_bytes: FetchBytes = DEFAULT_FETCH_BYTES
    max_wait_ms: WaitMs = 0
    raw_records: bool = False
    """As for fetch: records as one bin per batch, for clients that decode record by record."""
    replies: Replies = 1
    """A streaming poll: up to this many replies, each sent as soon as data arrives, while
    the poll stays parked (DEALER clients only; see docs/protocol.md)."""


class Commit(_Request, tag="commit"):
    """Commit the next offsets to consume, as ``[topic, partition, offset]`` triples."""

    group: str
    offsets: list[tuple[str, Partition, NonNeg]]
    member_id: str = ""
    generation: int = -1


class Seek(_Request, tag="seek"):
    """Move a member's server-side position in one of its partitions."""

    group: str
    member_id: str
    topic: str
    partition: Partition
    offset: NonNeg


class Leave(_Request, tag="leave"):
    group: str
    member_id: str


class CreateTopic(_Request, tag="create_topic"):
    topic: str
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    config: dict[str, Any] = {}
    exist_ok: bool = False


class DeleteTopic(_Request, tag="delete_topic"):
    topic: str


class CreatePartitions(_Request, tag="create_partitions"):
    """Grow a topic to ``partitions`` partitions in all (never shrink)."""

    topic: str
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)]


class DeleteRecords(_Request, tag="delete_records"):
    """Move a partition's start offset up to ``offset`` (-1: its end): older records go."""

    topic: str
    partition: Partition
    offset: Annotated[int, msgspec.Meta(ge=-1)]


class DeleteGroup(_Request, tag="delete_group"):
    """Forget a group with no live members, and its committed offsets."""

    group: str


class ReplicaFetch(_Request, tag="replica_fetch"):
    """A follower copies a partition from its leader (cluster mode; brokers only)."""

    topic: str
    partition: Partition
    offset: NonNeg
    replica_id: NonNeg
    leader_epoch: int
    max_wait_ms: WaitMs = 0
    max_bytes: FetchBytes = DEFAULT_FETCH_BYTES
    topic_id: str = ""
    """The follower's id of the topic ("": not checked); another id than the leader's
    is ``UNKNOWN_TOPIC`` (the name was deleted and created again)."""
    start_offset: int = 0
    """The follower's log start offset: ``delete_records`` is answered once every
    in-sync replica's has reached the new start."""


class ReplicaPart(msgspec.Struct):
    """One partition of a ``replica_fetch_many``: a ``replica_fetch``'s own fields, and
    what the follower already knows of the partition: its high watermark and its latest
    epoch entry.  At the deadline the leader leaves out a part whose answer would tell it
    nothing new (no batches, the same high watermark, start offset and latest epoch): the
    follower asks again for every part the last reply did not name.  -1: not said (a
    follower from before these fields), and the part is always answered."""

    topic: str
    partition: Partition
    offset: NonNeg
    leader_epoch: int
    topic_id: str = ""
    start_offset: int = 0
    high_watermark: int = -1
    last_epoch: int = -1
    last_epoch_start: int = -1


class ReplicaFetchMany(_Request, tag="replica_fetch_many"):
    """A follower copies every partition it follows from one leader with one request
    (protocol 8; Kafka's one fetch per broker pair).  Each part is answered as its own
    ``replica_fetch`` would be, in a streamed reply (``more``: others follow with this id):
    the parts with batches (within ``max_bytes`` a reply) and errors at once, the others
    when batches come or after ``max_wait_ms``."""

    replica_id: NonNeg
    parts: Annotated[list[ReplicaPart], msgspec.Meta(max_length=65536)]
    max_wait_ms: WaitMs = 0
    max_bytes: FetchBytes = DEFAULT_FETCH_BYTES


class OffsetForLeaderEpoch(_Request, tag="offset_for_leader_epoch"):
    """Where ``epoch`` ended in the leader's log: where a follower truncates to."""

    topic: str
    partition: Partition
    epoch: int
    leader_epoch: int = -1


class Metadata(_Request, tag="metadata"):
    topics: list[str] | None = None


class ListOffsets(_Request, tag="list_offsets"):
    """The first offset with a timestamp >= ``timestamp`` (or LATEST=-1 / EARLIEST=-2)."""

    topic: str
    partition: Partition
    timestamp: Annotated[int, msgspec.Meta(ge=-2)]


class DescribeGroup(_Request, tag="describe_group"):
    group: str


class FindCoordinator(_Request, tag="find_coordinator"):
    """Which broker coordinates ``group`` (in a cluster: the leader of its partition of
    ``__rail_offsets``; a single broker coordinates every group itself)."""

    group: Name


class ListGroups(_Request, tag="list_groups"):
    pass


class Reassignment(msgspec.Struct, kw_only=True):
    topic: str
    partition: Partition
    replicas: list[int]
    """The new replica list (its first broker is the preferred leader)."""
    adding: list[int] = []
    removing: list[int] = []
    """In ``list_reassignments``: the brokers that join, and those that leave."""
    cancelled: bool = False
    """In ``list_reassignments``: cancelled, going back to the list it had (``removing``
    the brokers that joined it)."""
    throttle: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Bytes a second the leader sends each new replica while it catches up (0: no
    limit, as fast as they fetch)."""


class ReassignPartitions(_Request, tag="reassign_partitions"):
    """In a cluster: move partitions' replicas (Kafka's AlterPartitionReassignments); the
    controller carries it out after the reply.  All or nothing."""

    partitions: Annotated[list[Reassignment], msgspec.Meta(min_length=1, max_length=65536)]


class ListReassignments(_Request, tag="list_reassignments"):
    pass


class PartitionRef(msgspec.Struct, kw_only=True):
    topic: str
    partition: Partition


class CancelReassignments(_Request, tag="cancel_reassignments"):
    """In a cluster: cancel reassignments in progress (Kafka's AlterPartitionReassignments
    with no replicas): each partition's replica list goes back to the one it had; none
    named: every reassignment in progress."""

    partitions: Annotated[list[PartitionRef], msgspec.Meta(max_length=65536)] = []


class ElectLeaders(_Request, tag="elect_leaders"):
    """To the controller: move leadership to each partition's preferred replica (the first
    of its replica list) where it is in sync; no topic: every partition."""

    topic: str | None = None
    partition: Partition | None = None


class Stats(_Request, tag="stats"):
    pass


class Ping(_Request, tag="ping"):
    pass


Request = Union[
    Produce, Fetch, Join, Heartbeat, Poll, Commit, Seek, Leave, CreateTopic, DeleteTopic,
    Metadata, ListOffsets, DescribeGroup, ListGroups, Stats, Ping, CreatePartitions,
    DeleteRecords, DeleteGroup, ReplicaFetch, OffsetForLeaderEpoch, ProduceBatches,
    FindCoordinator, Release, ReassignPartitions, ListReassignments, ElectLeaders,
    CancelReassignments, ReplicaFetchMany,
]
OPS = tuple(t.__struct_config__.tag for t in Request.__args__)  # type: ignore[attr-defined]


# -- replies --------------------------------------------------------------------------
class _Reply(msgspec.Struct, tag_field="op", kw_only=True):
    id: int = 0


class ErrorReply(_Reply, tag="error"):
    code: str
    message: str


class ProduceReply(_Reply, tag="produce"):
    """``offsets``: ``[partition, base_offset, record_count]`` for each batch appended."""

    topic: str
    offsets: list[tuple[int, int, int]]
    duplicate: bool = False


class BatchResult(msgspec.Struct, array_like=True):
    """The outcome of one batch of a ``produce_batches``: ``[base_offset, record_count,
    duplicate, error, message]``; ``error`` is "" when the batch is stored (or was already),
    else one of ERROR_CODES, and then ``base_offset`` is -1."""

    base_offset: int
    record_count: int
    duplicate: bool = False
    error: str = ""
    message: str = ""


class ProduceBatchesReply(_Reply, tag="produce_batches"):
    results: list[BatchResult]


# A stored batch as sent: [base_offset, append_timestamp, records], where records is the
# msgpack array inline, or (raw_records) a bin holding that array's bytes.
WireBatch = tuple[int, int, msgspec.Raw]


class PartitionData(msgspec.Struct, kw_only=True):
    topic: str
    partition: int
    offset: int
    end_offset: int
    batches: list[WireBatch]


class FetchReply(_Reply, tag="fetch"):
    topic: str
    partition: int
    offset: int
    start_offset: int
    end_offset: int
    batches: list[WireBatch]


class JoinReply(_Reply, tag="join"):
    member_id: str
    generation: int
    assignment: list[tuple[str, int]]
    heartbeat_interval_ms: int


class HeartbeatReply(_Reply, tag="heartbeat"):
    generation: int
    assignment: list[tuple[str, int]]


class PollReply(_Reply, tag="poll"):
    generation: int
    assignment: list[tuple[str, int]]
    partitions: list[PartitionData]
    more: bool = False
    """True while a streaming poll stays parked: more replies with this id will follow."""


class CommitReply(_Reply, tag="commit"):
    pass


class ReleaseReply(_Reply, tag="release"):
    released: list[tuple[str, int]]
    """Those of the partitions asked that this member was handing over (now handed over)."""


class SeekReply(_Reply, tag="seek"):
    pass


class LeaveReply(_Reply, tag="leave"):
    pass


class CreateTopicReply(_Reply, tag="create_topic"):
    topic: str
    partitions: int
    created: bool = True


class DeleteTopicReply(_Reply, tag="delete_topic"):
    topic: str


class CreatePartitionsReply(_Reply, tag="create_partitions"):
    topic: str
    partitions: int


class DeleteRecordsReply(_Reply, tag="delete_records"):
    topic: str
    partition: int
    start_offset: int


class DeleteGroupReply(_Reply, tag="delete_group"):
    group: str


class ReplicaFetchReply(_Reply, tag="replica_fetch"):
    topic: str
    partition: int
    leader_epoch: int
    high_watermark: int
    end_offset: int
    batches: list[bytes]
    """Stored batches as they are on disk: the 64-byte header, then the payload."""
    epochs: list[tuple[int, int]] = []
    """The leader's epochs, ``[epoch, start_offset]``: the follower copies them."""
    start_offset: int = 0
    """The leader's log start offset: the follower moves its own up to it
    (``delete_records``)."""


class PartError(msgspec.Struct):
    """A part of a ``replica_fetch_many`` that failed: the code a ``replica_fetch`` of it
    would have got."""

    topic: str
    partition: int
    code: str
    message: str


class ReplicaFetchManyReply(_Reply, tag="replica_fetch_many"):
    fetched: list[ReplicaFetchReply] = []
    errors: list[PartError] = []
    more: bool = False
    """True while parts of the request are still waiting: another reply with this id
    follows (answered parts are not in it)."""


class OffsetForLeaderEpochReply(_Reply, tag="offset_for_leader_epoch"):
    epoch: int
    end_offset: int


class PartitionInfo(msgspec.Struct, kw_only=True):
    partition: int
    start_offset: int
    end_offset: int
    size_bytes: int
    leader: int = -1
    """In a cluster: the broker id of the leader (-1: offline, or a single broker)."""
    leader_epoch: int = -1
    replicas: list[int] = []
    isr: list[int] = []


class BrokerInfo(msgspec.Struct, kw_only=True):
    id: int
    api: str
    ingest: str


class TopicInfo(msgspec.Struct, kw_only=True):
    name: str
    partitions: list[PartitionInfo]
    config: dict[str, Any]


class MetadataReply(_Reply, tag="metadata"):
    topics: list[TopicInfo]
    brokers: list[BrokerInfo] = []
    """In a cluster: every live broker (empty for a single broker)."""
    controller: int = -1


class ListOffsetsReply(_Reply, tag="list_offsets"):
    offset: int


class MemberInfo(msgspec.Struct, kw_only=True):
    member_id: str
    client_id: str
    topics: list[str]
    assignment: list[tuple[str, int]]
    last_seen_ms_ago: int


class GroupPartition(msgspec.Struct, kw_only=True):
    topic: str
    partition: int
    committed: int | None
    position: int | None
    end_offset: int
    lag: int
    owner: str | None


class DescribeGroupReply(_Reply, tag="describe_group"):
    group: str
    state: str
    generation: int
    members: list[MemberInfo]
    partitions: list[GroupPartition]


class ReassignPartitionsReply(_Reply, tag="reassign_partitions"):
    partitions: list[Reassignment]
    """The reassignments now in progress, as asked."""


class ListReassignmentsReply(_Reply, tag="list_reassignments"):
    reassignments: list[Reassignment]


class Cancellation(msgspec.Struct, kw_only=True):
    topic: str
    partition: int
    code: str = ""
    """"" when the cancel is recorded (the controller then moves the list back; see
    ``list_reassignments``); NOT_IN_PROGRESS when no reassignment of it is in progress
    (never started, or finished before the cancel)."""
    message: str = ""


class CancelReassignmentsReply(_Reply, tag="cancel_reassignments"):
    partitions: list[Cancellation]


class Election(msgspec.Struct, kw_only=True):
    topic: str
    partition: int
    leader: int
    """The leader now (-1: none)."""
    code: str = ""
    """"" when the preferred replica leads now; else why not: PREFERRED_NOT_AVAILABLE (not
    live, or not in sync), REASSIGNMENT_IN_PROGRESS, CONFLICT (the state changed: retry)."""
    message: str = ""


class ElectLeadersReply(_Reply, tag="elect_leaders"):
    partitions: list[Election]


class FindCoordinatorReply(_Reply, tag="find_coordinator"):
    coordinator: int
    """The coordinator's broker id (-1: a single broker, which coordinates every group)."""
    api: str
    """The coordinator's API endpoint: send the group's ops there."""


class ListGroupsReply(_Reply, tag="list_groups"):
    groups: list[str]


class StatsReply(_Reply, tag="stats"):
    stats: dict[str, Any]


class PingReply(_Reply, tag="ping"):
    version: int
    time_ms: int


Reply = Union[
    ErrorReply, ProduceReply, FetchReply, JoinReply, HeartbeatReply, PollReply, CommitReply,
    SeekReply, LeaveReply, CreateTopicReply, DeleteTopicReply, MetadataReply,
    ListOffsetsReply, DescribeGroupReply, ListGroupsReply, StatsReply, PingReply,
    CreatePartitionsReply, DeleteRecordsReply, DeleteGroupReply, ReplicaFetchReply,
    OffsetForLeaderEpochReply, ProduceBatchesReply, FindCoordinatorReply, ReleaseReply,
    ReassignPartitionsReply, ListReassignmentsReply, ElectLeadersReply,
    CancelReassignmentsReply, ReplicaFetchManyReply,
]


# -- records as consumers see them ----------------------------------------------------
class WireRecord(msgspec.Struct, array_like=True):
    """A record inside a batch's ``records`` array: ``[value, key, headers, timestamp]``."""

    value: Any
    key: Any = None
    headers: dict[str, Any] | None = None
    timestamp: int | None = None


# -- the key hash, the same in every client -------------------------------------------
def key_bytes(key: Any) -> bytes:
    """The bytes a key hashes by: UTF-8 of a str, a bytes key itself, else its msgpack."""
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    return msgspec.msgpack.encode(key)


def partition_for_key(key: Any, partitions: int) -> int:
    """``crc32(key_bytes(key)) % partitions`` (CRC-32 as in zlib, unsigned)."""
    return zlib.crc32(key_bytes(key)) % partitions


MAX_NAME = 249  # characters of a topic or a group name
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def valid_topic_name(name: str) -> bool:
    """``[A-Za-z0-9._-]{1,249}``, and never ``.`` or ``..``."""
    return _TOPIC_NAME.fullmatch(name) is not None and name not in (".", "..")


def fitted_name(prefix: str, base: str, suffix: str, limit: int = MAX_NAME) -> str:
    """``prefix + base + suffix``; when that is longer than ``limit`` characters, ``base``
    is cut and 16 hex digits of its SHA-256 added, so that a name derived from a valid
    name of any length is valid too and two bases still give two names."""
    name = prefix + base + suffix
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:16]
    return f"{prefix}{base[:limit - len(prefix) - len(suffix) - 17]}.{digest}{suffix}"
