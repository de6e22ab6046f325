"""``python -m brokerd --data-dir DIR``: run the broker in the foreground."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import resource
import signal
import sys

import zmq

from brokerd import logs
from brokerd.config import ConfigError, load_config
from brokerd.errors import StorageError
from brokerd.protocol import EXIT_BIND, EXIT_CONFIG, EXIT_OK, EXIT_STORAGE, EXIT_UNAVAILABLE
from brokerd.server import Broker


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
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus /metrics "
                        "there (port 0: a free one); off by default")
    parser.add_argument("--broker-id", type=int, help="this broker's id in a cluster (>= 0)")
    parser.add_argument("--zookeeper", help="join a cluster coordinated by ZooKeeper: "
                        "HOST:PORT[,HOST:PORT...][/chroot]")
    parser.add_argument("--advertise", help="the API endpoint other brokers and clients "
                        "use (default: the bound one)")
    parser.add_argument("--curve-secret-key", metavar="FILE", help="the broker's CURVE "
                        "secret key file (rail keys new NAME): encrypt and authenticate "
                        "every socket; needs --acl")
    parser.add_argument("--acl", metavar="FILE", help="acl.toml: who may connect (public "
                        "keys) and what each may do; reloaded on SIGHUP (docs/security.md)")
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


def join_cluster(broker: Broker, api: str, ingest: str) -> int:
    """Register with ZooKeeper and take up this broker's replicas; an exit code."""
    from brokerd.cluster.zk import ClusterError
    assert broker.cluster is not None
    try:
        broker.cluster.start(api, ingest)
    except ClusterError as exc:
        print(f"brokerd: {exc}", file=sys.stderr)
        broker.cluster.stop()
        return EXIT_CONFIG if "already registered" in str(exc) else EXIT_UNAVAILABLE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, {
            "data_dir": args.data_dir, "bind": args.bind, "ingest": args.ingest,
            "log_level": args.log_level, "broker_id": args.broker_id,
            "zookeeper": args.zookeeper, "advertise": args.advertise,
            "metrics": args.metrics, "curve_secret_key": args.curve_secret_key,
            "acl": args.acl})
    except ConfigError as exc:
        print(f"brokerd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.zookeeper and config.broker_id < 0:
        print("brokerd: --zookeeper needs --broker-id N (each broker its own N >= 0)",
              file=sys.stderr)
        return EXIT_CONFIG
    if config.zookeeper:
        from brokerd.cluster.zk import connect_string_problem
        problem = connect_string_problem(config.zookeeper)
        if problem:
            print(f"brokerd: {problem}", file=sys.stderr)
            return EXIT_CONFIG
    logs.setup(config.log_level)
    # kill -USR1 <pid>: every thread's Python stack to stderr (a broker that seems stuck)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    security = None
    if config.curve_secret_key or config.acl:
        from brokerd.security import Security, SecurityError
        try:
            security = Security.from_options(config.curve_secret_key, config.acl,
                                             config.auto_create_topics)
        except SecurityError as exc:
            print(f"brokerd: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    raise_open_files_limit()
    try:
        broker = Broker(config, security)
    except zmq.ZMQError as exc:
        print(f"brokerd: cannot bind {config.bind} / {config.ingest}: {exc}", file=sys.stderr)
        return EXIT_BIND
    except (OSError, StorageError) as exc:
        print(f"brokerd: cannot open data dir {config.data_dir}: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    api, ingest = broker.endpoints
    if broker.cluster is not None:
        code = join_cluster(broker, api, ingest)
        if code != EXIT_OK:
            return code
    metrics = None
    if config.metrics:
        from brokerd.metrics import MetricsServer
        try:
            secure = broker.security.connect_securely if broker.security else None
            metrics = MetricsServer(config.metrics, api, broker.context, secure)
        except (OSError, ValueError) as exc:
            print(f"brokerd: cannot serve metrics on {config.metrics}: {exc}", file=sys.stderr)
            return EXIT_BIND
        metrics.start()
    shown = f" metrics={metrics.address}" if metrics else ""
    broker.catch_signals()
    print(f"brokerd ready api={api} ingest={ingest} data={config.data_dir}{shown}", flush=True)
    broker.serve()
    if metrics is not None:
        metrics.stop()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
