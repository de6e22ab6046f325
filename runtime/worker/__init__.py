"""The worker host: runs a script's ``handle(event, ctx)`` as a consumer-group member.

    python -m runtime.worker SCRIPT --broker tcp://127.0.0.1:7400 --group G --topics T1,T2 \\
        --name NAME [--member-id ID] [--health tcp://127.0.0.1:PORT] [--retries N] \\
        [--start earliest|latest] [--session-timeout-ms MS] [--concurrency N] \\
        [--drain-timeout-s S] [--flight FILE] [--quarantine FILE]

A script is plain Python defining ``handle(event, ctx)`` (sync or ``async def``) and
optionally ``setup(ctx)`` / ``teardown(ctx)``.  Events of one partition reach ``handle`` one
at a time, in offset order; with ``--concurrency N`` up to N at once, one at a time per key
(``runtime.worker.lanes``).  An offset is committed only after ``handle`` returned for it
and every lower one (at-least-once), and only after everything the handler sent with
``ctx.send`` is acked.  A handler that raises is retried ``--retries`` times with a doubling
backoff, then the event goes to ``<topic>.dlq`` with ``rail.*`` headers and the worker moves
on.  The events in the handlers are written to a flight record (``runtime.worker.flight``)
that the supervisor reads when the host crashes, to quarantine an event that keeps killing it
(``runtime.worker.quarantine``).

A script may instead bring its own loop (a streams pipeline, a connector): it defines
``run_hosted(host)``, which gets a ``Hosted`` (the parsed options, a logger, the counters the
health reports read, and a ``stopping`` flag that SIGTERM/SIGINT set) and returns the exit
code.  The supervisor starts and watches it like any worker.

The same script runs alone with ``run``::

    from runtime.worker import run

    def handle(event, ctx):
        print(event.value)

    if __name__ == "__main__":
        run(handle)          # python my_worker.py --topics orders

Exit codes (``brokerd.protocol``): 0 after SIGTERM/SIGINT (event in hand finished, sends
flushed, offsets committed, group left); ``EXIT_CONFIG`` (78) when the script is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import importlib.util
import inspect
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import zmq

from brokerd.protocol import EXIT_CONFIG, EXIT_OK, MAX_SESSION_TIMEOUT_MS
from runtime.client import DEFAULT_BROKER, Consumer, Event, Producer
from runtime.connection import BrokerError, BrokerUnavailable
from runtime.dlq import send_to_dlq
from runtime.worker.delays import cancel_delayed, send_delayed
from runtime.worker.flight import FREE, SLOT_WORDS, FlightRecord
from runtime.worker.lanes import Lanes, Runner
from runtime.worker.quarantine import QuarantineList
from runtime.worker.rate import RateLimit

__all__ = ["Context", "Hosted", "Options", "Script", "ScriptError", "Worker", "load_script",
           "main", "run", "serve", "serve_hosted"]

HEALTH_INTERVAL_S = 1.0
FIRST_BACKOFF_S = 0.05
BROKER_RETRY_S = 1.0  # pause between tries while the broker does not answer
POLL_TIMEOUT_S = 5.0  # a stop interrupts an idle poll at once (request_stop), so wait long
HEALTH_IDLE_EVERY_S = 5.0  # while idle and unchanged, report this often instead
OUTCOME_WAIT_S = 0.02  # with handlers running and room for more: look for new events this often
WINDOW_PER_SLOT = 10  # events taken ahead per concurrent slot (at least MIN_WINDOW)
ASSIGNMENT_CHECK_S = 1.0  # a full window asks for its assignment this often
MIN_WINDOW = 100
Handler = Callable[[Event, "Context"], Any]


class ScriptError(Exception):
    """The worker script cannot be used (missing, does not import, no ``handle``)."""


@dataclass
class Script:
    handle: Handler | None
    setup: Callable[[Context], Any] | None = None
    teardown: Callable[[Context], Any] | None = None
    run_hosted: Callable[[Hosted], int] | None = None  # a script with its own loop


def load_script(path: str) -> Script:
    """Import the script at ``path``; raise ScriptError with a one-line reason."""
    file = Path(path)
    if not file.is_file():
        raise ScriptError(f"worker script {path} not found: check the path (relative to the "
                          f"current folder {os.getcwd()})")
    sys.path.insert(0, str(file.resolve().parent))
    spec = importlib.util.spec_from_file_location(f"rail_script_{file.stem}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ScriptError(f"worker script {path} has a syntax error at line {exc.lineno}: "
                          f"{exc.msg}") from exc
    except BaseException as exc:
        raise ScriptError(f"worker script {path} failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc
    return script_of(module, path)


def script_of(module: ModuleType | dict[str, Any], path: str) -> Script:
    names = module if isinstance(module, dict) else vars(module)
    handle = names.get("handle")
    hosted = names.get("run_hosted")
    if callable(hosted) and not callable(handle):
        return Script(None, run_hosted=hosted)
    if not callable(handle):
        raise ScriptError(f"worker script {path} defines no handle(event, ctx) function: "
                          "add one")
    return Script(handle, names.get("setup"), names.get("teardown"))


@dataclass
class Context:
    """What a handler gets besides the event: ``send``, ``log``, ``name``, ``state``."""

    name: str
    member_id: str
    log: logging.Logger
    producer: Producer
    state: dict[str, Any] = field(default_factory=dict)

    def send(self, topic: str, value: Any, key: Any = None,
             headers: dict[str, Any] | None = None, *, delay_s: float | None = None,
             at: Any = None) -> str | None:
        """Send an event; it is acked before the offset of the event in hand is committed.

        With ``delay_s`` (seconds) or ``at`` (unix seconds or an aware datetime) it reaches
        ``topic`` once that time has come (runtime.worker.delays; needs ``rail up`` with
        ``[supervisor] delays = true``), and its delay id is returned (``cancel_delayed``)."""
        if delay_s is None and at is None:
            self.producer.send(topic, value, key=key, headers=headers)
            return None
        return send_delayed(self.producer, topic, value, key=key, headers=headers,
                            delay_s=delay_s, at=at)

    def cancel_delayed(self, delay_id: str) -> None:
        """Cancel an event sent with a delay, by the id ``send`` returned for it."""
        cancel_delayed(self.producer, delay_id)


@dataclass
class Hosted:
    """What a script's own loop (``run_hosted``) shares with the host.

    The loop keeps ``processed``/``failed``/``state``/``idle``/``current`` up to date (the
    health reports read them, and the supervisor takes a worker whose reports stop as hung)
    and returns soon after ``stopping`` turns true.
    """

    options: Options
    log: logging.Logger
    processed: int = 0
    failed: int = 0
    state: str = "starting"
    idle: bool = True
    current: tuple[str, int, int, float] | None = None  # topic, partition, offset, since
    stopping: bool = False

    def request_stop(self, *_: object) -> None:
        self.stopping = True


@dataclass
class Options:
    broker: str
    group: str
    topics: list[str]
    name: str
    member_id: str = ""
    health: str | None = None
    retries: int = 3
    start: str = "earliest"
    session_timeout_ms: int = 10_000
    concurrency: int = 1
    drain_timeout_s: float = 30.0
    flight: str | None = None  # the flight record's file (the supervisor reads it)
    quarantine: str | None = None  # the supervisor's suspects/quarantined list
    rate: float = 0.0  # handler calls per second at most (0: no limit)
    key_rate: float = 0.0  # handler calls per second per key at most (0: no limit)


SUM = 64  # HandlerTimes.counts[SUM]: the durations' sum (ns)
PER_EVENT_FROM_NS = 20_000  # handlers slower than this on average are timed event by event


class HandlerTimes:
    """How long the handler calls took, for the supervisor's latency histogram:
    ``counts[b]`` calls took ``b`` bits of nanoseconds (under ``2**b`` ns), ``counts[SUM]``
    is their sum.  Written by the main thread only; the health thread copies the list.

    At concurrency 1 timing each call (two clock reads and a bucket, ~0.2 µs) would cost a
    trivial handler (~0.4 µs an event) a third of its throughput, so a batch whose calls
    took under PER_EVENT_FROM_NS each on average is timed as a whole, each of its calls
    counted at the batch's mean, and the host's loop is the same as without timing; the
    next batch calls the handler through ``timed`` once the last one was slower (or a rate
    limit is on: its waits are no handler's).  The sum is exact either way; a rare slow
    call among fast ones is seen as the mean of its batch."""

    def __init__(self, per_event: bool) -> None:
        self.counts = [0] * (SUM + 1)
        self.per_event = per_event

    def batch(self, began_ns: int, ended_ns: int, calls: int, rate_limited: bool) -> None:
        """A batch of ``calls`` handler calls ran from ``began_ns`` to ``ended_ns``; if it
        was not timed call by call, count them now; choose how to time the next one."""
        if calls <= 0:
            return
        took = ended_ns - began_ns
        if not self.per_event:
            self.counts[(took // calls).bit_length()] += calls
            self.counts[SUM] += took
        self.per_event = rate_limited or took >= PER_EVENT_FROM_NS * calls

    def timed(self, handle: Handler) -> Handler:
        """``handle``, counting how long each call takes."""
        clock, counts = time.monotonic_ns, self.counts

        def timed_handle(event: Event, ctx: Context) -> Any:
            began = clock()
            try:
                return handle(event, ctx)
            finally:
                took = clock() - began
                counts[took.bit_length()] += 1
                counts[SUM] += took
        return timed_handle

    def timed_async(self, handle: Handler) -> Handler:
        """``timed`` for an ``async def handle``."""
        clock, counts = time.monotonic_ns, self.counts

        async def timed_handle(event: Event, ctx: Context) -> Any:
            began = clock()
            try:
                return await handle(event, ctx)
            finally:
                took = clock() - began
                counts[took.bit_length()] += 1
                counts[SUM] += took
        return timed_handle

    def report(self) -> list[int]:
        """``[sum_ns, counts[0], counts[1], ...]`` up to the last bucket used."""
        counts = list(self.counts)  # one copy: the main thread goes on counting
        used = max((b + 1 for b in range(SUM) if counts[b]), default=0)
        return [counts[SUM], *counts[:used]]


class Worker:
    """Consumes, calls the handler, commits; one thread does all of it (the main one).

    ``processed``/``failed``/``state`` are read by the health thread without a lock: each
    is a single attribute written by the main thread only.
    """

    def __init__(self, script: Script, options: Options) -> None:
        if script.handle is None:
            raise ScriptError("a script with its own loop runs through serve_hosted")
        self.script = script
        self.options = options
        self.stopping = False
        self.state = "starting"
        self.processed = 0
        self.failed = 0
        self.idle = True  # waiting, not handling: what the health reports call not busy
        self.in_poll = False  # inside consumer.poll, where a stop signal interrupts the wait
        self.log = logging.getLogger(f"rail.worker.{options.name}")
        self.is_async = inspect.iscoroutinefunction(script.handle)
        self.loop = asyncio.new_event_loop() if self.is_async else None
        self.producer = Producer(options.broker)
        self.consumer: Consumer | None = None
        self.revoked: dict[tuple[str, int], float] = {}  # moved away, not released: since
        self.broker_away_since: float | None = None
        self.ctx = Context(options.name, options.member_id, self.log, self.producer)
        self.flight = FlightRecord(options.flight, options.topics, max(1, options.concurrency))
        self.topic_index = self.flight.index
        self.quarantine = QuarantineList(options.quarantine)
        self.lanes: Lanes | None = None
        self.runner: Runner | None = None
        self.limit = RateLimit(options.rate, self).take if options.rate > 0 else None
        self.handler_times = HandlerTimes(per_event=self.limit is not None)
        timed = self.handler_times.timed_async if self.is_async else self.handler_times.timed
        self.timed_handle = timed(script.handle)
        self._seen: tuple[tuple[str, int, int] | None, float] = (None, 0.0)  # see ``current``

    @property
    def current(self) -> tuple[str, int, int, float] | None:
        """The oldest event in a handler and since when (monotonic s), for health reports.

        At concurrency 1 the host writes no start time per event (it would cost a clock
        read each): the event's age counts from when this was first asked about it, up to
        one health interval late."""
        busy = self.flight.busy()
        if not busy:
            return None
        now = time.monotonic()
        oldest: tuple[str, int, int, float] | None = None
        for topic, partition, offset, started_ns in busy:
            if started_ns:
                since = started_ns / 1e9
            else:
                if self._seen[0] != (topic, partition, offset):
                    self._seen = ((topic, partition, offset), now)
                since = self._seen[1]
            if oldest is None or since < oldest[3]:
                oldest = (topic, partition, offset, since)
        return oldest

    # -- lifecycle --------------------------------------------------------------------
    def run(self) -> int:
        opts = self.options
        while self.consumer is None:
            try:
                # A rebalance hands partitions over after the drain (docs/workers.md):
                # the sync path has finished every event it polled when it learns of one,
                # so the consumer commits and releases them itself; the lanes release
                # theirs once their running handlers are done (_hand_over).
                self.consumer = Consumer(
                    opts.broker, group=opts.group, topics=opts.topics,
                    member_id=opts.member_id, start=opts.start,
                    session_timeout_ms=opts.session_timeout_ms, client_id=opts.name,
                    rebalance_timeout_ms=min(int(opts.drain_timeout_s * 1000),
                                             MAX_SESSION_TIMEOUT_MS),
                    on_revoke=self._on_revoke if self.concurrent else None)
            except BrokerUnavailable as exc:
                if self.stopping:
                    return EXIT_OK
                self._broker_away(exc)
        self.ctx.member_id = self.consumer.member_id
        self._call_hook(self.script.setup)
        self.state = "running"
        self.log.info("worker %s joined group %s for %s as %s", opts.name, opts.group,
                      ",".join(opts.topics), self.consumer.member_id)
        try:
            if self.concurrent:
                self._run_concurrent(self.consumer)
            else:
                while not self.stopping:
                    self._step(self.consumer)
        finally:
            self.state = "stopping"
            self._shutdown()
        return EXIT_OK

    @property
    def concurrent(self) -> bool:
        """The lanes run the handlers (``_run_concurrent``): with concurrency, a rate per key,
        or a rate: a rate-limited batch can take minutes, and the lanes' loop keeps polling
        meanwhile, so a rebalance drains the moved partitions instead of waiting for it."""
        o = self.options
        return o.concurrency > 1 or o.key_rate > 0 or o.rate > 0

    def _step(self, consumer: Consumer) -> None:
        handled = dict(consumer.positions)
        self.idle = self.in_poll = True
        try:
            events = consumer.poll(POLL_TIMEOUT_S)
        except StopPolling:
            # The stop may land after the consumer advanced its positions for events it had
            # not returned yet: commit only what was handled; the rest comes again later.
            consumer.positions.clear()
            consumer.positions.update(handled)
            return
        except BrokerUnavailable as exc:
            self.in_poll = False  # a stop now only sets the flag, which the wait checks
            self._broker_away(exc)
            return
        finally:
            self.idle = self.in_poll = False
        if self.broker_away_since is not None:
            self.log.info("the broker answers again after %.0f s",
                          time.monotonic() - self.broker_away_since)
            self.broker_away_since = None
        if not events:
            return
        self.quarantine.refresh()
        done = self._handle_all_async(events) if self.loop else self._handle_all(events)
        self.producer.flush()
        if done == len(events):
            consumer.commit(sync=False)
        else:  # stopped inside the batch: commit exactly what was handled
            consumer.commit(handled_offsets(events[:done]), sync=True)
            consumer.positions.clear()

    def _handle_all(self, events: list[Event]) -> int:
        """Call the handler on each event; return how many were handled before a stop."""
        times, ctx, limit = self.handler_times, self.ctx, self.limit
        handle = self.timed_handle if times.per_event else self.script.handle
        slot, index, skip = self.flight.words, self.topic_index, self.quarantine.quarantined
        multi = len(index) > 1  # one topic: its index, 0, is in the slot already
        began, processed = time.monotonic_ns(), self.processed
        try:
            for i, event in enumerate(events):
                if self.stopping or limit is not None and not limit():
                    return i
                if skip and self._skipped(event):
                    continue
                if multi:
                    slot[2] = index[event.topic]
                slot[1] = event.partition
                slot[0] = event.offset  # no start time: ``current`` notes when it first saw it
                try:
                    handle(event, ctx)
                except Exception as exc:  # noqa: BLE001 - the handler's error goes to the DLQ
                    self._retry(event, exc)
                self.processed += 1
            return len(events)
        finally:
            slot[0] = FREE
            times.batch(began, time.monotonic_ns(), self.processed - processed,
                        limit is not None)

    def _handle_all_async(self, events: list[Event]) -> int:
        assert self.loop is not None
        return self.loop.run_until_complete(self._handle_coroutines(events))

    async def _handle_coroutines(self, events: list[Event]) -> int:
        """``_handle_all`` for an ``async def handle``."""
        times, ctx, limit = self.handler_times, self.ctx, self.limit
        handle = self.timed_handle if times.per_event else self.script.handle
        slot, index, skip = self.flight.words, self.topic_index, self.quarantine.quarantined
        multi = len(index) > 1  # one topic: its index, 0, is in the slot already
        began, processed = time.monotonic_ns(), self.processed
        try:
            for i, event in enumerate(events):
                if self.stopping or limit is not None and not limit():
                    return i
                if skip and self._skipped(event):
                    continue
                if multi:
                    slot[2] = index[event.topic]
                slot[1] = event.partition
                slot[0] = event.offset  # no start time: ``current`` notes when it first saw it
                try:
                    await handle(event, ctx)
                except Exception as exc:  # noqa: BLE001
                    await self._retry_async(event, exc)
                self.processed += 1
            return len(events)
        finally:
            slot[0] = FREE
            times.batch(began, time.monotonic_ns(), self.processed - processed,
                        limit is not None)

    def _skipped(self, event: Event) -> bool:
        """True (and logged) if the supervisor quarantined ``event``: it is in the DLQ."""
        if (event.topic, event.partition, event.offset) not in self.quarantine.quarantined:
            return False
        self.log.warning("event %s[%d]@%d skipped: quarantined after crashing this worker "
                         "(it is in %s.dlq)", event.topic, event.partition, event.offset,
                         event.topic)
        self.failed += 1
        return True

    # -- concurrency (runtime.worker.lanes) ---------------------------------------------
    def _run_concurrent(self, consumer: Consumer) -> None:
        """Poll, hand events to the lanes, take outcomes back, commit watermarks; on a stop,
        drain: start nothing new, let the running handlers finish (up to drain_timeout_s),
        commit what is finished."""
        limit = self.options.concurrency
        self.runner = Runner(limit, None if self.loop else self._attempt,
                             self._attempt_async if self.loop else None, self.loop)
        lanes = self.lanes = Lanes(limit, self._start)
        if self.options.key_rate > 0:
            lanes.key_interval = 1.0 / self.options.key_rate
        window = max(MIN_WINDOW, WINDOW_PER_SLOT * limit)
        generation = consumer.generation
        polled_at = time.monotonic()
        while not self.stopping:
            if lanes.pending < window:
                self._take(consumer, lanes, wait=not lanes.pending)
                polled_at = time.monotonic()
            elif time.monotonic() - polled_at > ASSIGNMENT_CHECK_S:
                # A full window (a slow or rate-limited handler) polls nothing for long:
                # ask whether a rebalance moved partitions away, to drain and release them.
                consumer.check_assignment()
                polled_at = time.monotonic()
            if consumer.generation != generation:
                generation = consumer.generation
                lanes.forget(set(consumer.assignment), keep=set(self.revoked))
            if self.revoked:
                self._hand_over(consumer, lanes)
            due = lanes.release() if lanes.later else None
            if lanes.pending:
                wait = OUTCOME_WAIT_S if lanes.pending < window else 0.5
                if due is not None:
                    wait = min(wait, max(0.0, due - time.monotonic()))
                self._outcomes(lanes, wait)
            self._commit_finished(consumer, lanes)
        lanes.paused = True
        deadline = time.monotonic() + self.options.drain_timeout_s
        while lanes.running and time.monotonic() < deadline:
            self._outcomes(lanes, min(0.1, max(0.0, deadline - time.monotonic())))
        if lanes.running:
            self.log.warning("drain_timeout_s=%g passed with %s still in handlers: not "
                             "committed, they come again", self.options.drain_timeout_s,
                             counted(len(lanes.running), "event"))
        self._commit_finished(consumer, lanes)

    def _take(self, consumer: Consumer, lanes: Lanes, wait: bool) -> None:
        self.idle = self.in_poll = wait  # a stop interrupts only a poll with nothing in hand
        try:
            events = consumer.poll(POLL_TIMEOUT_S if wait else 0)
        except StopPolling:
            return
        except BrokerUnavailable as exc:
            self.in_poll = False
            self._broker_away(exc)
            return
        finally:
            self.idle = self.in_poll = False
        consumer.positions.clear()  # commits are the lanes' watermarks, never what was polled
        if self.broker_away_since is not None:
            self.log.info("the broker answers again after %.0f s",
                          time.monotonic() - self.broker_away_since)
            self.broker_away_since = None
        if events:
            if self.quarantine.refresh():
                lanes.suspects = self.quarantine.suspects
                lanes.quarantined = self.quarantine.quarantined
            lanes.add(events)
            for event in lanes.skipped:
                self._skipped(event)
            lanes.skipped.clear()

    def _start(self, event: Event, slot: int) -> None:
        if self.limit is not None:
            self.limit()  # on a stop it returns at once: the drain lets this one run
        words, base = self.flight.words, slot * SLOT_WORDS
        words[base + 1] = event.partition
        words[base + 2] = self.topic_index[event.topic]
        words[base + 3] = time.monotonic_ns()
        words[base] = event.offset
        assert self.runner is not None
        self.runner.run(event, slot)

    def _outcomes(self, lanes: Lanes, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for a handler to finish; take every outcome there is."""
        assert self.runner is not None
        outcomes = self.runner.outcomes
        try:
            item = outcomes.get(timeout=timeout_s)
        except queue.Empty:
            return
        now, words, times = time.monotonic_ns(), self.flight.words, self.handler_times.counts
        while True:
            slot, error = item
            took = now - words[slot * SLOT_WORDS + 3]  # from its start (``_start``) to now
            times[max(0, took).bit_length()] += 1
            times[SUM] += max(0, took)
            words[slot * SLOT_WORDS] = FREE
            event = lanes.finished(slot)
            self.processed += 1
            if error is not None:
                if not isinstance(error, Exception):  # SystemExit & co. in a handler thread
                    error = RuntimeError(f"{type(error).__name__}: {error}")
                self._dead_letter(event, error, self.options.retries + 1)
            try:
                item = outcomes.get_nowait()
            except queue.Empty:
                return

    def _on_revoke(self, tps: list[tuple[str, int]]) -> None:
        now = time.monotonic()
        for tp in tps:
            self.revoked.setdefault(tp, now)

    def _hand_over(self, consumer: Consumer, lanes: Lanes) -> None:
        """Release the partitions a rebalance moved away once none of their events runs
        (or ``drain_timeout_s`` after the move): their watermark is committed first, so the
        new owner starts after what was finished here and at what was not."""
        busy = {(e.topic, e.partition) for e in lanes.running.values()}
        now = time.monotonic()
        for tp in [tp for tp, since in self.revoked.items()
                   if tp not in busy or now - since >= self.options.drain_timeout_s]:
            del self.revoked[tp]
            mark = lanes.watermark_of(tp)
            try:
                if mark is not None:
                    self.producer.flush()  # what its finished handlers sent is acked first
                    consumer.commit({tp: mark}, sync=True)
                consumer.release([tp])
            except BrokerError as exc:  # the hand-over ends at the broker's timeout
                self.log.warning("could not hand over %s[%d]: %s", tp[0], tp[1], exc)
            lanes.forget(set(consumer.assignment), keep=set(self.revoked))

    def _commit_finished(self, consumer: Consumer, lanes: Lanes) -> None:
        marks = lanes.watermarks()
        if marks:
            self.producer.flush()  # what the finished handlers sent is acked first
            consumer.commit(marks, sync=False)

    def _attempt(self, event: Event) -> Exception | None:
        """Call the handler with its retries (on a handler thread); the last error, if all
        failed."""
        assert self.script.handle is not None
        backoff, error = FIRST_BACKOFF_S, None
        for attempt in range(self.options.retries + 1):
            if attempt:
                time.sleep(backoff)
                backoff *= 2
            try:
                self.script.handle(event, self.ctx)
                return None
            except Exception as exc:  # noqa: BLE001 - the handler's error goes to the DLQ
                error = exc
        return error

    async def _attempt_async(self, event: Event) -> Exception | None:
        assert self.script.handle is not None
        backoff, error = FIRST_BACKOFF_S, None
        for attempt in range(self.options.retries + 1):
            if attempt:
                await asyncio.sleep(backoff)
                backoff *= 2
            try:
                await self.script.handle(event, self.ctx)
                return None
            except Exception as exc:  # noqa: BLE001
                error = exc
        return error

    # -- failures ---------------------------------------------------------------------
    def _retry(self, event: Event, error: Exception) -> None:
        backoff = FIRST_BACKOFF_S
        for attempt in range(2, self.options.retries + 2):
            time.sleep(backoff)
            backoff *= 2
            try:
                self.script.handle(event, self.ctx)
                return
            except Exception as exc:  # noqa: BLE001
                error = exc
        self._dead_letter(event, error, self.options.retries + 1)

    async def _retry_async(self, event: Event, error: Exception) -> None:
        backoff = FIRST_BACKOFF_S
        for attempt in range(2, self.options.retries + 2):
            await asyncio.sleep(backoff)
            backoff *= 2
            try:
                await self.script.handle(event, self.ctx)
                return
            except Exception as exc:  # noqa: BLE001
                error = exc
        self._dead_letter(event, error, self.options.retries + 1)

    def _dead_letter(self, event: Event, error: Exception, attempts: int) -> None:
        self.log.error("event %s[%d]@%d failed %s, sent to %s.dlq: %s: %s", event.topic,
                       event.partition, event.offset, counted(attempts, "time"), event.topic,
                       type(error).__name__, error)
        send_to_dlq(self.producer, event, error, attempts)
        self.failed += 1
        self.processed -= 1  # the caller counts it; a dead-lettered event is not "processed"

    def _broker_away(self, exc: BrokerUnavailable) -> None:
        """Wait a moment and let the caller try again: a broker that is down or restarting
        is waited for, as Kafka's consumers do, not a reason to exit (a supervisor would
        count every such exit as a crash and soon mark the worker failed)."""
        if self.broker_away_since is None:
            self.broker_away_since = time.monotonic()
            self.log.warning("%s; waiting for it", exc)
        deadline = time.monotonic() + BROKER_RETRY_S
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)

    def _call_hook(self, hook: Callable[[Context], Any] | None) -> None:
        if hook is None:
            return
        result = hook(self.ctx)
        if inspect.isawaitable(result):
            (self.loop or asyncio.new_event_loop()).run_until_complete(result)

    def _shutdown(self) -> None:
        if self.runner is not None:
            self.runner.close()
        try:
            self._call_hook(self.script.teardown)
        except Exception:
            self.log.exception("teardown failed")
        try:
            self.producer.close(timeout_s=10)
            if self.consumer is not None and self.lanes is not None:
                self.consumer.commit(self.lanes.watermarks(all_=True), sync=True)
            elif self.consumer is not None:
                self.consumer.commit(sync=True)
                self.consumer.close()
        except BrokerError as exc:
            self.log.error("could not commit at stop: %s", exc)
        self.log.info("worker %s stopped after %s (%d to the DLQ)", self.options.name,
                      counted(self.processed, "event"), self.failed)

    def request_stop(self, *_: object) -> None:
        """Signal handler: set the flag; the loop finishes the event in hand.

        While the loop only waits in a poll, nothing is in hand: interrupt the wait.
        """
        self.stopping = True
        if self.in_poll:
            self.in_poll = False
            raise StopPolling


