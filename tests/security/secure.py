"""Helpers for the security tests: key pairs on disk, acl.toml, a broker with CURVE on."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import zmq

from runtime.security.keys import ClientKeys, new_keypair
from tests.helpers import BrokerProcess, start_broker


@dataclass
class Keys:
    """One named key pair written by the same code as ``rail keys new``."""

    name: str
    public: bytes
    public_file: Path
    secret_file: Path


def make_keys(directory: Path, name: str) -> Keys:
    public_file, secret_file, public = new_keypair(directory, name)
    return Keys(name, public, public_file, secret_file)


def write_acl(path: Path, principals: list[Keys], rules: str = "") -> Path:
    text = "".join(f'[[principal]]\nname = "{k.name}"\nkey = "{k.public.decode()}"\n\n'
                   for k in principals)
    path.write_text(text + rules)
    return path


def rule(principal: str, resource: str, name: str, ops: list[str], match: str = "literal",
         effect: str = "allow") -> str:
    return (f'[[rule]]\nprincipal = "{principal}"\nresource = "{resource}"\nname = "{name}"\n'
            f'match = "{match}"\nops = {ops!r}\neffect = "{effect}"\n\n').replace("'", '"')


def start_secure_broker(tmp: Path, server: Keys, acl: Path, *extra: str) -> BrokerProcess:
    return start_broker(tmp / "data", "--curve-secret-key", str(server.secret_file),
                        "--acl", str(acl), *extra)


def client_keys(server: Keys, client: Keys) -> ClientKeys:
    return ClientKeys.from_files(str(server.public_file), str(client.secret_file))


def client_env(server: Keys, client: Keys) -> dict[str, str]:
    return {"RAIL_CURVE_SERVER_KEY": str(server.public_file),
            "RAIL_CURVE_KEY_FILE": str(client.secret_file)}


def tcp_address(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def raw_tcp(endpoint: str, data: bytes) -> None:
    """Connect, write ``data``, close: what a port scanner or a confused client does."""
    with socket.create_connection(tcp_address(endpoint), timeout=2) as s:
        s.settimeout(2)
        if data:
            try:
                s.sendall(data)
            except OSError:
                pass  # the broker may hang up first: that is the point


# A ZMTP 3.0 greeting asking for CURVE as a client (64 bytes): signature, version 3.0,
# mechanism "CURVE" padded to 20 bytes, as-server 0, filler.
CURVE_GREETING = (b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\0")
                  + b"\x00" + bytes(31))


def stranger_socket(context: zmq.Context, endpoint: str, server_public: bytes | None,
                    kind: int = zmq.DEALER) -> zmq.Socket:
    """A client with a fresh key no ACL lists (or plaintext when ``server_public`` is None)."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if server_public is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey = server_public
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    sock.connect(endpoint)
    return sock


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
