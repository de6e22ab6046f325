"""The console's scraper and the hub its server-sent events come from.

One task asks the supervisor for the tree every ``every_s`` and the broker for the overview
(stats, topics summary, groups) every other tick; each browser tab's event stream waits on
the hub for a newer snapshot, so many tabs cost no more requests than one.  The groups of
each overview feed the lag history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

from brokerd import protocol as p
from runtime.connection import Connection
from runtime.console.gateway import BrokerGateway
from runtime.console.groups import describe_all
from runtime.console.lag import LagHistory
from runtime.console.supervision import Tree

LOG = logging.getLogger("rail.console")
THROUGHPUT_POINTS = 300  # the overview's throughput chart: the last 300 overviews


def overview(conn: Connection) -> dict[str, Any]:
    """What the overview page shows of the broker (run on the gateway's thread)."""
    stats = conn.call(p.Stats()).stats
    meta = conn.call(p.Metadata())
    groups = describe_all(conn)
    parts = [x for t in meta.topics for x in t.partitions]
    return {"broker": {"endpoint": stats.get("endpoints", {}).get("api", ""),
                       "pid": stats.get("pid"), "uptime_s": stats.get("uptime_s"),
                       "rss_bytes": stats.get("rss_bytes"),
                       "brokers": [b.id for b in meta.brokers] if meta.brokers else [],
                       "controller": meta.controller},
            "rates": stats.get("rates_per_s", {}), "totals": stats.get("totals", {}),
            "topics": {"count": len(meta.topics), "partitions": len(parts),
                       "events": sum(x.end_offset - x.start_offset for x in parts),
                       "size_bytes": sum(x.size_bytes for x in parts),
                       "under_replicated": sum(len(x.isr) < len(x.replicas)
                                               for x in parts if x.replicas)},
            "groups": [{k: g[k] for k in ("group", "state", "generation", "lag")}
                       | {"members": len(g["members"])} for g in groups],
            "_groups": groups}


class Hub:
    """The latest snapshots (``tree``, ``overview``) and a version that grows with each."""

    def __init__(self) -> None:
        self.snapshots: dict[str, Any] = {}
        self.versions: dict[str, int] = {}
        self.version = 0
        self._changed = asyncio.Condition()

    async def publish(self, kind: str, data: Any) -> None:
        async with self._changed:
            self.version += 1
            self.snapshots[kind] = data
            self.versions[kind] = self.version
            self._changed.notify_all()

    async def newer(self, than: int, timeout_s: float) -> int:
        """Wait until something newer than version ``than`` is published (or time out);
        return the current version."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.version > than),
                                       timeout_s)
            except TimeoutError:
                pass
            return self.version


class Scraper:
    """Fills the hub; keeps the lag history and the throughput series."""

    def __init__(self, hub: Hub, gateway: BrokerGateway, control: str | None,
                 every_s: float = 1.0, history: Path | None = None) -> None:
        self.hub = hub
        self.gateway = gateway
        self.tree = Tree(control) if control else None
        self.every_s = every_s
        self.lag = LagHistory(path=history)
        self.throughput: deque[dict[str, Any]] = deque(maxlen=THROUGHPUT_POINTS)
        self.groups: list[dict[str, Any]] = []

    async def run(self) -> None:
        tick = 0
        while True:
            started = time.monotonic()
            if self.tree is not None:
                await self.scrape_tree()
            if tick % 2 == 0:
                await self.scrape_overview()
            tick += 1
            await asyncio.sleep(max(0.05, self.every_s - (time.monotonic() - started)))

    async def scrape_tree(self) -> None:
        assert self.tree is not None
        try:
            tree = await asyncio.get_running_loop().run_in_executor(None, self.tree.fetch)
        except Exception as exc:  # noqa: BLE001 - shown on the page, the loop goes on
            tree = {"error": str(exc), "at": time.time()}
        await self.hub.publish("tree", tree)

    async def scrape_overview(self) -> None:
        try:
            view = await self.gateway.run(overview)
        except Exception as exc:  # noqa: BLE001 - shown on the page, the loop goes on
            await self.hub.publish("overview", {"error": str(exc), "at": time.time()})
            return
        now = time.time()
        self.groups = view.pop("_groups")
        self.lag.record(self.groups, now)
        rates = view["rates"]
        self.throughput.append({"t": now, "in": rates.get("records_in", 0),
                                "out": rates.get("records_out", 0)})
        view["throughput"] = list(self.throughput)
        view["at"] = now
        await self.hub.publish("overview", view)
