"""Who may use the console and what they may change.

- Bound beyond loopback, the console refuses to start without a token; with a token,
  every request needs it: ``Authorization: Bearer TOKEN``, or the cookie set when the page is
  opened once as ``/?token=TOKEN`` (the event stream cannot send headers).
- A request that changes something (POST, DELETE) must carry ``X-Rail-Console: 1``, a header
  a page of another site cannot add without the console's consent (CORS), so a link or form
  elsewhere cannot restart a worker.
- ``--read-only`` refuses every change, whoever asks.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web

COOKIE = "rail_console_token"
CHANGE_HEADER = "X-Rail-Console"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConsoleConfigError(ValueError):
    """The console cannot start as configured; the message says what to change."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str) -> None:
    if not is_loopback(host) and not token:
        raise ConsoleConfigError(f"the console binds {host}, beyond loopback: give it a token "
                                 "(--token or RAIL_CONSOLE_TOKEN) or bind 127.0.0.1")


def _has_token(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or \
        request.cookies.get(COOKIE, "") or request.query.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


def middleware(token: str, read_only: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and not _has_token(request, token):
            raise web.HTTPUnauthorized(text="this console needs its token: open it as "
                                       "/?token=TOKEN (or send Authorization: Bearer TOKEN)")
        if request.method not in ("GET", "HEAD"):
            if read_only:
                raise web.HTTPForbidden(text="the console is read-only (--read-only): "
                                        "nothing can be changed from it")
            if request.headers.get(CHANGE_HEADER) != "1":
                raise web.HTTPForbidden(text=f"a change needs the header {CHANGE_HEADER}: 1 "
                                        "(the console's page sends it)")
        response = await handler(request)
        if token and request.query.get("token") and request.path == "/":
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response
    return guard
