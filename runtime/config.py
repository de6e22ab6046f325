"""``rail.toml``: the broker, the supervisor, the topics and the workers to run.

Relative paths (``[broker].data_dir``, ``[workers.*].script``) are resolved against the
folder holding the toml file.  Errors are one line naming the bad key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

DEFAULT_CONTROL = "tcp://127.0.0.1:7402"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
NODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"  # [supervisor].node, in member ids
BROKER_NAME = "brokerd"  # what rail status calls the broker; no worker may take it


class ConfigError(Exception):
    """rail.toml (or a registration) is unusable; the message names the key and the fix."""


class BrokerSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    data_dir: str = "./data"
    bind: str = "tcp://127.0.0.1:7400"
    ingest: str = "tcp://127.0.0.1:7401"
    endpoint: str = ""  # a running broker to use instead of starting one
    curve_secret_key: str = ""  # brokerd --curve-secret-key (docs/security.md)
    acl: str = ""  # brokerd --acl: acl.toml, needed with curve_secret_key
    # a cluster (docs/cluster.md): brokerd --zookeeper HOST:PORT[,...][/chroot], --broker-id
    # (each broker its own, >= 0) and --advertise (the endpoint others use, if not bind)
    zookeeper: str = ""
    broker_id: Annotated[int, msgspec.Meta(ge=0)] | None = None
    advertise: str = ""


class SupervisorSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    control: str = DEFAULT_CONTROL
    grace_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    hang_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    log_max_mb: Annotated[float, msgspec.Meta(ge=0)] = 10.0  # 0: logs grow without a cap
    log_backups: Annotated[int, msgspec.Meta(ge=0, le=100)] = 3
    metrics: str = ""  # host:port for Prometheus /metrics (port 0: a free one); "": off
    console: str = ""  # host:port for the web console (docs/console.md); "": off
    delays: bool = False  # run the delay mover (rail.delays) for delayed sends
    # This supervisor's name in its workers' member ids (cook-0.<node>): supervisors on
    # several hosts run replicas of the same workers in the same groups.  "": b<broker id>
    # when its broker joins a cluster, the host's name with --broker, none otherwise.
    node: Annotated[str, msgspec.Meta(pattern=f"^$|{NODE_PATTERN}")] = ""


class TopicSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None


class ScheduleSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[schedules.NAME]``, a periodic event (runtime/worker/schedules.py): ``every``,
    ``offset`` and ``catch_up`` are durations ("30s", "5m", "2h", "1d", "250ms", or a
    number of seconds)."""

    topic: Annotated[str, msgspec.Meta(min_length=1)]
    every: str | float | None = None  # an interval, or:
    cron: str = ""  # "0 3 * * 1-5" (runtime/worker/cron.py), in timezone
    timezone: str = "UTC"
    offset: str | float = 0  # ticks at every * n + offset of Unix time, e.g. 3h with 1d
    catch_up: str | float = "60s"  # a tick at most this late is still sent
    value: Any = None  # default: {"schedule": NAME, "tick": n, "due_ms": ...}
    key: str | None = None
    headers: dict[str, str] = {}


RATE_PATTERN = r"^(|\s*(\d*[1-9]\d*(\.\d+)?|\d+\.\d*[1-9]\d*)\s*/\s*[smh]\s*)$"


class WorkerSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One worker: a script run as ``replicas`` processes in consumer group ``group``."""

    script: str
    topics: Annotated[list[str], msgspec.Meta(min_length=1)]
    group: str = ""  # default: the worker's name
    replicas: Annotated[int, msgspec.Meta(ge=0, le=256)] = 1
    policy: Literal["permanent", "transient", "temporary"] = "permanent"
    retries: Annotated[int, msgspec.Meta(ge=0)] = 3
    max_restarts: Annotated[int, msgspec.Meta(ge=0)] = 5
    within_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    backoff_s: Annotated[float, msgspec.Meta(ge=0)] = 0.1
    backoff_max_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    max_rss_mb: Annotated[float, msgspec.Meta(ge=0)] = 0
    handler_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # handler calls at once per replica, one at a time per key (docs/workers.md)
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    drain_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0  # a stop lets handlers finish
    quarantine_after: Annotated[int, msgspec.Meta(ge=0)] = 3  # crashes on one event; 0: never
    # "N/s", "N/m" or "N/h": handler calls of all replicas together; "": no limit
    rate: Annotated[str, msgspec.Meta(pattern=RATE_PATTERN)] = ""
    key_rate: Annotated[str, msgspec.Meta(pattern=RATE_PATTERN)] = ""  # per key, same form
    # past handler_timeout_s: "recycle" (SIGKILL + restart; counts towards quarantine) or
    # "report" (a log line per event; the handler keeps running)
    handler_timeout_action: Literal["recycle", "report"] = "recycle"


class RailConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    broker: BrokerSection = msgspec.field(default_factory=BrokerSection)
    supervisor: SupervisorSection = msgspec.field(default_factory=SupervisorSection)
    topics: dict[str, TopicSection] = {}
    workers: dict[str, WorkerSpec] = {}
    connectors: list[dict[str, Any]] = []  # Rail Connect: each becomes a worker (resolve)
    # periodic events, sent by the delay mover (runtime/worker/schedules.py)
    schedules: dict[str, ScheduleSection] = {}


def check_broker(broker: BrokerSection) -> None:
    """The [broker] keys that only make sense together, once the flags are applied."""
    if broker.zookeeper and broker.endpoint:
        raise ConfigError("broker.zookeeper starts a broker that joins a cluster, "
                          "broker.endpoint (or --broker) uses a running one: give one of them")
    if broker.zookeeper and broker.broker_id is None:
        raise ConfigError("broker.zookeeper needs broker.broker_id (--broker-id N): each "
                          "broker of the cluster its own N >= 0")
    if not broker.zookeeper and (broker.broker_id is not None or broker.advertise):
        key = "broker_id" if broker.broker_id is not None else "advertise"
        raise ConfigError(f"broker.{key} is for a broker in a cluster: set broker.zookeeper "
                          "(--zookeeper HOST:PORT[/chroot]) too, or drop it")


def load_config(path: str | Path | None) -> tuple[RailConfig, Path]:
    """Read ``path`` (default ``./rail.toml``; missing default = empty config) and return
    it with paths made absolute, plus the folder relative paths were resolved against."""
    explicit = path is not None
    file = Path(path if path is not None else "rail.toml").resolve()
    if not file.exists():
        if explicit:
            raise ConfigError(f"{file}: no such file: pass -c with the path of your rail.toml")
        return resolve(RailConfig(), file.parent), file.parent
    try:
        raw = tomllib.loads(file.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: {exc}") from None
    return resolve(convert(raw, RailConfig, str(file)), file.parent), file.parent


def convert(raw: dict[str, object], kind: type, where: str) -> RailConfig:
    """Convert section by section so an error names the table (msgspec hides dict keys)."""
    tables: dict[str, dict[str, object]] = {
        key: raw.pop(key) for key in ("topics", "workers", "schedules")  # type: ignore[misc]
        if isinstance(raw.get(key), dict)}
    config = typed(raw, kind, where, "")
    config.topics = {name: typed(body, TopicSection, where, f"topics.{name}.")
                     for name, body in tables.get("topics", {}).items()}
    config.workers = {name: typed(body, WorkerSpec, where, f"workers.{name}.")
                      for name, body in tables.get("workers", {}).items()}
    config.schedules = {name: typed(body, ScheduleSection, where, f"schedules.{name}.")
                        for name, body in tables.get("schedules", {}).items()}
    for name, section in config.schedules.items():
        if not NAME_RE.match(name):
            raise ConfigError(f"{where}: schedules.{name}: a schedule name is letters, "
                              "digits, '_', '.', '-' (up to 100, starting with one of the "
                              "first two)")
        from runtime.worker.schedules import check as check_schedule  # it imports this

        try:
            check_schedule(name, section)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return config


def typed(raw: object, kind: type, where: str, prefix: str) -> Any:
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        message = readable(str(exc))
        key = prefix.rstrip(".") if message.startswith("object ") else prefix
        raise ConfigError(f"{where}: {key}{': ' if key == prefix.rstrip('.') and key else ''}"
                          f"{message}") from None


def readable(message: str) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.workers.pizza.replicas`" as
    "workers.pizza.replicas: expected int, got str"."""
    problem, _, at = message.partition(" - at `")
    key = at.rstrip("`").removeprefix("$").lstrip(".")
    problem = problem.replace("`", "")
    problem = problem[:1].lower() + problem[1:]
    return f"{key}: {problem}" if key else problem


def resolve(config: RailConfig, base: Path) -> RailConfig:
    config.broker.data_dir = str((base / config.broker.data_dir).resolve())
    for key in ("curve_secret_key", "acl"):
        if getattr(config.broker, key):
            setattr(config.broker, key, str((base / getattr(config.broker, key)).resolve()))
    for name, spec in config.workers.items():
        check_name(name)
        resolve_worker(name, spec, base)
    # imported here: runtime.connect.settings imports this module
    from runtime.connect.settings import connector_workers

    for name, table in connector_workers(config.connectors).items():
        check_name(name)
        if name in config.workers:
            raise ConfigError(f"connectors.{name}: a worker has this name too: rename one")
        config.workers[name] = resolve_worker(
            name, typed(table, WorkerSpec, "rail.toml", f"connectors.{name}."), base)
    return config


def resolve_worker(name: str, spec: WorkerSpec, base: Path) -> WorkerSpec:
    spec.script = str((base / spec.script).resolve())
    spec.group = spec.group or name
    return spec


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(f"workers.{name}: a worker name is letters, digits, '_', '.', '-' "
                          "(up to 100, starting with a letter or digit)")
    if name == BROKER_NAME:
        raise ConfigError(f"workers.{name}: {BROKER_NAME!r} is the broker's name in rail status "
                          "and rail restart: pick another")
