"""Rail's Python client: ``Producer`` and ``Consumer``.

    from runtime.client import Producer, Consumer

    with Producer("tcp://127.0.0.1:7400") as producer:
        producer.send("orders", {"pizza": 2}, key="table-7")

    with Consumer("tcp://127.0.0.1:7400", group="kitchen", topics=["orders"]) as consumer:
        for event in consumer.poll(timeout_s=1.0):
            print(event.offset, event.value)
        consumer.commit()

The producer batches records per partition (up to ``batch_size`` records or ``linger_ms``),
keeps several batches in flight, and is idempotent by default: every batch carries a
producer id and sequence number, so a batch retried after a timeout or a broker restart is
never written twice.  It sends with ``acks=1`` on a single broker and ``acks="all"`` on a
cluster unless told otherwise (``acks=``).  A batch not acknowledged within
``delivery_timeout_s`` (default 120) is given up: its callbacks get an ``UNAVAILABLE``
error, it is added to
``producer.errors`` (which keeps the last 10,000), and a ``send`` waiting for room in flight
returns.  The consumer is a group member: the broker assigns it partitions and
remembers its position, and a streaming poll parked at the broker sends each new event as
it arrives.  ``commit`` makes progress durable: a sync commit waits for the broker; async
commits go out at most once per ``commit_interval_ms`` (default 100), the ones in between
merged into the next, which goes out at the end of the interval or once ``poll`` has been
quiet for 5 ms (``close`` sends what is held).  Each object is used from one thread
(the producer has its own lock for its linger thread).
"""

from __future__ import annotations

from runtime.connection import DEFAULT_BROKER, BrokerError, BrokerUnavailable
from runtime.consumer import Consumer, Event, events_of_fetch
from runtime.producer import Producer

__all__ = ["Producer", "Consumer", "Event", "BrokerError", "BrokerUnavailable", "DEFAULT_BROKER",
           "events_of_fetch"]
