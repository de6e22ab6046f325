"""Broker settings: command-line flags over an optional TOML file over defaults."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from brokerd.log.config import LogConfig
from brokerd.protocol import MAX_FRAME_BYTES, MAX_REQUEST_BYTES

FsyncPolicy = Literal["always", "interval", "never"]


class TopicDefaults(LogConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A topic's settings: the log's plus partition count and durability."""

    partitions: int = 1
    fsync: FsyncPolicy = "interval"
    fsync_interval_ms: int = 100
    replication_factor: int = 0
    """Replicas of each partition in a cluster (0: min(3, live brokers)); 1 on one broker."""
    min_insync_replicas: int = 0
    """In-sync replicas an ``acks="all"`` produce needs (0: 2, or 1 without replicas)."""

    def problem(self) -> str | None:
        if not 1 <= self.partitions <= 1024:
            return "partitions must be between 1 and 1024"
        if self.fsync_interval_ms < 1:
            return "fsync_interval_ms must be positive"
        return super().problem()


class BrokerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    data_dir: str = "./data"
    bind: str = "tcp://127.0.0.1:7400"
    ingest: str = "tcp://127.0.0.1:7401"
    auto_create_topics: bool = True
    topic_defaults: TopicDefaults = TopicDefaults()
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_waiting_per_client: int = 64
    retention_check_ms: int = 60_000
    broker_id: int = -1
    zookeeper: str = ""
    """``host:port[,host:port...][/chroot]``: join a cluster; empty: a single broker."""
    advertise: str = ""
    """The API endpoint other brokers and clients use (default: the bound one)."""
    replica_lag_time_ms: int = 10_000
    metrics: str = ""
    """``host:port`` for Prometheus ``/metrics`` (port 0: any free one); empty: off."""
    zookeeper_session_timeout_ms: int = 6_000
    zookeeper_connection_timeout_ms: int = 10_000
    """How long a starting broker tries to reach ZooKeeper before it exits 69 (Kafka's
    ``zookeeper.connection.timeout.ms``)."""
    auto_leader_rebalance: bool = True
    """As controller, move leadership back to preferred replicas (Kafka's
    ``auto.leader.rebalance.enable``; brokerd/cluster/reassign.py)."""
    leader_imbalance_check_interval_ms: int = 300_000
    leader_imbalance_per_broker_percent: int = 10
    curve_secret_key: str = ""
    """The broker's CURVE secret key file (``rail keys new``): CURVE on every socket."""
    acl: str = ""
    """``acl.toml``: the principals allowed to connect and their rules (docs/security.md)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"] = "INFO"


class ConfigError(Exception):
    """The flags or the config file are wrong; the message says which setting."""


def load_config(path: str | None, overrides: dict[str, Any]) -> BrokerConfig:
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = msgspec.convert(raw, BrokerConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"bad config: {exc}") from exc
    problem = config.topic_defaults.problem()
    if problem:
        raise ConfigError(f"bad config: topic_defaults: {problem}")
    return config


def topic_config(defaults: TopicDefaults, overrides: dict[str, Any]) -> TopicDefaults:
    """Apply per-topic overrides; raise ValueError naming the bad setting."""
    try:
        merged = msgspec.convert({**msgspec.to_builtins(defaults), **overrides}, TopicDefaults)
    except msgspec.ValidationError as exc:
        raise ValueError(f"bad topic config: {exc}") from exc
    problem = merged.problem()
    if problem:
        raise ValueError(f"bad topic config: {problem}")
    return merged
