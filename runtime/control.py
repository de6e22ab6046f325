"""The supervisor's control socket: ``rail status/register/unregister/scale/restart/down``.

A ZeroMQ ROUTER (default ``tcp://127.0.0.1:7402``) served by the supervisor's loop; clients
use a DEALER.  One msgpack frame each way: a request tagged by ``op``, a ``ControlReply``.
Neither class is thread-safe.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from brokerd import protocol as p
from runtime.config import (BROKER_NAME, DEFAULT_CONTROL, ConfigError, WorkerSpec, check_name,
                            typed)
from runtime.registry import validate_script
from runtime.security import control as security
from runtime.security.keys import KeyConfigError

if TYPE_CHECKING:
    from runtime.process import Replica, Watcher
    from runtime.supervisor import Supervisor

LOG = logging.getLogger("rail.supervisor")


class _Request(msgspec.Struct, tag_field="op", kw_only=True):
    pass


class Status(_Request, tag="status"):
    name: str = ""  # one worker only


class Register(_Request, tag="register"):
    name: str
    script: str
    topics: list[str]
    group: str = ""
    replicas: int = 1
    policy: str = "permanent"


class Unregister(_Request, tag="unregister"):
    name: str


class Scale(_Request, tag="scale"):
    name: str
    replicas: int


class Restart(_Request, tag="restart"):
    name: str


class Down(_Request, tag="down"):
    pass


class Reload(_Request, tag="reload"):
    pass


Request = Status | Register | Unregister | Scale | Restart | Down | Reload


class ControlReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    error: str = ""
    result: Any = None


class ControlError(Exception):
    """The supervisor refused a request, or is not there; the message says what to do."""


_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(Request)
_replies = msgspec.msgpack.Decoder(ControlReply)


def counted(n: int, noun: str) -> str:
    """``1 replica``, ``2 replicas``: the count with its noun in the right number."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def default_endpoint() -> str:
    return os.environ.get("RAIL_CONTROL") or DEFAULT_CONTROL


class ControlServer:
    """The supervisor's end: bind, receive typed requests, send replies."""

    def __init__(self, endpoint: str, context: zmq.Context) -> None:
        """Bind ``endpoint``: CURVE with admins only, or a local socket (runtime.security)."""
        self.endpoint = endpoint
        try:
            self.guard = security.ControlGuard.from_env()
            if self.guard is None:
                security.check_unauthenticated(endpoint)
        except KeyConfigError as exc:
            raise ConfigError(str(exc)) from None
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        try:
            if self.guard is not None:
                self.guard.serve(self.socket, context)
            security.bind_private(self.socket, endpoint)
        except zmq.ZMQError:
            self.close()
            raise

    def receive(self) -> tuple[list[bytes], Request | None, str]:
        """One request: (route, decoded request or None, decode error)."""
        frames = self.socket.recv_multipart()
        route, body = frames[:-1], frames[-1]
        try:
            return route, _requests.decode(body), ""
        except msgspec.DecodeError as exc:
            return route, None, f"bad control request: {exc}"

    def reply(self, route: list[bytes], reply: ControlReply) -> None:
        self.socket.send_multipart([*route, _encoder.encode(reply)])

    def close(self) -> None:
        self.socket.close(linger=0)
        if self.guard is not None:
            self.guard.stop()


