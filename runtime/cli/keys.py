"""``rail keys new NAME`` and ``rail keys list``: CURVE key pairs for brokers and clients."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.cli.common import set_handler


def add_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="make and list CURVE key pairs (docs/security.md)",
                          description="make and list CURVE key pairs (docs/security.md)")
    inner = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = inner.add_parser("new", help="write NAME.key (public) and NAME.key_secret (0600)",
                           description="write NAME.key (public) and NAME.key_secret (mode "
                           "0600) and print the public key, for acl.toml or a client's "
                           "RAIL_CURVE_SERVER_KEY")
    new.add_argument("name", help="the key's name: a broker, a service, a person")
    _with_dir(new)
    set_handler(new, _new)
    listing = inner.add_parser("list", help="the key pairs in the keys folder",
                               description="the key pairs in the keys folder: name, public "
                               "key, and the secret file's mode")
    _with_dir(listing)
    set_handler(listing, _list)


def _with_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None,
                        help="keys folder (default: $RAIL_KEYS_DIR or ./keys)")


def _new(args: argparse.Namespace) -> int:
    from runtime.security.keys import KeyConfigError, default_dir, new_keypair
    directory = args.dir or default_dir()
    try:
        public_path, secret_path, public = new_keypair(directory, args.name)
    except (KeyConfigError, OSError) as exc:
        print(f"rail: {exc}", file=sys.stderr)
        return 1
    print(f"public key  {public.decode()}\npublic file {public_path}\n"
          f"secret file {secret_path} (mode 0600: keep it to {args.name})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from runtime.security.keys import default_dir, list_keys
    directory = args.dir or default_dir()
    if not directory.is_dir():
        print(f"rail: no keys folder {directory}: make a key with rail keys new NAME",
              file=sys.stderr)
        return 1
    rows = list_keys(directory)
    if not rows:
        print(f"no keys in {directory}")
        return 0
    print(f"{'NAME':<24} {'PUBLIC KEY':<40}  SECRET")
    for name, public, has_secret, mode in rows:
        secret = f"yes ({mode})" if has_secret else "no"
        warn = "  <- readable by others: chmod 600" if has_secret and mode not in ("600", "400") else ""
        print(f"{name:<24} {public:<40}  {secret}{warn}")
    return 0
