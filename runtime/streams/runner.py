"""The loop of one replica: join the group, keep a task per assigned partition, poll,
process, commit.  Partitions move only between polls, when every task has committed and
its batches are acknowledged, so a revoked task has nothing in flight."""

from __future__ import annotations

import gc
import time
from collections import defaultdict

from brokerd import protocol as p
from brokerd.protocol import EXIT_CONFIG
from runtime.connection import BrokerError, BrokerUnavailable
from runtime.consumer import Batch, Consumer, Event, events_of_batches
from runtime.dlq import dlq_topic
from runtime.routing import connect
from runtime.streams.errors import Fenced, StreamsError
from runtime.streams.pipeline import Pipeline
from runtime.streams.sender import Sender
from runtime.streams.task import Task
from runtime.worker import Hosted

POLL_S = 0.2
# A task commits after this many events, or once its stores hold this many changed keys
# (a commit's changelog batch, its changed keys, must fit in one produce: the topic's
# max_batch_bytes, 8 MiB by default), and at the end of the events of each poll.  Fewer,
# bigger commits wait for fewer acknowledgements: 10,000 events a commit made a stateless
# pipeline a third slower than 40,000.
CYCLE_EVENTS = 50_000
DIRTY_KEYS = 10_000
# Events processed between two looks at the last commit's acknowledgements (its changelog
# batch is sent once its outputs are stored: see Task.pump), and at the limits above; a
# stateless chain takes the records of a stored batch at once, up to PUMP_RECORDS.
PUMP_EVENTS = 2_000
PUMP_RECORDS = 10_000
# The youngest generation's threshold while the loop runs (CPython's default: 700).  A
# cycle keeps tens of thousands of events and records alive at once (a poll reply is
# decoded whole); at 700 allocations a collection they were scanned again and again as
# they aged into older generations, which took about half the time of a stateless
# pipeline (and 10% more at 100,000 than at 1,000,000).  Dead objects are freed by their
# reference counts anyway: only cyclic garbage waits for a collection.
GC_THRESHOLD = 1_000_000
EXIT_FENCED = 75  # sysexits EX_TEMPFAIL: fenced (errors.Fenced); a restart restores and goes on


