"""How fast the console's pages answer with many topics (issue 14: under 200 ms with 1,000).

Starts a real brokerd with N topics (a few events each, one group with committed offsets)
and a real ``rail console`` on free ports, waits for the console's first scrape, then
times each page's requests from a client process: the page itself and the API calls its
JavaScript makes.  Every request is timed end to end (connect, answer, body read); the
report gives the median and the 95th percentile per page over ``--rounds`` rounds.

    .venv/bin/python bench/console_bench.py --topics 1000 --rounds 30

With ``--browser``, each page is also opened in headless chromium (Debian's, through
tests/console/browser.py) and timed from the hash change to the page drawn with its data
(``main[data-ready]``), which adds the browser's JSON parsing and rendering of, say, the
1,000-row topics table.

No peer: the issue sets an absolute bound, not a comparison.  Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brokerd import protocol as p
from runtime.client import Producer
from tests.helpers import free_port, python_env, start_broker, wait_for

PAGES = {
    "overview": ["/", "/api/info", "/api/live/tree", "/api/live/overview"],
    "topics": ["/api/topics"],
    "topic + messages": ["/api/topics/t-0500", "/api/topics/t-0500/messages?limit=50"],
    "search by key": ["/api/topics/t-0500/messages?from=start&key=k-7"],
    "groups": ["/api/groups"],
    "group": ["/api/groups/bench"],
    "dead letters": ["/api/dlq"],
}


def fill(api: str, topics: int, events: int) -> None:
    with Producer(api) as producer:
        for i in range(topics):
            producer._call(p.CreateTopic(topic=f"t-{i:04d}", partitions=1))
        for i in range(topics):
            for n in range(events):
                producer.send(f"t-{i:04d}", {"n": n}, key=f"k-{n}")
        producer.flush()
        producer._call(p.Commit(group="bench", offsets=[(f"t-{i:04d}", 0, 1)
                                                        for i in range(0, topics, 10)]))


HASHES = ["#/", "#/topics", "#/topic/t-0500", "#/groups", "#/group/bench", "#/dlq"]
_DRAWN = """
const hash = arguments[0], done = arguments[arguments.length - 1];
const page = document.getElementById("page"), t0 = performance.now();
page.dataset.ready = "";
location.hash = hash;
const poll = setInterval(() => {
  if (page.dataset.ready === hash) { clearInterval(poll); done(performance.now() - t0); }
}, 1);
"""


def browser_times(base: str, rounds: int) -> dict[str, list[float]]:
    """Milliseconds from a hash change to the page drawn, per page, in headless chromium."""
    from tests.console.browser import start_browser, stop_browser
    driver, profile = start_browser()
    try:
        driver.set_script_timeout(30)
        driver.get(base + "/#/dlq")
        wait_for(lambda: driver.find_element("id", "page").get_attribute("data-ready"), 30)
        times: dict[str, list[float]] = {h: [] for h in HASHES}
        for _ in range(rounds):
            for h in HASHES:
                times[h].append(driver.execute_async_script(_DRAWN, h) / 1000)
        return times
    finally:
        stop_browser(driver, profile)


def report(title: str, times: dict[str, list[float]]) -> float:
    """Print median, p95 and max per page; return the slowest median (s)."""
    print(title)
    print(f"{'page':20} {'median ms':>10} {'p95 ms':>10} {'max ms':>10}")
    worst = 0.0
    for page, samples in times.items():
        samples.sort()
        p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
        med = statistics.median(samples)
        worst = max(worst, med)
        print(f"{page:20} {med * 1000:10.1f} {p95 * 1000:10.1f} {samples[-1] * 1000:10.1f}")
    print(f"slowest median: {worst * 1000:.1f} ms ({'under' if worst < 0.2 else 'OVER'} "
          "the 200 ms bound)")
    return worst


def get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        r.read()
        assert r.status == 200, url
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--events", type=int, default=20, help="events per topic")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--browser", action="store_true", help="time the pages in chromium too")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="console-bench-"))
    broker = start_broker(folder / "data")
    console = None
    try:
        fill(broker.api, args.topics, args.events)
        port = free_port()
        with open(folder / "console.log", "wb") as log:
            console = subprocess.Popen(
                [sys.executable, "-m", "runtime.cli", "console", "--broker", broker.api,
                 "--control", "", "--bind", f"127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT, env=python_env(), cwd=ROOT)
        base = f"http://127.0.0.1:{port}"

        def scraped() -> bool:
            try:
                with urllib.request.urlopen(base + "/api/live/overview", timeout=5) as r:
                    return json.loads(r.read()).get("topics", {}).get("count") == args.topics
            except OSError:
                return False
        wait_for(scraped, 60, 0.2, "the console's first overview")
        times: dict[str, list[float]] = {page: [] for page in PAGES}
        for _ in range(args.rounds):
            for page, urls in PAGES.items():
                times[page].append(sum(get(base + u) for u in urls))
        report(f"console API, {args.topics:,} topics x {args.events} events, {args.rounds} "
               "rounds (each page = the requests its script makes)", times)
        if args.browser:
            print()
            report(f"in headless chromium: hash change to page drawn, {args.rounds} rounds",
                   browser_times(base, args.rounds))
        return 0
    finally:
        if console is not None:
            console.terminate()
            console.wait(10)
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