class StopPolling(Exception):
    """Raised by the stop signal into an idle poll, so that a stop needs no short timeout."""


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def handled_offsets(events: list[Event]) -> dict[tuple[str, int], int]:
    """The next offset to read per partition after handling ``events``."""
    return {(e.topic, e.partition): e.offset + 1 for e in events}


# -- health ---------------------------------------------------------------------------
class HealthReporter(threading.Thread):
    """PUSHes a health map every second; stops the worker if its parent (supervisor) died."""

    def __init__(self, worker: Worker | Hosted, endpoint: str | None, parent: int) -> None:
        super().__init__(daemon=True, name="rail-health")
        self.worker = worker
        self.endpoint = endpoint
        self.parent = parent

    def run(self) -> None:
        sock: zmq.Socket[bytes] | None = None
        if self.endpoint:
            sock = zmq.Context.instance().socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 2)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
        orphaned_at = sent_at = 0.0
        sent: tuple[int, int, str] | None = None
        while True:
            now = time.monotonic()
            w = self.worker
            mark = (w.processed, w.failed, w.state)
            busy = not w.idle
            if sock is not None and (busy or mark != sent or now - sent_at >= HEALTH_IDLE_EVERY_S):
                try:
                    sock.send(msgspec.msgpack.encode(self.report(now)), zmq.NOBLOCK)
                    sent, sent_at = mark, now
                except zmq.ZMQError:
                    pass  # nobody listening right now: never block the worker
            if os.getppid() != self.parent:
                if not orphaned_at:
                    orphaned_at = now
                    self.worker.log.warning("parent %d is gone: stopping", self.parent)
                    os.kill(os.getpid(), signal.SIGTERM)
                elif now - orphaned_at > 15:
                    os._exit(1)
            time.sleep(HEALTH_INTERVAL_S)

    def report(self, now: float) -> dict[str, Any]:
        w = self.worker
        current = w.current  # one read: the main thread replaces it, never mutates it
        report = {"name": w.options.name, "member_id": w.options.member_id, "pid": os.getpid(),
                  "processed": w.processed, "failed": w.failed, "busy_ms": 0,
                  "state": w.state, "ts_ms": int(time.time() * 1000)}
        if current is not None:
            topic, partition, offset, since = current
            report["busy_ms"] = int((now - since) * 1000)
            report["event"] = [topic, partition, offset]
            flight = getattr(w, "flight", None)  # a Worker: how many handlers run now
            report["in_flight"] = len(flight.busy()) if flight is not None else 1
        if isinstance(w, Worker):  # a script's own loop (Hosted) times no handler calls
            report["handler_ns"] = w.handler_times.report()
        return report