class ControlHandlers:
    """One ``handle_<op>`` per request, run by the supervisor's loop (so never concurrent
    with supervision itself)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def serve(self, server: ControlServer) -> None:
        for _ in range(100):
            if not server.socket.poll(0):
                return
            route, request, error = server.receive()
            if request is None:
                server.reply(route, ControlReply(ok=False, error=error))
                continue
            try:
                result = self.handle_control(request)
                server.reply(route, ControlReply(ok=True, result=result))
            except (ConfigError, ValueError, msgspec.ValidationError, OSError) as exc:
                server.reply(route, ControlReply(ok=False, error=str(exc)))

    def handle_control(self, request: Request) -> Any:
        match request:
            case Status(name=name):
                return self.handle_status(name)
            case Register():
                return self.handle_register(request)
            case Unregister(name=name):
                return self.handle_unregister(name)
            case Scale(name=name, replicas=replicas):
                return self.handle_scale(name, replicas)
            case Restart(name=name):
                return self.handle_restart(name)
            case Reload():
                return {"changes": self.sup.reload()}
            case Down():
                LOG.info("rail down: stopping gracefully")
                self.sup.begin_stop()
                return {"pid": os.getpid()}
        raise ValueError(f"unknown control request {request!r}")

    def watcher(self, name: str) -> Watcher:
        watcher = self.sup.watchers.get(name)
        if watcher is None or watcher.removing:
            known = ", ".join(sorted(self.sup.watchers)) or "none"
            raise ValueError(f"no worker named {name!r} (workers: {known}): see rail status")
        return watcher

    def handle_status(self, name: str = "") -> dict[str, Any]:
        watchers = [self.watcher(name)] if name else list(self.sup.watchers.values())
        now = time.monotonic()
        self.sup.note_status_interest(now)
        broker = self.sup.broker.child
        return {
            "pid": os.getpid(), "uptime_s": now - self.sup.started_at, "stopping": self.sup.stopping,
            "logs": str(self.sup.logs),
            "broker": {"endpoint": self.sup.broker.endpoint, "external": self.sup.broker.external,
                       "pid": broker.pid if broker else None, "restarts": self.sup.broker.restarts,
                       "error": self.sup.broker.failed,
                       "state": "failed" if self.sup.broker.failed else
                       "running" if broker or self.sup.broker.external else "restarting",
                       "cpu_percent": broker.cpu_percent if broker else None,
                       "rss": broker.rss if broker else None},
            "workers": [self.worker_status(w, now) for w in watchers],
        }

    def worker_status(self, watcher: Watcher, now: float) -> dict[str, Any]:
        alive = [r for r in watcher.alive() if r.child is not None]
        children = [r.child for r in alive if r.child is not None]
        healths = [r.health for r in alive if r.health is not None]
        lag = None
        broker_up = self.sup.broker.child is not None or self.sup.broker.external
        reply = self.sup.broker_call(p.DescribeGroup(group=watcher.spec.group)) \
            if broker_up else None
        group = reply if isinstance(reply, p.DescribeGroupReply) else None
        if group is not None and alive:
            lag = sum(part.lag for part in group.partitions)
        processed = self.sup.processed(watcher, group)
        if processed is not None:
            watcher.processed_seen = processed
        elif watcher.processed_seen is not None:  # the broker is away: the last count
            processed = watcher.processed_seen
        else:  # no baseline: what the replicas reported (work since their last beat is lost)
            processed = watcher.processed_before + sum(h.processed for h in healths)
        return {
            "name": watcher.name, "group": watcher.spec.group, "topics": watcher.spec.topics,
            "script": watcher.spec.script, "registered": watcher.registered,
            "replicas": watcher.spec.replicas, "pids": [c.pid for c in children],
            "state": watcher.state(), "error": watcher.failed, "restarts": watcher.restarts,
            "recycles": watcher.recycles,
            "uptime_s": min((now - c.started_at for c in children), default=None),
            "cpu_percent": sum(c.cpu_percent for c in children) if children else None,
            "rss": sum(c.rss for c in children) if children else None,
            "processed": processed,
            "failed": watcher.failed_before + sum(h.failed for h in healths),
            "lag": lag,
            "handler": self.sup.handler_status(watcher.name),
            "processes": [replica_status(r, now) for r in sorted(watcher.replicas.values(),
                                                                  key=lambda r: r.index)],
        }

    def handle_register(self, r: Register) -> dict[str, Any]:
        check_name(r.name)
        if r.name in self.sup.watchers:
            raise ValueError(f"a worker named {r.name!r} is already registered: pick another "
                             "name, or rail unregister it first")
        if self.sup.stopping:
            raise ValueError("the supervisor is stopping")
        script = str(Path(r.script).resolve())
        validate_script(script)
        spec = typed({"script": script, "topics": r.topics, "group": r.group or r.name,
                      "replicas": r.replicas, "policy": r.policy}, WorkerSpec,
                     f"register {r.name}", "")
        for topic in spec.topics:
            self.sup.create_topic(topic)
        self.sup.adopt(r.name, spec)
        return {"name": r.name, "replicas": spec.replicas,
                "warnings": self.sup.idle_replicas_warnings(spec)}

    def handle_unregister(self, name: str) -> dict[str, Any]:
        watcher = self.watcher(name)
        self.sup.registry.remove(name)
        self.sup.baselines.remove(name)
        self.sup.retire(watcher)
        return {"name": name, "from_rail_toml": not watcher.registered}

    def handle_scale(self, name: str, replicas: int) -> dict[str, Any]:
        watcher = self.watcher(name)
        if not 0 <= replicas <= 256:
            raise ValueError(f"replicas must be 0..256, not {replicas}")
        self.sup.rescale(watcher, replicas)
        if watcher.registered:
            self.sup.registry.put(name, watcher.spec)
        return {"name": name, "replicas": replicas, "persisted": watcher.registered,
                "warnings": self.sup.idle_replicas_warnings(watcher.spec)}

    def handle_restart(self, name: str) -> dict[str, Any]:
        if name == BROKER_NAME:
            self.sup.broker.restart()
            return {"name": name}
        watcher = self.watcher(name)
        watcher.failed = ""
        watcher.intensity.reset()
        for replica in watcher.replicas.values():
            replica.backoff.reset()
            if replica.child is not None:
                self.sup.terminate(replica, "restart")
        self.sup.start_watcher(watcher)
        return {"name": name}


def replica_status(replica: Replica, now: float) -> dict[str, Any]:
    """One replica's row of ``rail status NAME``."""
    child, health = replica.child, replica.health
    handling = health.handling(now) if child is not None and health is not None else None
    return {
        "replica": replica.index, "member_id": replica.member_id,
        "pid": child.pid if child else None, "state": replica.state(),
        "uptime_s": now - child.started_at if child else None, "restarts": replica.restarts,
        "cpu_percent": child.cpu_percent if child else None, "rss": child.rss if child else None,
        "processed": health.processed if child and health else None,
        "handling": None if handling is None else {
            "topic": handling[0], "partition": handling[1], "offset": handling[2],
            "for_s": handling[3], "in_flight": health.in_flight if health else 1},
    }


def call(endpoint: str, request: Request, timeout_s: float = 5.0) -> Any:
    """Send one request to the supervisor at ``endpoint``; return its result or raise
    ControlError with a one-line message."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        security.secure_client(sock)
        sock.connect(endpoint)
        sock.send(_encoder.encode(request))
        if not sock.poll(int(timeout_s * 1000)):
            raise ControlError(f"no supervisor at {endpoint}: start one with rail up "
                               "(or pass --control / set RAIL_CONTROL)")
        reply = _replies.decode(sock.recv())
    except zmq.ZMQError as exc:
        raise ControlError(f"cannot reach {endpoint}: {exc}: check --control") from None
    except KeyConfigError as exc:
        raise ControlError(str(exc)) from None
    finally:
        sock.close(linger=0)
    if not reply.ok:
        raise ControlError(reply.error)
    return reply.result
