"""The real console in a real browser: Debian's chromium, driven by Debian's chromedriver
through selenium (Service pinned to /usr/bin/chromedriver, so selenium-manager never
downloads anything), plus a ``rail up`` and a ``rail console`` on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, free_port, python_env, stop_process, wait_for

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = os.environ.get("RAIL_CONSOLE_SCREENSHOTS", "")  # a folder: save screenshots there


def need_browser() -> None:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs /usr/bin/chromium and /usr/bin/chromedriver (Debian packages "
                    "chromium and chromium-driver)")


def start_browser() -> tuple[Any, str]:
    """A headless chromium and the profile folder to delete after ``quit()``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="rail-console-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # for script errors
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    return driver, profile


def stop_browser(driver: Any, profile: str) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def script_errors(driver: Any) -> list[str]:
    """What the page's scripts logged as errors (uncaught exceptions, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shot(driver: Any, name: str) -> None:
    """Save a screenshot as ``console-NAME.png`` when RAIL_CONSOLE_SCREENSHOTS names a folder."""
    if SHOTS:
        driver.save_screenshot(str(Path(SHOTS) / f"console-{name}.png"))


class Process:
    """A process started by a test, stopped by its pid (SIGTERM, then SIGKILL)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         env=python_env(), cwd=ROOT)

    def stop(self, timeout: float = 20.0) -> None:
        stop_process(self.proc, timeout)


def rail(*args: str) -> list[str]:
    return [sys.executable, "-m", "runtime.cli", *args]


def answers(url: str) -> bool:
    """True once something serves HTTP there (a 401 of a console with a token counts)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def start_console(folder: Path, broker: str, control: str, *extra: str
                  ) -> tuple[Process, str]:
    port = free_port()
    proc = Process(rail("console", "--broker", broker, "--control", control, "--bind",
                        f"127.0.0.1:{port}", *extra), folder / f"console-{port}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(url + "/api/info"), 20, 0.1, "the console to answer")
    except TimeoutError:
        proc.stop()
        raise
    return proc, url


def wait_until(what: str, predicate: Any, timeout: float = 20.0) -> Any:
    """``wait_for`` for page checks that may hit an element being redrawn."""
    from selenium.common.exceptions import StaleElementReferenceException

    def safe() -> Any:
        try:
            return predicate()
        except StaleElementReferenceException:
            return None
    return wait_for(safe, timeout, 0.1, what)
