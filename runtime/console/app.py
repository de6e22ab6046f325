"""The console's aiohttp application: routes as a table, each a thin handler over the
module that knows its page's data (topics, messages, groups, deadletters, supervision)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from runtime.connection import BrokerError, BrokerUnavailable
from runtime.console import deadletters, groups, messages, supervision, topics
from runtime.console.auth import ConsoleConfigError, check_bind, middleware
from runtime.console.gateway import BrokerGateway
from runtime.console.live import Hub, Scraper
from runtime.control import ControlError

STATIC = Path(__file__).with_name("static")
SSE_HEARTBEAT_S = 15.0
_json = msgspec.json.Encoder()


@dataclass
class Settings:
    """What a console serves: the broker, optionally the supervisor, where and how."""

    broker: str
    control: str = ""  # "": no supervision tree (a broker without rail up)
    host: str = "127.0.0.1"
    port: int = 7480
    read_only: bool = False
    token: str = ""
    every_s: float = 1.0  # scrape interval of the tree (the overview: every other one)
    history: str = ""  # the lag history's file ("": in memory only)


BROKER = web.AppKey("broker", BrokerGateway)
HUB = web.AppKey("hub", Hub)
SCRAPER = web.AppKey("scraper", Scraper)
SETTINGS = web.AppKey("settings", Settings)


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(data), status=status, content_type="application/json")


def failure(status: int, message: str) -> web.Response:
    return reply({"error": message}, status)


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A refused request is one JSON line with the reason; the console keeps serving."""
    try:
        return await handler(request)
    except BrokerUnavailable as exc:
        return failure(503, exc.message)
    except BrokerError as exc:
        return failure(404 if exc.code.startswith("UNKNOWN") else 400, f"{exc.code}: "
                       f"{exc.message}")
    except (messages.QueryError, groups.ResetError, ControlError) as exc:
        return failure(400, str(exc))
    except (ValueError, KeyError, TypeError, msgspec.DecodeError) as exc:
        if request.method == "GET":
            raise
        return failure(400, f"bad request body: {exc}")


async def body(request: web.Request) -> dict[str, Any]:
    data = await request.json() if request.can_read_body else {}
    if not isinstance(data, dict):
        raise TypeError("the body must be a JSON object")
    return data


