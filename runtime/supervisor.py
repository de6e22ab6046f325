"""The supervisor behind ``rail up``: brokerd and every worker's replicas as supervised
children, after uvicorn's multiprocess supervisor and circus's arbiter -> watcher -> process.

One thread, one loop: signal handlers only enqueue (the wakeup fd wakes the loop), the loop
polls the control socket, the health PULL socket and the wakeup fd with a bounded timeout,
reaps children, restarts them per policy (runtime.policy), kills hung ones and recycles
ones past their memory limit.  Every child gets PR_SET_PDEATHSIG=SIGKILL, so a supervisor
killed by SIGKILL leaves no orphans.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from brokerd import protocol as p
from brokerd.protocol import EXIT_BIND, EXIT_CONFIG, EXIT_STORAGE, EXIT_UNAVAILABLE
from runtime import routing
from runtime.brokerchild import BrokerChild
from runtime.client import Producer
from runtime.config import RailConfig, WorkerSpec
from runtime.connection import BrokerError, Connection
from runtime.control import ControlHandlers, ControlServer, counted
from runtime.dlq import dlq_topic, fetch_range, send_to_dlq
from runtime.logfiles import LogRotation, PrefixedOutput
from runtime.policy import Health
from runtime.process import Child, Replica, Watcher, child_env, describe_exit
from runtime.registry import Baselines, Registry, baseline, replace_atomically
from runtime.reload import Reloader, script_digest
from runtime.worker import schedules
from runtime.worker.delays import DELAY_TOPIC, MOVER_GROUP
from runtime.worker.flight import read_flight
from runtime.worker.quarantine import load as load_quarantine
from runtime.worker.rate import per_second

LOG = logging.getLogger("rail.supervisor")
TICK_S = 1.0  # health checks, escalations and samples happen at most this often when idle
SAMPLE_EVERY_S = 2.0
STATUS_INTEREST_S = 10.0  # keep sampling CPU/RSS this long after the last status request


class Supervisor:
    def __init__(self, config: RailConfig, base_dir: Path, broker_endpoint: str = "",
                 config_path: Path | None = None, toml: RailConfig | None = None) -> None:
        """``config`` is what runs (flags applied); ``toml`` what ``config_path`` said when it
        was read (default: ``config``), which ``rail reload`` compares the file with."""
        self.config = config
        self.base_dir = base_dir
        self.config_path = config_path
        self.toml = copy_config(toml or config)
        self.digests = {name: script_digest(spec.script)
                        for name, spec in self.toml.workers.items()}
        self.data_dir = Path(config.broker.data_dir)
        self.logs = self.data_dir / "logs"
        self.log_rotation = LogRotation(self.logs, int(config.supervisor.log_max_mb * 1024 * 1024),
                                        config.supervisor.log_backups)
        self.registry = Registry(self.data_dir)
        self.baselines = Baselines(self.data_dir)
        self.broker = BrokerChild(config, broker_endpoint or config.broker.endpoint, self.logs,
                                  base_dir)
        self.watchers: dict[str, Watcher] = {}
        self.handler_totals: dict[str, HandlerTotals] = {}  # by worker name
        for name, spec in config.workers.items():  # a copy: rail scale changes it
            self.watchers[name] = Watcher(name, msgspec.structs.replace(spec), registered=False)
        for name, spec in self.registry.workers.items():
            self.watchers[name] = Watcher(name, spec, registered=True)
        if config.supervisor.delays or config.schedules:  # the delay mover (worker/mover.py)
            self.watchers[MOVER_GROUP] = Watcher(MOVER_GROUP, WorkerSpec(
                script=str(Path(__file__).parent / "worker" / "mover.py"), topics=[DELAY_TOPIC], group=MOVER_GROUP,
                backoff_s=0.1), registered=False)
        self.context = zmq.Context()
        self.signals: list[int] = []
        self.stopping = False
        self.started_at = time.monotonic()
        self.status_asked_at = -STATUS_INTEREST_S
        self.sampled_at = 0.0
        self.ticked_at = 0.0
        self._conn: Connection | None = None
        self.metrics: Any = None  # the /metrics HTTP server, when asked for
        self.console: Any = None  # the web console's thread, when asked for
        self.handlers = ControlHandlers(self)
        self.poller = zmq.Poller()
        self.outputs: dict[int, PrefixedOutput] = {}  # by pipe fd: what the workers print

    # -- life cycle -------------------------------------------------------------------
    def run(self) -> int:
        """Start everything, supervise until asked to stop, stop gracefully; exit code."""
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.control = ControlServer(self.config.supervisor.control, self.context)
        except zmq.ZMQError as exc:
            print(f"rail: cannot bind the control socket {self.config.supervisor.control}: "
                  f"{exc}: is another rail up running? (rail status, or set "
                  "[supervisor].control)", file=sys.stderr)
            return EXIT_BIND
        if self.config.supervisor.metrics:
            from runtime import metrics
            try:
                self.metrics = metrics.serve(self.config.supervisor.metrics,
                                             self.config.supervisor.control)
            except (OSError, ValueError) as exc:
                print(f"rail: cannot serve metrics on {self.config.supervisor.metrics}: {exc}",
                      file=sys.stderr)
                self.control.close()
                return EXIT_BIND
            host, port = self.metrics.server_address[:2]
            LOG.info("metrics on http://%s:%d/metrics", host, port)
        self.health = self.context.socket(zmq.PULL)
        self.health.setsockopt(zmq.LINGER, 0)
        self.health.bind("tcp://127.0.0.1:*")
        self.health_endpoint = self.health.getsockopt_string(zmq.LAST_ENDPOINT)
        wake_r, wake_w = self.install_signals()
        try:
            code = self.start_broker_and_topics() or self.start_console()
            if code:
                return code
            if not any(s in (signal.SIGINT, signal.SIGTERM) for s in self.signals):
                for watcher in self.watchers.values():
                    for warning in self.idle_replicas_warnings(watcher.spec):
                        LOG.warning("%s: %s", watcher.name, warning)
                    self.start_watcher(watcher)
            self.loop(wake_r)
            self.broker.stop()
            return 0
        finally:
            signal.set_wakeup_fd(-1)
            wake_r.close()
            wake_w.close()
            self.close()

    def start_console(self) -> int:
        """Serve the web console (``[supervisor] console``), once the broker answers; an
        exit code if it cannot be served."""
        address = self.config.supervisor.console
        if not address:
            return 0
        from runtime.console import ConsoleConfigError, ConsoleThread, Settings
        host, _, port = address.rpartition(":")
        try:
            self.console = ConsoleThread(Settings(
                broker=self.broker.endpoint, control=self.config.supervisor.control,
                host=host or "127.0.0.1", port=int(port),
                token=os.environ.get("RAIL_CONSOLE_TOKEN", ""),
                history=str(self.data_dir / "console-lag.jsonl")))
            served = self.console.start()
        except ConsoleConfigError as exc:
            print(f"rail: console: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except (OSError, ValueError, TimeoutError) as exc:
            print(f"rail: cannot serve the console on {address}: {exc}", file=sys.stderr)
            return EXIT_BIND
        LOG.info("console on http://%s/", served)
        return 0

    def install_signals(self) -> tuple[socket.socket, socket.socket]:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, lambda signum, frame: self.signals.append(signum))
        return wake_r, wake_w

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.shutdown()
        if self.console is not None:
            self.console.stop()
        if self._conn is not None:
            self._conn.close()
        self.control.close()
        self.health.close()
        self.context.term()

    def loop(self, wake: socket.socket) -> None:
        poller = self.poller
        poller.register(self.control.socket, zmq.POLLIN)
        poller.register(self.health, zmq.POLLIN)
        poller.register(wake.fileno(), zmq.POLLIN)
        while not (self.stopping and not self.any_worker_alive()):
            ready = dict(poller.poll(self.poll_timeout_ms()))
            if wake.fileno() in ready:
                drain(wake)
            for fd in [fd for fd in ready if fd in self.outputs]:
                if not self.outputs[fd].pump():  # EOF: closed at the child's exit
                    poller.unregister(fd)
                    self.outputs[fd].eof = True
            self.handle_signals()
            if self.health in ready:
                self.read_health()
            if self.control.socket in ready:
                self.handlers.serve(self.control)
            self.reap()
            self.tick(time.monotonic())

    def poll_timeout_ms(self) -> int:
        now = time.monotonic()
        due = [now + TICK_S]
        for replica in self.all_replicas():
            due += [t for t in (replica.restart_at, replica.kill_at) if t is not None]
        due += [t for t in (self.broker.restart_at, self.broker.kill_at) if t is not None]
        return max(0, int((min(due) - now) * 1000) + 1)

    def handle_signals(self) -> None:
        signals, self.signals = self.signals, []
        for signum in signals:
            # SIGHUP too: the terminal that ran ``rail up`` closed.  Its default action
            # ended the supervisor at once, and its children with it (their parent-death
            # signal is SIGKILL): a hangup now stops everything gracefully.
            if signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                if self.stopping:
                    LOG.warning("second %s: killing every worker now", signal.Signals(signum).name)
                    for replica in self.all_replicas():
                        if replica.child is not None:
                            replica.child.signal(signal.SIGKILL)
                else:
                    LOG.info("%s: stopping gracefully", signal.Signals(signum).name)
                    self.begin_stop()

    def begin_stop(self) -> None:
        self.stopping = True
        for watcher in self.watchers.values():
            for replica in watcher.replicas.values():
                replica.restart_at = None
                self.terminate(replica, "retire")

    def any_worker_alive(self) -> bool:
        return any(r.child is not None for r in self.all_replicas())

    def all_replicas(self) -> list[Replica]:
        return [r for w in self.watchers.values() for r in w.replicas.values()]

    # -- the broker -------------------------------------------------------------------
    def start_broker_and_topics(self) -> int:
        if self.broker.external:
            try:
                self.conn().call(p.Ping(), timeout_s=3.0)
            except BrokerError:
                print(f"rail: no broker answers at {self.broker.endpoint}: start it, or drop "
                      "--broker / [broker].endpoint to let rail up start one", file=sys.stderr)
                return 1
            LOG.info("using the running broker at %s", self.broker.endpoint)
        else:
            self.broker.spawn()
            endpoint, code = self.broker.wait_ready()
            if endpoint is None:
                # its own exit code when it names the cause (bind, config, storage)
                return code if code in (EXIT_BIND, EXIT_CONFIG, EXIT_STORAGE,
                                        EXIT_UNAVAILABLE) else 1
            self.broker.endpoint = endpoint
        try:
            for topic, section in self.config.topics.items():
                self.conn().call(p.CreateTopic(topic=topic, partitions=section.partitions,
                                               exist_ok=True))
            if MOVER_GROUP in self.watchers and DELAY_TOPIC not in self.config.topics:
                # a cluster creates a topic only when asked: delayed sends need it first
                self.conn().call(p.CreateTopic(topic=DELAY_TOPIC, exist_ok=True))
        except BrokerError as exc:
            print(f"rail: cannot create the topics of rail.toml: {exc}", file=sys.stderr)
            self.broker.stop()
            return 1
        return 0

    def conn(self) -> Connection:
        if self._conn is None:
            connect = routing.Router if self.broker.clustered else routing.connect
            self._conn = connect(self.broker.endpoint, context=self.context, timeout_s=2.0)
        return self._conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        """Create ``topic`` unless it exists; ValueError with the broker's reason if not."""
        try:
            self.conn().call(p.CreateTopic(topic=topic, partitions=partitions, exist_ok=True))
        except BrokerError as exc:
            if exc.code == "UNAVAILABLE":
                self._drop_conn()
                raise ValueError(f"the broker at {self.broker.endpoint} does not answer, so "
                                 f"topic {topic!r} cannot be created: see rail status") from None
            raise ValueError(f"cannot create topic {topic!r}: {exc.code}: {exc.message}") from None

    def idle_replicas_warnings(self, spec: WorkerSpec) -> list[str]:
        """Say so when some replicas will get no partition: the broker gives each partition
        of the worker's topics to one member, so replicas past their count sit idle."""
        topics = self.topics_of(spec)
        if not topics:
            return []
        partitions = sum(len(t.partitions) for t in topics)
        idle = spec.replicas - partitions
        if idle <= 0:
            return []
        names = [t.name for t in topics]
        has = (f"{names[0]} has" if len(names) == 1 else
               f"{', '.join(names[:-1])} and {names[-1]} have")
        in_all = "" if len(names) == 1 else " in all"
        return [(f"{counted(spec.replicas, 'replica')} but {has} "
                 f"{counted(partitions, 'partition')}{in_all}: {counted(idle, 'replica')} will "
                 "be idle")]

    def topics_of(self, spec: WorkerSpec) -> list[p.TopicInfo] | None:
        """The worker's topics that exist, or None if the broker does not answer."""
        reply = self.broker_call(p.Metadata())
        if not isinstance(reply, p.MetadataReply):
            return None
        return [t for t in reply.topics if t.name in spec.topics]

    def ensure_baseline(self, watcher: Watcher) -> None:
        """Note where the worker's group stands before the worker first runs: PROCESSED in
        rail status is what the group committed since (exact after any crash)."""
        spec = watcher.spec
        if self.baselines.get(watcher.name, spec.group) is not None:
            return
        topics = self.topics_of(spec)
        group = self.broker_call(p.DescribeGroup(group=spec.group))
        if topics is None or not isinstance(group, p.DescribeGroupReply):
            LOG.warning("%s: the broker did not answer: PROCESSED counts from a later start",
                        watcher.name)
            return
        try:
            self.baselines.put(watcher.name, baseline(spec.group, topics, group))
        except OSError as exc:  # a full disk must not stop the supervisor
            LOG.error("%s: cannot write %s (%s): PROCESSED counts from a later start",
                      watcher.name, self.baselines.path, exc)

    def processed(self, watcher: Watcher, group: p.DescribeGroupReply | None) -> int | None:
        """Events the worker's group committed since the worker was first started: None
        without a baseline or a reply."""
        base = self.baselines.get(watcher.name, watcher.spec.group)
        if base is None or group is None:
            return None
        return base.processed(group, watcher.spec.topics)

    def broker_call(self, request: Any) -> Any:
        """One request, or None if the broker does not answer (the connection is renewed
        so a late reply cannot be mistaken for the next one)."""
        try:
            return self.conn().call(request)
        except BrokerError as exc:
            if exc.code == "UNAVAILABLE":
                self._drop_conn()
            LOG.debug("broker refused %s: %s", type(request).__name__, exc)
            return None

    # -- workers ----------------------------------------------------------------------
    def start_watcher(self, watcher: Watcher) -> None:
        self.ensure_baseline(watcher)
        if not watcher.quarantine_loaded:
            watcher.quarantine_loaded = True
            suspects, quarantined = load_quarantine(self.quarantine_path(watcher))
            watcher.crashes.quarantined |= quarantined
            for key in suspects:  # the counts are gone with the last supervisor: one each
                watcher.crashes.record([key], "a crash before the supervisor restarted")
        for index in range(watcher.spec.replicas):
            replica = watcher.replicas.get(index) or watcher.new_replica(index,
                                                                        self.broker.member_tag)
            if replica.child is None:
                self.spawn(watcher, replica)

    def worker_argv(self, watcher: Watcher, replica: Replica) -> list[str]:
        spec = watcher.spec
        return [sys.executable, "-m", "runtime.worker", spec.script,
                "--broker", self.broker.endpoint, "--group", spec.group,
                "--topics", ",".join(spec.topics), "--name", watcher.name,
                "--member-id", replica.member_id, "--health", self.health_endpoint,
                "--retries", str(spec.retries), "--concurrency", str(spec.concurrency),
                "--drain-timeout-s", str(spec.drain_timeout_s),
                "--rate", str(per_second(spec.rate) / max(1, spec.replicas) if spec.rate else 0),
                "--key-rate", str(per_second(spec.key_rate) if spec.key_rate else 0),
                "--flight", str(self.flight_path(watcher, replica)),
                "--quarantine", str(self.quarantine_path(watcher))]

    def flight_path(self, watcher: Watcher, replica: Replica) -> Path:
        return self.data_dir / "workers" / f"{watcher.name}.{replica.index}.flight"

    def quarantine_path(self, watcher: Watcher) -> Path:
        return self.data_dir / "workers" / f"{watcher.name}.quarantine.json"

    def spawn(self, watcher: Watcher, replica: Replica) -> None:
        env = child_env({"RAIL_BROKER": self.broker.endpoint, "RAIL_WORKER_NAME": watcher.name})
        if watcher.name == MOVER_GROUP and self.config.schedules:
            env[schedules.ENV] = schedules.to_env(self.config.schedules)
        try:
            child = Child(self.worker_argv(watcher, replica), env,
                          self.logs / f"{watcher.name}.log", self.base_dir,
                          prefix=f"{watcher.name}.{replica.index} | ")
        except OSError as exc:
            self.give_up(watcher, f"cannot start: {exc}")
            return
        replica.child = child
        replica.restart_at = replica.kill_at = None
        replica.then = ""
        replica.health = Health(child.started_at, self.config.supervisor.hang_timeout_s,
                                watcher.spec.handler_timeout_s)
        replica.backoff.started(child.started_at)
        if child.output is not None:
            self.outputs[child.output.fd] = child.output
            self.poller.register(child.output.fd, zmq.POLLIN)
        LOG.info("started %s.%d pid %d", watcher.name, replica.index, child.pid)

    def terminate(self, replica: Replica, then: str) -> None:
        """SIGTERM now, SIGKILL after grace_s; ``then`` says what follows its exit."""
        replica.then = then
        replica.restart_at = None
        if replica.child is not None:
            replica.child.signal(signal.SIGTERM)
            replica.kill_at = time.monotonic() + self.stop_wait_s(replica)

    def stop_wait_s(self, replica: Replica) -> float:
        """How long a SIGTERM'd replica gets before SIGKILL: grace_s, or, when it drains
        concurrent handlers, their drain_timeout_s and a few seconds to commit and leave."""
        grace = self.config.supervisor.grace_s
        for watcher in self.watchers.values():
            if watcher.replicas.get(replica.index) is replica and watcher.spec.concurrency > 1:
                return max(grace, watcher.spec.drain_timeout_s + 5)
        return grace

    def give_up(self, watcher: Watcher, why: str) -> None:
        watcher.failed = why
        LOG.error("%s failed: %s", watcher.name, why)
        for replica in watcher.replicas.values():
            replica.restart_at = None
            if replica.child is not None:
                self.terminate(replica, "retire")

    def reap(self) -> None:
        now = time.monotonic()
        if self.broker.child is not None:
            code = self.broker.child.proc.poll()
            if code is not None:
                self._drop_conn()
                self.broker.on_exit(code, now)
        for watcher in list(self.watchers.values()):
            for replica in list(watcher.replicas.values()):
                if replica.child is not None:
                    code = replica.child.proc.poll()
                    if code is not None:
                        self.on_worker_exit(watcher, replica, code, now)
            if watcher.removing and not watcher.replicas:
                del self.watchers[watcher.name]
                self.handler_totals.pop(watcher.name, None)
                LOG.info("%s unregistered", watcher.name)

    def on_worker_exit(self, watcher: Watcher, replica: Replica, code: int, now: float) -> None:
        child, replica.child, replica.kill_at = replica.child, None, None
        assert child is not None
        self.close_output(child, f"rail: pid {child.pid} exited with {describe_exit(code)}")
        if replica.health is not None:
            watcher.processed_before += replica.health.processed
            watcher.failed_before += replica.health.failed
        if watcher.name in self.handler_totals:
            self.handler_totals[watcher.name].exited(child.pid)
        LOG.log(logging.INFO if code == 0 else logging.WARNING, "%s.%d pid %d exited with %s",
                watcher.name, replica.index, child.pid, describe_exit(code))
        if code != 0 and not self.stopping and not replica.then:
            self.note_crash(watcher, replica, describe_exit(code))
        if code != 0 and (self.broker.child is not None or self.broker.external):
            # crash-aware handover: its partitions move to the survivors now, not after the
            # session timeout
            self.broker_call(p.Leave(group=watcher.spec.group, member_id=replica.member_id))
        then = replica.then
        if self.stopping or then == "retire" or watcher.failed:
            watcher.replicas.pop(replica.index, None)
        elif then == "restart":
            replica.restart_at = now
        elif code == EXIT_CONFIG:
            self.give_up(watcher, f"the script is unusable (exit code {EXIT_CONFIG}): see "
                         f"{self.logs / (watcher.name + '.log')}")
        elif not watcher.policy.should_restart(code):
            LOG.info("%s.%d not restarted (policy %s)", watcher.name, replica.index,
                     watcher.policy.kind)
        elif watcher.intensity.record(now):
            self.give_up(watcher, f"more than {counted(watcher.spec.max_restarts, 'restart')} "
                         f"within {watcher.spec.within_s:g} s")
        else:
            watcher.restarts += 1
            replica.restarts += 1
            replica.restart_at = now + replica.backoff.next_delay(now)

    def note_crash(self, watcher: Watcher, replica: Replica, reason: str) -> None:
        """Count the crash against the events the replica's flight record shows in its
        handlers; quarantine those due (runtime.policy.CrashLedger); tell the hosts."""
        busy = read_flight(self.flight_path(watcher, replica))
        if not busy or not watcher.crashes.after:
            return
        for key in watcher.crashes.record(busy, f"{watcher.name}.{replica.index} {reason}"):
            self.quarantine(watcher, key)
        body = msgspec.json.encode({"suspects": watcher.crashes.suspects(),
                                    "quarantined": sorted(watcher.crashes.quarantined)})
        try:
            replace_atomically(self.quarantine_path(watcher), body)
        except OSError as exc:
            LOG.error("%s: cannot write %s: %s", watcher.name, self.quarantine_path(watcher), exc)

    def quarantine(self, watcher: Watcher, key: tuple[str, int, int]) -> None:
        """Put the event at ``key`` in its DLQ, acked, before the hosts are told to skip it;
        if the broker does not take it now, the event stays a suspect (the next crash on it
        tries again)."""
        topic, partition, offset = key
        reasons = watcher.crashes.crashes.get(key, [])
        try:
            events = fetch_range(self.conn(), topic, partition, offset, offset + 1)
            if not events:
                LOG.warning("%s: %s[%d]@%d crashed it %s but is gone from the log", watcher.name,
                            topic, partition, offset, counted(len(reasons), "time"))
            else:
                # acks by the brokers: "all" in a cluster (what the leader alone
                # acknowledged may be lost)
                producer = Producer(self.broker.endpoint)
                try:
                    send_to_dlq(producer, events[0], CrashedWorker(reasons), len(reasons))
                    producer.flush(timeout_s=5.0)
                finally:
                    producer.close(timeout_s=1.0)
        except BrokerError as exc:
            self._drop_conn()
            LOG.error("%s: cannot quarantine %s[%d]@%d now (%s): it stays a suspect",
                      watcher.name, topic, partition, offset, exc)
            return
        watcher.crashes.quarantine(key)
        LOG.error("%s: %s[%d]@%d quarantined to %s after %d crashes while handling it: %s",
                  watcher.name, topic, partition, offset, dlq_topic(topic), len(reasons),
                  "; ".join(reasons))

    def close_output(self, child: Child, last_word: str) -> None:
        """Relay what the child still had to say, then ``last_word`` (so that rail logs
        shows why a replica's lines stop)."""
        output = child.output
        if output is None:
            return
        if not output.eof:
            self.poller.unregister(output.fd)
        del self.outputs[output.fd]
        output.close(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {last_word}")

    # -- periodic work ----------------------------------------------------------------
    def tick(self, now: float) -> None:
        for watcher in list(self.watchers.values()):
            for replica in list(watcher.replicas.values()):
                if replica.restart_at is not None and now >= replica.restart_at \
                        and not self.stopping:
                    self.spawn(watcher, replica)
                elif replica.kill_at is not None and now >= replica.kill_at and replica.child:
                    LOG.warning("%s.%d did not stop within grace_s: SIGKILL", watcher.name,
                                replica.index)
                    replica.child.signal(signal.SIGKILL)
                    replica.kill_at = None
        if self.broker.restart_at is not None and now >= self.broker.restart_at \
                and not self.stopping:
            self.broker.spawn()
        if self.broker.kill_at is not None and now >= self.broker.kill_at and self.broker.child:
            LOG.warning("brokerd did not stop within grace_s: SIGKILL")
            self.broker.child.signal(signal.SIGKILL)
            self.broker.kill_at = None
        if now - self.ticked_at >= TICK_S:
            self.ticked_at = now
            self.check_health(now)
            self.log_rotation.check()
        if self.wants_samples(now) and now - self.sampled_at >= SAMPLE_EVERY_S:
            self.sample(now)

    def check_health(self, now: float) -> None:
        for watcher in self.watchers.values():
            for replica in watcher.alive():
                if replica.kill_at is not None or replica.health is None:
                    continue
                reason = replica.health.hung(now)
                if reason and watcher.spec.handler_timeout_action == "report" \
                        and replica.health.silent_s(now) <= replica.health.hang_timeout_s:
                    event = replica.health.event
                    if event is not None and event != replica.reported:
                        replica.reported = event
                        LOG.warning("%s.%d: %s[%d]@%d is taking long (%s)", watcher.name,
                                    replica.index, *event, reason)
                    continue
                if reason and replica.child is not None:
                    LOG.error("%s.%d is hung (%s): SIGKILL", watcher.name, replica.index, reason)
                    replica.child.signal(signal.SIGKILL)
                    replica.kill_at = None

    def wants_samples(self, now: float) -> bool:
        return now - self.status_asked_at < STATUS_INTEREST_S or any(
            w.spec.max_rss_mb > 0 for w in self.watchers.values())

    def sample(self, now: float) -> None:
        self.sampled_at = now
        if self.broker.child is not None:
            self.broker.child.sample()
        for watcher in self.watchers.values():
            limit = watcher.spec.max_rss_mb * 1024 * 1024
            for replica in watcher.alive():
                assert replica.child is not None
                replica.child.sample()
                if limit and replica.child.rss > limit and not replica.then:
                    LOG.warning("%s.%d uses %.0f MB > max_rss_mb=%g: recycling", watcher.name,
                                replica.index, replica.child.rss / 2**20, watcher.spec.max_rss_mb)
                    watcher.recycles += 1
                    self.terminate(replica, "restart")

    def read_health(self) -> None:
        for _ in range(1000):  # bounded: the loop gets back to its other work
            try:
                body = self.health.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = msgspec.msgpack.decode(body)
                watcher = self.watchers.get(str(message.get("name")))
            except (msgspec.DecodeError, AttributeError):
                continue
            if watcher is None:
                continue
            for replica in watcher.alive():
                if replica.member_id == message.get("member_id") and replica.child is not None \
                        and replica.child.pid == message.get("pid") and replica.health:
                    replica.health.beat(time.monotonic(), message)
                    self.handler_totals.setdefault(watcher.name, HandlerTotals()).beat(
                        replica.child.pid, message.get("handler_ns"))

    # -- used by the control handlers -------------------------------------------------
    def handler_status(self, name: str) -> dict[str, Any] | None:
        """The worker's handler durations for ``status`` (HandlerTotals.status)."""
        totals = self.handler_totals.get(name)
        return totals.status() if totals is not None else None

    def note_status_interest(self, now: float) -> None:
        """Someone watches: sample CPU/RSS for the next STATUS_INTEREST_S seconds."""
        if now - self.status_asked_at >= STATUS_INTEREST_S:
            self.sample(now)  # first sample after a quiet spell: CPU % needs a baseline
        else:  # processes started since the last sample get their first one now
            for replica in self.all_replicas():
                if replica.child is not None and not replica.child.sampled:
                    replica.child.sample()
        self.status_asked_at = now

    def reload(self) -> list[str]:
        """Read rail.toml again and apply what changed (runtime.reload); one line each."""
        return Reloader(self).reload()

    def retire(self, watcher: Watcher) -> None:
        """Stop every replica of ``watcher`` and drop it once they are gone."""
        if watcher.removing:
            return
        watcher.removing = True
        for replica in list(watcher.replicas.values()):
            if replica.child is None:
                watcher.replicas.pop(replica.index)
            else:
                self.terminate(replica, "retire")

    def rescale(self, watcher: Watcher, replicas: int) -> None:
        watcher.spec.replicas = replicas
        for replica in list(watcher.replicas.values()):
            if replica.index >= replicas:
                if replica.child is None:
                    watcher.replicas.pop(replica.index)
                else:
                    self.terminate(replica, "retire")
        if not watcher.failed:
            self.start_watcher(watcher)

    def respec(self, watcher: Watcher, spec: WorkerSpec) -> None:
        """Run ``watcher`` with new settings: every replica is restarted gracefully."""
        watcher.respec(spec)
        for replica in list(watcher.replicas.values()):
            if replica.index >= spec.replicas:
                if replica.child is None:
                    watcher.replicas.pop(replica.index)
                else:
                    self.terminate(replica, "retire")
            elif replica.child is not None:
                self.terminate(replica, "restart")
        self.start_watcher(watcher)

    def adopt(self, name: str, spec: WorkerSpec) -> None:
        """Supervise a worker registered at run time (and persist it)."""
        self.registry.put(name, spec)
        watcher = self.watchers[name] = Watcher(name, spec, registered=True)
        self.start_watcher(watcher)


class HandlerTotals:
    """One worker's handler durations over its replicas, from the ``handler_ns`` of their
    health reports (``[sum_ns, count of bucket 0, 1, ...]``, runtime.worker.HandlerTimes).

    A replica's last report is kept when it exits, so the cumulative counts of the
    histogram (``rail_worker_handler_seconds``) never go backwards across restarts; what a
    replica handled after its last report (up to a second's worth) is not counted."""

    def __init__(self) -> None:
        self.before: list[int] = []  # the exited replicas' reports, added up
        self.live: dict[int, list[int]] = {}  # by pid: each running replica's last report

    def beat(self, pid: int, report: Any) -> None:
        if isinstance(report, list) and report and all(type(n) is int for n in report):
            self.live[pid] = report

    def exited(self, pid: int) -> None:
        self.before = added(self.before, self.live.pop(pid, []))

    def status(self) -> dict[str, Any] | None:
        """``{"sum_ns": ..., "counts": [...]}`` over every replica; None before a report."""
        total = self.before
        for report in self.live.values():
            total = added(total, report)
        return {"sum_ns": total[0], "counts": total[1:]} if total else None


def added(a: list[int], b: list[int]) -> list[int]:
    """Element by element, the shorter list counting as zeros past its end."""
    if len(a) < len(b):
        a, b = b, a
    return [x + b[i] if i < len(b) else x for i, x in enumerate(a)]


class CrashedWorker(Exception):
    """Why a quarantined event is in the DLQ: the worker's processes died handling it."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(f"the worker died {counted(len(reasons), 'time')} while handling this "
                         f"event: {'; '.join(reasons)}")


def copy_config(config: RailConfig) -> RailConfig:
    return msgspec.json.decode(msgspec.json.encode(config), type=RailConfig)


def drain(sock: socket.socket) -> None:
    for _ in range(64):
        try:
            if not sock.recv(4096):
                return
        except BlockingIOError:
            return
