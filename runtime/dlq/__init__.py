"""Dead-letter topics: where a worker puts an event its handler kept failing on.

An event of ``orders`` that fails every attempt goes to ``orders.dlq`` with its original
key, value and headers, plus ``rail.*`` headers saying what went wrong and where it came
from (``letters``).  ``replay`` sends selected dead letters (``selection``) back to their
source topic, each at most once, keeping a durable record of what went (``ledger``) and
letting one replay of a DLQ run at a time (``lease``).  ``purge`` deletes them for good
(``purger``).  See docs/dlq.md.
"""

from __future__ import annotations

from runtime.connection import BrokerError
from runtime.dlq.lease import Lease
from runtime.dlq.ledger import ReplayRecord, load_record
from runtime.dlq.letters import (HEADER_PREFIX, REPLAYED_FROM, SUFFIX, cursor_group,
                                 dead_letter_headers, dlq_name, dlq_topic, events_of_fetch,
                                 fetch_range, header, ledger_topic, location, original_headers,
                                 parse_location, partitions, read_all, replay_headers,
                                 send_to_dlq, source_topic, text)
from runtime.dlq.purger import purge
from runtime.dlq.replayer import ReplayResult, replay
from runtime.dlq.selection import Selection, parse_offsets

__all__ = ["SUFFIX", "HEADER_PREFIX", "REPLAYED_FROM", "dlq_topic", "dlq_name", "ledger_topic",
           "cursor_group", "location", "parse_location", "dead_letter_headers", "send_to_dlq",
           "original_headers", "replay_headers", "source_topic", "header", "text",
           "fetch_range", "events_of_fetch", "partitions", "read_all", "Selection",
           "parse_offsets", "ReplayRecord", "load_record", "ReplayResult", "replay", "purge",
           "Lease", "BrokerError"]