class Runner:
    def __init__(self, pipeline: Pipeline, host: Hosted) -> None:
        self.pipeline = pipeline
        pipeline.freeze()
        self.host = host
        self.options = host.options
        self.conn = connect(self.options.broker)  # one broker, or a cluster's list
        self.sender = Sender(self.conn, pipeline.acks)
        self.tasks: dict[tuple[str, int], Task] = {}
        self.assigned: list[tuple[str, int]] | None = None
        self.partitions: dict[str, int] = {}

    def run(self) -> int:
        """Process until stopped; 0, or EXIT_CONFIG when exactness cannot go on (a
        StreamsError: restarting would only fail again)."""
        thresholds = gc.get_threshold()
        gc.set_threshold(GC_THRESHOLD, *thresholds[1:])
        try:
            return self._run()
        except StreamsError as exc:
            self.host.log.error("streams app %s stops: %s", self.pipeline.app, exc)
            self.host.state = "failed"
            return EXIT_CONFIG
        except Fenced as exc:
            self.host.log.warning("streams app %s: fenced: %s", self.pipeline.app, exc)
            self.host.state = "failed"
            return EXIT_FENCED
        finally:
            gc.set_threshold(*thresholds)

    def _run(self) -> int:
        host = self.host
        try:
            self._wait_for_broker()
            if host.stopping:
                return 0
            consumer = Consumer(self.options.broker, group=self.pipeline.app,
                                topics=self.pipeline.topics, member_id=self.options.member_id,
                                start="earliest", client_id=self.options.name,
                                session_timeout_ms=self.options.session_timeout_ms,
                                on_assign=self._on_assign)
            try:
                host.state = "running"
                host.log.info("streams app %s running as %s", self.pipeline.app,
                              consumer.member_id)
                if self.assigned is not None:  # the join's: seek before the first poll
                    self._reassign(consumer, self.assigned)  # is sent, not after its reply
                while not host.stopping:
                    self._cycle(consumer)
            finally:
                consumer.close()
        finally:
            for task in self.tasks.values():
                task.close()
            self.conn.close()
        host.state = "stopped"
        return 0

    def _wait_for_broker(self) -> None:
        """Create the topics (retrying while the broker is away, until stopped)."""
        while not self.host.stopping:
            try:
                self._create_topics()
                return
            except BrokerUnavailable as exc:
                self.host.log.warning("%s; retrying", exc)
                time.sleep(1)

    def _create_topics(self) -> None:
        """The source (if missing), the repartition and changelog topics with the source's
        partition count, the outputs and the DLQs; then learn their partition counts."""
        pl, call = self.pipeline, self.conn.call
        call(p.CreateTopic(topic=pl.source, exist_ok=True))
        count = len(call(p.Metadata(topics=[pl.source])).topics[0].partitions)
        for topic in pl.topics:
            call(p.CreateTopic(topic=pl.changelog(topic), partitions=count,
                               config={"cleanup_policy": "compact"}, exist_ok=True))
        written = pl.outputs | set(pl.topics[1:]) | {dlq_topic(t) for t in pl.topics}
        for topic in sorted(written):
            call(p.CreateTopic(topic=topic, partitions=count, exist_ok=True))
        for info in call(p.Metadata(topics=sorted(written))).topics:
            self.partitions[info.name] = len(info.partitions)

    def _on_assign(self, assignment: list[tuple[str, int]]) -> None:
        self.assigned = assignment  # taken up after the poll returns

    def _cycle(self, consumer: Consumer) -> None:
        host = self.host
        host.idle = True
        batches = consumer.poll_batches(POLL_S)
        host.idle = False
        if self.assigned is not None:
            self._reassign(consumer, self.assigned)
        by_task: dict[tuple[str, int], list[Batch]] = defaultdict(list)
        for batch in batches:
            by_task[(batch.topic, batch.partition)].append(batch)
        # Tasks whose partition held more than this poll brought when the broker read it
        # (a backlog): they commit after CYCLE_EVENTS, not at the end of each poll (every
        # commit waits for the last one's acknowledgements), and once caught up.
        backlog = set()
        for tp, got in by_task.items():
            task = self.tasks.get(tp)
            if task is None:
                continue
            host.current = (tp[0], tp[1], got[0].base_offset, time.monotonic())
            before = task.offset
            if task.takes_batches:
                self._run_batches(task, got)
            else:
                self._run_events(task, events_of_batches(got))
            host.processed += task.offset - before
            if got[-1].end_offset > task.offset:
                backlog.add(tp)
        host.current = None
        for tp, task in self.tasks.items():
            if tp not in backlog:
                task.commit()
            task.settle()  # nothing in flight when partitions may move
        # For lag only (tasks keep their own offsets): where each task committed; the
        # consumer sends an offset it sent already no more.
        offsets = {tp: task.offset for tp, task in self.tasks.items() if tp not in backlog}
        if offsets:
            try:
                consumer.commit(offsets, sync=False)
            except BrokerError as exc:
                host.log.warning("group commit: %s", exc)

    @staticmethod
    def _run_events(task: Task, events: list[Event]) -> None:
        for i in range(0, len(events), PUMP_EVENTS):
            task.process(events[i:i + PUMP_EVENTS])
            Runner._pump(task)

    @staticmethod
    def _run_batches(task: Task, batches: list[Batch]) -> None:
        for batch in batches:
            records = batch.records
            for i in range(0, len(records), PUMP_RECORDS):
                task.process_batch(batch if len(records) <= PUMP_RECORDS else Batch(
                    batch.topic, batch.partition, batch.base_offset + i, batch.timestamp,
                    records[i:i + PUMP_RECORDS], batch.end_offset))
                Runner._pump(task)

    @staticmethod
    def _pump(task: Task) -> None:
        task.pump()  # the last commit's changelog batch goes out meanwhile
        if task.processed_since_commit >= CYCLE_EVENTS or task.dirty_keys() >= DIRTY_KEYS:
            task.commit()

    def _reassign(self, consumer: Consumer, assignment: list[tuple[str, int]]) -> None:
        self.assigned = None
        wanted = {(topic, part) for topic, part in assignment if topic in self.pipeline.topics}
        for tp in sorted(set(self.tasks) - wanted):
            self.tasks.pop(tp).close()
        for topic, part in sorted(wanted - set(self.tasks)):
            task = Task(self.pipeline, topic, part, self.conn, self.sender, self.partitions,
                        self.pipeline.state_dir)
            task.restore()
            self.tasks[(topic, part)] = task
            self.host.log.info("%s[%d]: restored from %s, at offset %d", topic, part,
                               task.restored_from, task.offset)
        for topic, part in sorted(wanted):
            self._seek(consumer, self.tasks[(topic, part)])
        # The group's offsets show the lag; a task may be further than its partition's
        # (it commits its own first), with nothing left to read that would commit them.
        try:
            consumer.commit({tp: self.tasks[tp].offset for tp in wanted}, sync=False)
        except BrokerError as exc:
            self.host.log.warning("group commit: %s", exc)

    def _seek(self, consumer: Consumer, task: Task) -> None:
        """Read ``task``'s partition from its offset; if retention deleted it already, from
        the partition's start (those events are gone for every reader: said in the log)."""
        try:
            consumer.seek(task.topic, task.partition, task.offset)
            return
        except BrokerError as exc:
            if exc.code != "OFFSET_OUT_OF_RANGE":
                raise
        start = self.conn.call(p.Fetch(topic=task.topic, partition=task.partition, offset=0,
                                       max_bytes=1)).start_offset
        if task.offset >= start:
            raise StreamsError(f"{task.topic}[{task.partition}] ends before offset "
                               f"{task.offset}, where this task resumes: was the topic "
                               "deleted and created again? Start the application under a "
                               "new name (or delete its changelog topics and state)")
        self.host.log.warning("%s[%d]: offsets %d..%d were deleted by retention before this "
                              "application read them; starting at %d", task.topic,
                              task.partition, task.offset, start - 1, start)
        task.ck.offset = start
        consumer.seek(task.topic, task.partition, start)