# -- pages and live data ----------------------------------------------------------------
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def info(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    return reply({"read_only": s.read_only, "supervised": bool(s.control),
                  "broker": s.broker, "control": s.control})


async def snapshot(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    data = request.app[HUB].snapshots.get(kind)
    return reply(data if data is not None else {"pending": True})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``tree`` and ``overview`` each time the scraper has a new one."""
    hub = request.app[HUB]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    sent: dict[str, int] = {}
    version = 0
    try:
        while True:
            for kind, at in list(hub.versions.items()):
                if sent.get(kind) != at:
                    sent[kind] = at
                    await response.write(b"event: " + kind.encode() + b"\ndata: "
                                         + _json.encode(hub.snapshots[kind]) + b"\n\n")
            newer = await hub.newer(version, SSE_HEARTBEAT_S)
            if newer == version:
                await response.write(b": still here\n\n")
            version = newer
    except ConnectionResetError:  # the tab was closed: the normal end of a stream
        return response


# -- supervision ------------------------------------------------------------------------
async def _supervisor(request: web.Request, fn: Any, *args: Any) -> web.Response:
    control = request.app[SETTINGS].control
    if not control:
        return failure(404, "this console was started without --control: no supervisor")
    loop = asyncio.get_running_loop()
    return reply(await loop.run_in_executor(None, fn, control, *args))


async def restart(request: web.Request) -> web.Response:
    return await _supervisor(request, supervision.restart, request.match_info["name"])


async def scale(request: web.Request) -> web.Response:
    replicas = (await body(request)).get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool):
        return failure(400, "replicas must be a whole number")
    return await _supervisor(request, supervision.scale, request.match_info["name"], replicas)


# -- topics and messages ----------------------------------------------------------------
async def topic_list(request: web.Request) -> web.Response:
    return reply(await request.app[BROKER].run(topics.list_topics))


async def topic_detail(request: web.Request) -> web.Response:
    return reply(await request.app[BROKER].run(topics.describe_topic, request.match_info["name"]))


async def topic_create(request: web.Request) -> web.Response:
    data = await body(request)
    name, partitions = data.get("name"), data.get("partitions")
    if not isinstance(name, str) or not name:
        return failure(400, "give the new topic a name")
    if partitions is not None and (not isinstance(partitions, int) or partitions < 1):
        return failure(400, "partitions must be a whole number from 1")
    config = data.get("config") or {}
    return reply(await request.app[BROKER].run(topics.create_topic, name, partitions, config))


async def topic_delete(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if request.query.get("confirm") != name:
        return failure(400, f"type the topic's name to confirm: confirm={name}")
    return reply(await request.app[BROKER].run(topics.delete_topic, name))


async def topic_messages(request: web.Request) -> web.Response:
    query = messages.parse_query(request.match_info["name"], dict(request.query))
    page = await request.app[BROKER].run(messages.browse, query)
    return reply(page.json())


# -- groups -----------------------------------------------------------------------------
async def group_list(request: web.Request) -> web.Response:
    return reply({"groups": await request.app[BROKER].run(groups.describe_all)})


async def group_detail(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    described = await request.app[BROKER].run(groups.describe, name)
    history = request.app[SCRAPER].lag.of(name)
    return reply({**described, "lag_history": history})


async def group_reset(request: web.Request) -> web.Response:
    data = await body(request)
    plan = await request.app[BROKER].run(
        groups.reset_offsets, request.match_info["name"], str(data.get("topic", "")),
        str(data.get("to", "")), int(data.get("value") or 0),
        None if data.get("partition") in (None, "") else int(data["partition"]))
    return reply({"reset": plan})


# -- dead letters -----------------------------------------------------------------------
async def dlq_list(request: web.Request) -> web.Response:
    return reply({"dlqs": await request.app[BROKER].run(deadletters.list_dlqs)})


async def dlq_letters(request: web.Request) -> web.Response:
    return reply(await request.app[BROKER].run(deadletters.list_letters,
                                               request.match_info["topic"]))


async def dlq_replay(request: web.Request) -> web.Response:
    picks = [(int(a), int(b)) for a, b in (await body(request)).get("picks", [])]
    if not picks:
        return failure(400, "select the dead letters to replay")
    loop = asyncio.get_running_loop()
    return reply(await loop.run_in_executor(None, deadletters.replay_selected,
                                            request.app[SETTINGS].broker,
                                            request.match_info["topic"], picks))


async def dlq_purge(request: web.Request) -> web.Response:
    topic = request.match_info["topic"]
    if (await body(request)).get("confirm") != topic:
        return failure(400, f"type the topic's name to confirm: confirm={topic}")
    loop = asyncio.get_running_loop()
    return reply(await loop.run_in_executor(None, deadletters.purge,
                                            request.app[SETTINGS].broker, topic))


ROUTES = [
    ("GET", "/", index),
    ("GET", "/api/info", info),
    ("GET", "/api/live/{kind}", snapshot),
    ("GET", "/api/events", events),
    ("POST", "/api/workers/{name}/restart", restart),
    ("POST", "/api/workers/{name}/scale", scale),
    ("GET", "/api/topics", topic_list),
    ("POST", "/api/topics", topic_create),
    ("GET", "/api/topics/{name}", topic_detail),
    ("DELETE", "/api/topics/{name}", topic_delete),
    ("GET", "/api/topics/{name}/messages", topic_messages),
    ("GET", "/api/groups", group_list),
    ("GET", "/api/groups/{name}", group_detail),
    ("POST", "/api/groups/{name}/reset", group_reset),
    ("GET", "/api/dlq", dlq_list),
    ("GET", "/api/dlq/{topic}", dlq_letters),
    ("POST", "/api/dlq/{topic}/replay", dlq_replay),
    ("POST", "/api/dlq/{topic}/purge", dlq_purge),
]


def create_app(settings: Settings) -> web.Application:
    """The console as an aiohttp application; its scraper runs while the app does."""
    check_bind(settings.host, settings.token)
    if not (STATIC / "index.html").exists():
        raise ConsoleConfigError(f"the console's page is missing from this install ({STATIC}): "
                                 "install Rail from its source tree (pip install -e .)")
    app = web.Application(middlewares=[middleware(settings.token, settings.read_only), errors])
    app[SETTINGS] = settings
    app[BROKER] = BrokerGateway(settings.broker)
    app[HUB] = Hub()
    app[SCRAPER] = Scraper(app[HUB], app[BROKER], settings.control or None, settings.every_s,
                           Path(settings.history) if settings.history else None)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_static("/static/", STATIC)
    app.cleanup_ctx.append(_scraping)
    return app


async def _scraping(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[SCRAPER].run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    app[BROKER].close()
