"""Storage benchmark: PartitionLog appends and sequential reads against the raw disk.

Appends 1,000,000 records of 100 bytes in batches of 1,000 (payloads msgpack-encoded
beforehand, as a producer would send them) into a PartitionLog in a temp dir, with fsync
never / every 100 ms (a flusher thread, as in the broker) / after every batch, then reads
the log back with read(offset, 1 MiB) to the end (warm, then after dropping its pages;
median of 5 passes each, alternating with raw 1 MiB reads of the log's own files).  The raw
disk (bench/peers.py's raw_disk), measured in the same run, writes about the same bytes in
1 MiB writes plus one fsync and reads them in 1 MiB reads.  MB = 10**6 bytes.  Each figure
is the median of the runs.

    python bench/log_bench.py                 # 3 runs, 1,000,000 records
    python bench/log_bench.py --quick         # 1 run, 100,000 records
    python bench/log_bench.py --dir /mnt/disk # benchmark another disk
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from brokerd.log.batch import HEADER_SIZE, Record, crc32, encode_records  # noqa: E402
from brokerd.log.config import LogConfig  # noqa: E402
from brokerd.log.partition import PartitionLog  # noqa: E402

MIB = 1 << 20
MB = 1e6
FLUSH_INTERVAL_S = 0.1
FSYNC_MODES = ("never", "every 100 ms", "every batch")
READ_PASSES = 5  # reads are short: each run takes the median of this many passes


def encode_batches(records: int, batch_size: int, value_size: int) -> list[bytes]:
    """The producer's side, done before timing: one msgpack payload per batch."""
    payloads = []
    for b in range(records // batch_size):
        stem = b"%010d" % b
        values = [stem + os.urandom(value_size - len(stem)) for _ in range(batch_size)]
        payloads.append(encode_records([Record(value=msgspec.Raw(msgspec.msgpack.encode(v)))
                                        for v in values]))
    return payloads


class IntervalFlusher:
    """Every ``interval`` s, take a flush ticket (under the appenders' lock) and fsync it
    outside the lock, like the broker's loop and flusher thread."""

    def __init__(self, log: PartitionLog, lock: threading.Lock, interval: float) -> None:
        self.log, self.lock, self.interval = log, lock, interval
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flusher", daemon=True)

    def __enter__(self) -> IntervalFlusher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self.lock:
                ticket = self.log.begin_flush()
            ticket.run()
            self.rounds += 1


def append_all(directory: Path, payloads: list[bytes], batch_size: int, fsync: str) -> float:
    """Seconds to append every payload; the last batch is durable unless fsync is never."""
    log = PartitionLog(directory, LogConfig())
    lock = threading.Lock()
    try:
        start = time.perf_counter()
        if fsync == "every 100 ms":
            with IntervalFlusher(log, lock, FLUSH_INTERVAL_S):
                for payload in payloads:
                    with lock:
                        log.append(payload, batch_size, 0, 0)
            log.flush()
        elif fsync == "every batch":
            for payload in payloads:
                log.append(payload, batch_size, 0, 0)
                log.flush()
        else:
            for payload in payloads:
                log.append(payload, batch_size, 0, 0)
        return time.perf_counter() - start
    finally:
        log.close()


def drop_cache(directory: Path) -> None:
    for path in directory.glob("*.log"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read_files(directory: Path, cold: bool) -> float:
    """MB/s of 1 MiB reads of the log's own segment files into one reused buffer, as the raw
    peer reads its file: the same bytes in the same state, without the log's read path
    (index lookup, header walk, a fresh buffer per read that the returned batches keep)."""
    if cold:
        drop_cache(directory)
    buf = bytearray(MIB)
    nbytes = 0
    start = time.perf_counter()
    for path in sorted(directory.glob("*.log")):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                nbytes += n
    return nbytes / (time.perf_counter() - start) / MB


def read_all(directory: Path, cold: bool) -> tuple[float, int, int]:
    """(seconds, records, batches) of reading the whole log with read(offset, 1 MiB)."""
    log = PartitionLog(directory, LogConfig())
    if cold:
        drop_cache(directory)
    batches_seen = 0
    try:
        start = time.perf_counter()
        offset = first = log.start_offset
        while offset < log.end_offset:
            batches = log.read(offset, MIB)
            batches_seen += len(batches)
            offset = batches[-1].header.next_offset
        return time.perf_counter() - start, offset - first, batches_seen
    finally:
        log.close()


# --- the raw disk -------------------------------------------------------------


def local_raw_disk(path_dir: str, total_mb: int) -> dict[str, float]:
    """The same figures as bench/peers.py's raw_disk, for when it cannot be imported."""
    path = os.path.join(path_dir, "raw-disk.dat")
    block = os.urandom(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(total_mb):
            os.write(fd, block)
        os.fsync(fd)
        write_s = time.perf_counter() - start
    finally:
        os.close(fd)
    out = {"write_mb_per_s": total_mb * MIB / write_s / MB}
    for name, cold in (("read_warm_mb_per_s", False), ("read_cold_mb_per_s", True)):
        fd = os.open(path, os.O_RDONLY)
        try:
            if cold:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            start = time.perf_counter()
            while os.read(fd, MIB):
                pass
            out[name] = total_mb * MIB / (time.perf_counter() - start) / MB
        finally:
            os.close(fd)
    os.unlink(path)
    return out


def raw_disk_function() -> tuple[str, Callable[[str, int], dict[str, Any]]]:
    try:
        from peers import raw_disk  # bench/peers.py: the project's raw-disk peer
    except Exception:  # noqa: BLE001 -- any import failure: fall back to the local copy
        return "local", local_raw_disk
    return "bench/peers.py", lambda path_dir, total_mb: raw_disk(path_dir, total_mb, fsyncs=1)


# --- one run and the report ---------------------------------------------------


def one_run(root: Path, payloads: list[bytes], batch_size: int,
            raw_disk: Callable[[str, int], dict[str, Any]]) -> dict[str, float]:
    records = len(payloads) * batch_size
    log_bytes = sum(HEADER_SIZE + len(p) for p in payloads)
    row: dict[str, float] = {}
    for mode in FSYNC_MODES:
        directory = root / mode.replace(" ", "-")
        seconds = append_all(directory, payloads, batch_size, mode)
        row[f"append {mode} rec/s"] = records / seconds
        row[f"append {mode} MB/s"] = log_bytes / seconds / MB
        if mode != "every 100 ms":
            shutil.rmtree(directory)
    kept = root / "every-100-ms"
    for temperature in ("warm", "cold"):
        cold = temperature == "cold"
        log_s, raw_mb_s = [], []
        for _ in range(READ_PASSES):  # alternate, so both see the same neighbours' load
            seconds, got, batches = read_all(kept, cold)
            assert (got, batches) == (records, len(payloads)), "the read missed records"
            log_s.append(seconds)
            raw_mb_s.append(raw_read_files(kept, cold))
        row[f"read {temperature} rec/s"] = records / statistics.median(log_s)
        row[f"read {temperature} MB/s"] = log_bytes / statistics.median(log_s) / MB
        row[f"raw read {temperature} of the log's files MB/s"] = statistics.median(raw_mb_s)
    shutil.rmtree(kept)
    raw = raw_disk(str(root), max(1, round(log_bytes / MIB)))
    row["raw write MB/s"] = raw["write_mb_per_s"]
    row["raw read warm MB/s"] = raw["read_warm_mb_per_s"]
    row["raw read cold MB/s"] = raw["read_cold_mb_per_s"]
    return row


RATIOS = {  # name: (log figure, raw figure)
    "append (fsync every 100 ms) / raw write": ("append every 100 ms MB/s", "raw write MB/s"),
    "append (fsync never) / raw write": ("append never MB/s", "raw write MB/s"),
    "read warm / raw read warm": ("read warm MB/s", "raw read warm MB/s"),
    "read cold / raw read cold": ("read cold MB/s", "raw read cold MB/s"),
    "read warm / raw read warm of the log's files": ("read warm MB/s",
                                                     "raw read warm of the log's files MB/s"),
    "read cold / raw read cold of the log's files": ("read cold MB/s",
                                                     "raw read cold of the log's files MB/s"),
}


def report(rows: list[dict[str, float]]) -> dict[str, float]:
    """Print the median of each figure, and each ratio both as the ratio of the medians
    and as the median of the per-run ratios (log and raw measured seconds apart)."""
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    width = max(len(k) for k in med)
    print(f"\nmedians of {len(rows)} run(s):")
    for key, value in med.items():
        runs = ", ".join(f"{r[key]:,.0f}" for r in rows)
        print(f"  {key:<{width}}  {value:>14,.1f}   (runs: {runs})")
    print("\nratios (targets: append with fsync every 100 ms >= 0.50, reads >= 0.70):")
    width = max(len(name) for name in RATIOS)
    print(f"  {'':<{width}} {'of medians':>10} {'median of runs':>15}")
    for name, (mine, raw) in RATIOS.items():
        paired = statistics.median(r[mine] / r[raw] for r in rows)
        print(f"  {name:<{width}} {med[mine] / med[raw]:>10.2f} {paired:>15.2f}")
    return med


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: the temp dir)")
    parser.add_argument("--quick", action="store_true", help="100,000 records, 1 run")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.runs = 100_000, 1
    payloads = encode_batches(args.records, args.batch, args.value_bytes)
    source, raw_disk = raw_disk_function()
    print(f"{args.records:,} records of {args.value_bytes} B in batches of {args.batch:,}; "
          f"log {sum(HEADER_SIZE + len(p) for p in payloads) / MB:.1f} MB; raw disk from {source}; "
          f"batch CRC by {crc32.__module__}")
    rows = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="rail-log-bench-", dir=args.dir) as tmp:
            rows.append(one_run(Path(tmp), payloads, args.batch, raw_disk))
        print(f"run {run}: " + ", ".join(f"{k} {v:,.0f}" for k, v in rows[-1].items()
                                         if "MB/s" in k))
    report(rows)


if __name__ == "__main__":
    main()
