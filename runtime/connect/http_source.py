"""The HTTP source: POSTed events, answered only once the broker acknowledged them.

    config = {listen = "127.0.0.1:8080", path = "/events", max_body_mb = 10}

``POST <path>`` with ``Content-Type: application/json`` (one event: any JSON value; many:
a JSON array) or ``application/x-ndjson`` (one JSON value per line).  The answers:

- 200 ``{"accepted": N}``: every event was acknowledged by the broker.
- 400 broken JSON or a transform refused an event, 413 a body over ``max_body_mb``, 415
  another content type: nothing of the request is written (it is parsed whole first).
- 503 the broker did not acknowledge within ``timeout_s`` (default 5): retry later.  As
  with any producer, a request answered 503 may have been stored in part.

An event's key comes from a ``key`` transform.  No offsets: the client retries what was
not answered 200.  Requests are produced one at a time (one producer, one thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import msgspec

from runtime.client import Producer
from runtime.connect.api import Connector
from runtime.connect.errors import BadRecord, ConnectorConfigError
from runtime.connect.settings import ConnectorSettings
from runtime.connection import BrokerError
from runtime.worker import Hosted

JSON, NDJSON = "application/json", "application/x-ndjson"


class HttpSource(Connector):
    """Not a generator of records: it serves (``serve``), the task runs it directly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        host, _, port = str(self.config.get("listen", "127.0.0.1:8080")).rpartition(":")
        if not port.isdigit():
            raise ConnectorConfigError(f"connectors.{self.name}.config.listen: HOST:PORT, "
                                       f"not {self.config.get('listen')!r}")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.path = str(self.config.get("path", "/events"))
        self.max_body = int(float(self.config.get("max_body_mb", 10)) * 1024 * 1024)
        self.timeout_s = float(self.config.get("timeout_s", 5))
        if self.tasks != 1:
            raise ConnectorConfigError(f"connectors.{self.name}.tasks: an HTTP source listens "
                                       "on one port: set tasks = 1")

    def serve(self, host: Hosted, settings: ConnectorSettings) -> int:
        producer = Producer(host.options.broker, acks=settings.acks,
                            request_timeout_s=self.timeout_s,
                            delivery_timeout_s=self.timeout_s)
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rail-http-send")
        try:
            asyncio.run(self._serve(host, settings, producer, pool))
        finally:
            pool.shutdown()
            producer.close(timeout_s=self.timeout_s)
        return 0

    async def _serve(self, host: Hosted, settings: ConnectorSettings, producer: Producer,
                     pool: concurrent.futures.Executor) -> None:
        from aiohttp import web

        async def receive(request: web.Request) -> web.Response:
            try:
                records = parse(request.content_type, await request.read(), settings)
            except web.HTTPRequestEntityTooLarge:
                return refuse(413, f"body over {self.max_body} bytes (max_body_mb)")
            except BadRecord as exc:
                return refuse(415 if "content type" in str(exc) else 400, str(exc))
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(pool, send_all, producer, records, self.timeout_s)
            except BrokerError as exc:
                return refuse(503, f"the broker did not acknowledge: {exc}")
            host.processed += len(records)
            return web.json_response({"accepted": len(records)})

        app = web.Application(client_max_size=self.max_body)
        app.router.add_post(self.path, receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        host.log.info("http source %s listening on http://%s:%d%s", self.name, self.host,
                      self.port, self.path)
        host.state = "running"
        while not host.stopping:
            await asyncio.sleep(0.1)
        await runner.cleanup()


def refuse(status: int, reason: str) -> Any:
    from aiohttp import web

    return web.json_response({"error": reason}, status=status)


def parse(content_type: str, body: bytes,
          settings: ConnectorSettings) -> list[tuple[Any, Any, str]]:
    """Every event of the body, converted and transformed, or BadRecord for the whole."""
    if content_type == JSON:
        values = decode(body)
        values = values if isinstance(values, list) else [values]
    elif content_type == NDJSON:
        values = [decode(line) for line in body.splitlines() if line.strip()]
    else:
        raise BadRecord(f"content type {content_type or 'none'!r}: send {JSON} or {NDJSON}")
    out = []
    for value in values:
        prepared = settings.prepare(value, None, settings.topics[0])
        if prepared is not None:
            out.append(prepared)
    return out


def decode(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRecord(f"broken JSON: {exc}") from None


def send_all(producer: Producer, records: list[tuple[Any, Any, str]], timeout_s: float) -> None:
    """Send and wait for every acknowledgement (the producer's own thread: one at a time)."""
    before = len(producer.errors)
    for value, key, topic in records:
        producer.send(topic, value, key=key)
    producer.flush(timeout_s)
    if len(producer.errors) > before:
        raise producer.errors[-1]
