"""The worker script every connector task runs: ``python -m runtime.worker task.py ...``.

The supervisor starts it like any worker (``[[connectors]]`` entries become worker entries,
see ``settings.connector_workers``); the entry itself comes in the environment
(``RAIL_CONNECTOR_<name>``, JSON).  The replica's index (the end of its member id, ``<name>-<index>``) is the task
number.  Exit codes: 0 after SIGTERM, ``EXIT_CONFIG`` for an unusable entry (the supervisor
does not restart it), 1 when the connector failed (it does, per its policy).
"""

from __future__ import annotations

import gc
import os

from brokerd.protocol import EXIT_CONFIG
from runtime.connect.errors import ConnectError, ConnectorConfigError
from runtime.connect.settings import env_name, parse
from runtime.worker import Hosted

# The youngest generation's threshold while a task runs (CPython's default: 700).  A batch
# keeps thousands of records or events alive at once; at 700 allocations a collection they
# were scanned again and again as they aged, a quarter of a sink task's CPU time (measured:
# 0.5 of 1.8 s for 300,000 rows).  Dead objects are freed by their reference counts anyway:
# only cyclic garbage waits for a collection.  (runtime/streams/runner.py does the same.)
GC_THRESHOLD = 100_000


def task_number(member_id: str) -> int:
    tail = member_id.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


def run_hosted(host: Hosted) -> int:
    raw = os.environ.get(env_name(host.options.name))
    if not raw:
        host.log.error("no connector entry in $%s: run connectors through rail.toml's "
                       "[[connectors]]", env_name(host.options.name))
        return EXIT_CONFIG
    import json
    thresholds = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, *thresholds[1:])
    try:
        settings = parse(json.loads(raw))
        connector = settings.build(task_number(host.options.member_id))
        if hasattr(connector, "serve"):  # a source that runs its own server (http)
            return int(connector.serve(host, settings))
        if settings.kind == "source":
            from runtime.connect.source_task import SourceTask
            return SourceTask(host, connector, settings).run()
        from runtime.connect.sink_task import SinkTask
        return SinkTask(host, connector, settings).run()
    except ConnectorConfigError as exc:
        host.log.error("%s", exc)
        return EXIT_CONFIG
    except ConnectError as exc:
        host.log.error("%s", exc)
        return 1
    except Exception:  # a database or network error: the supervisor restarts the task
        host.log.exception("connector %s failed", host.options.name)
        return 1
    finally:
        gc.set_threshold(*thresholds)
