"""The console's one connection to the broker, owned by one thread.

``Connection`` is not thread-safe and aiohttp handlers run on the event loop, so every
broker request goes through a single-thread executor that owns the connection: requests
from many browser tabs queue there instead of blocking the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from runtime.connection import BrokerUnavailable
from runtime.routing import Link, connect

T = TypeVar("T")


class BrokerGateway:
    """Runs ``fn(connection, ...)`` on the gateway's thread; one connection, made lazily."""

    def __init__(self, endpoint: str, timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-broker")
        self._local = threading.local()

    def _connection(self) -> Link:
        conn = getattr(self._local, "conn", None)
        if conn is None:  # a cluster's endpoint list: a Router (requests go where served)
            conn = self._local.conn = connect(self.endpoint, timeout_s=self.timeout_s)
        return conn

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._connection()
        try:
            return fn(conn, *args)
        except BrokerUnavailable:
            # A timed-out request may still be answered later: a fresh socket keeps that
            # stale reply away from the next caller.
            conn.close()
            self._local.conn = None
            raise

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, fn, args)

    async def call(self, request: Any) -> Any:
        return await self.run(lambda conn: conn.call(request))

    def close(self) -> None:
        def shut() -> None:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
        self._pool.submit(shut).result(timeout=5)
        self._pool.shutdown(wait=False)