# -- command line ---------------------------------------------------------------------
def parser(script_required: bool = True, group_default: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.worker",
                                 description="Run a worker script's handle(event, ctx) "
                                 "as a member of a consumer group.")
    if script_required:
        ap.add_argument("script", help="a .py file defining handle(event, ctx)")
    ap.add_argument("--broker", default=os.environ.get("RAIL_BROKER", DEFAULT_BROKER))
    ap.add_argument("--group", default=group_default, required=group_default is None)
    ap.add_argument("--topics", required=True, help="comma-separated topic names")
    ap.add_argument("--name", default=os.environ.get("RAIL_WORKER_NAME"))
    ap.add_argument("--member-id", default="")
    ap.add_argument("--health", help="PUSH endpoint for health reports")
    ap.add_argument("--retries", type=int, default=3, help="retries before the DLQ (default 3)")
    ap.add_argument("--start", choices=("earliest", "latest"), default="earliest")
    ap.add_argument("--session-timeout-ms", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=1,
                    help="handler calls at once, one at a time per key (default 1)")
    ap.add_argument("--drain-timeout-s", type=float, default=30.0,
                    help="on a stop, how long running handlers may take to finish (default 30)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="handler calls per second at most (default 0: no limit)")
    ap.add_argument("--key-rate", type=float, default=0.0,
                    help="handler calls per second per key at most (default 0: no limit)")
    ap.add_argument("--flight", help="file of the flight record (the supervisor reads it)")
    ap.add_argument("--quarantine", help="the supervisor's list of suspect and quarantined "
                    "events (JSON)")
    return ap


def options_of(args: argparse.Namespace) -> Options:
    topics = [t for t in args.topics.split(",") if t]
    return Options(broker=args.broker, group=args.group, topics=topics,
                   name=args.name or args.group, member_id=args.member_id or "",
                   health=args.health, retries=max(0, args.retries), start=args.start,
                   session_timeout_ms=args.session_timeout_ms,
                   concurrency=max(1, args.concurrency), drain_timeout_s=args.drain_timeout_s,
                   flight=args.flight, quarantine=args.quarantine, rate=max(0.0, args.rate),
                   key_rate=max(0.0, args.key_rate))


def serve(script: Script, options: Options, parent: int | None = None) -> int:
    """Run ``script`` until SIGTERM/SIGINT (or its parent dies); return the exit code."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {options.name} %(levelname)s: %(message)s")
    # kill -USR1 <pid>: every thread's Python stack to the log (a worker that seems stuck)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if script.run_hosted is not None:
        return serve_hosted(script.run_hosted, options, parent)
    worker = Worker(script, options)
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    HealthReporter(worker, options.health, parent or os.getppid()).start()
    try:
        return worker.run()
    except BrokerError as exc:
        print(f"rail worker {options.name}: {exc}", file=sys.stderr)
        return 1


def serve_hosted(run_hosted: Callable[[Hosted], int], options: Options,
                 parent: int | None = None) -> int:
    host = Hosted(options, logging.getLogger(f"rail.worker.{options.name}"))
    signal.signal(signal.SIGTERM, host.request_stop)
    signal.signal(signal.SIGINT, host.request_stop)
    HealthReporter(host, options.health, parent or os.getppid()).start()
    try:
        return int(run_hosted(host) or 0)
    except BrokerError as exc:
        print(f"rail worker {options.name}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parent = os.getppid()  # first thing: the supervisor may die while the script loads
    args = parser().parse_args(argv)
    try:
        script = load_script(args.script)
    except ScriptError as exc:
        print(f"rail worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return serve(script, options_of(args), parent)


def run(handle: Handler, setup: Callable[[Context], Any] | None = None,
        teardown: Callable[[Context], Any] | None = None, argv: list[str] | None = None) -> None:
    """Run ``handle`` as a worker from a standalone script's ``__main__``; exits the process.

    ``setup``/``teardown`` default to the functions of those names in ``handle``'s module.
    """
    parent = os.getppid()
    names = getattr(handle, "__globals__", {})
    script_name = Path(sys.argv[0]).stem or "worker"
    script = Script(handle, setup or names.get("setup"), teardown or names.get("teardown"))
    args = parser(script_required=False, group_default=script_name).parse_args(argv)
    sys.exit(serve(script, options_of(args), parent))


if __name__ == "__main__":
    sys.exit(main())
