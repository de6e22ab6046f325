"""``python -m brokerd --data-dir DIR``: run the broker in the foreground."""

from __future__ import annotations

import argparse
import logging
import resource
import sys

import zmq

from brokerd import logs
from brokerd.config import ConfigError, load_config
from brokerd.errors import StorageError
from brokerd.protocol import EXIT_BIND, EXIT_CONFIG, EXIT_OK, EXIT_STORAGE


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="brokerd", description="Rail's broker: durable partitioned logs over ZeroMQ.")
    parser.add_argument("--data-dir", help="folder for topics and offsets (default ./data)")
    parser.add_argument("--bind", help="request/reply ROUTER endpoint "
                        "(default tcp://127.0.0.1:7400; port * picks a free one)")
    parser.add_argument("--ingest", help="fire-and-forget PULL endpoint "
                        "(default tcp://127.0.0.1:7401)")
    parser.add_argument("--config", help="TOML file with broker and topic_defaults settings")
    parser.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    return parser.parse_args(argv)


def raise_open_files_limit() -> None:
    """Take the hard limit of open files as the soft one: every segment of every partition
    holds a descriptor, so the common soft limit of 1,024 ends at about 1,000 partitions."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger("brokerd").warning("cannot raise the open-files limit from %d "
                                                 "to %d: %s", soft, hard, exc)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, {"data_dir": args.data_dir, "bind": args.bind,
                                           "ingest": args.ingest, "log_level": args.log_level})
    except ConfigError as exc:
        print(f"brokerd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(config.log_level)
    raise_open_files_limit()
    from brokerd.server import Broker
    try:
        broker = Broker(config)
    except zmq.ZMQError as exc:
        print(f"brokerd: cannot bind {config.bind} / {config.ingest}: {exc}", file=sys.stderr)
        return EXIT_BIND
    except (OSError, StorageError) as exc:
        print(f"brokerd: cannot open data dir {config.data_dir}: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    api, ingest = broker.endpoints
    print(f"brokerd ready api={api} ingest={ingest} data={config.data_dir}", flush=True)
    broker.serve()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
