"""Rail's web console: a live supervision tree, topics, a message browser, consumer groups
with lag history, and dead letters, served by Rail itself (no CDN: every asset is in
``static/``).  See docs/console.md.

    rail console --broker tcp://127.0.0.1:7400 --control tcp://127.0.0.1:7402

From other code (``rail up``): ``ConsoleThread(Settings(...)).start()`` serves it on a
thread of its own with its own event loop, and ``stop()`` ends it.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from runtime.console.app import Settings, create_app
from runtime.console.auth import ConsoleConfigError

__all__ = ["ConsoleConfigError", "ConsoleThread", "Settings", "create_app", "serve", "start"]


async def start(settings: Settings) -> web.AppRunner:
    """Serve the console on the running loop; returns the runner (``await runner.cleanup()``
    stops it).  With ``settings.port`` 0 the port is chosen: read ``runner.addresses``."""
    runner = web.AppRunner(create_app(settings), handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    return runner


def serve(settings: Settings) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM."""
    web.run_app(create_app(settings), host=settings.host, port=settings.port,
                print=None, shutdown_timeout=2.0)


class ConsoleThread:
    """The console on a daemon thread with its own loop (for a process that is not async,
    such as the supervisor).  ``start`` returns once it listens, or raises why not."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rail-console", daemon=True)

    def start(self, timeout_s: float = 10.0) -> str:
        create_app(self.settings)  # a configuration error is raised here, in the caller
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the console did not start in time")
        if self._error is not None:
            raise self._error
        return self.address

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = self._loop.run_until_complete(start(self.settings))
            host, port = self._runner.addresses[0][:2]
            self.address = f"{host}:{port}"
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
