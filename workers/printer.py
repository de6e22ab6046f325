"""Print every event it reads, one line each: ``topic[partition]@offset key=... value``.

    rail register printer workers/printer.py --topics orders
    python workers/printer.py --topics orders          # alone, group "printer"
"""

from __future__ import annotations

from runtime.client import Event
from runtime.cli.common import event_line
from runtime.worker import Context, run


def handle(event: Event, ctx: Context) -> None:
    print(event_line(event), flush=True)


if __name__ == "__main__":
    run(handle)
