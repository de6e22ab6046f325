"""Who may drive the supervisor: ``register`` runs code, so its control socket is either
CURVE with only admin principals let in, or a local socket nobody else can open.

Supervisor side (``rail up``):

- ``RAIL_CONTROL_SECRET_KEY``: the supervisor's key pair file (``rail keys new``);
- ``RAIL_CONTROL_ACL``: an ``acl.toml`` (the broker's format, docs/security.md); only the
  principals an ``allow`` rule gives ``admin`` on ``cluster`` (and no ``deny`` takes it
  back) may connect.

Both set: the control socket is a CURVE server and ZAP (domain ``rail-control``) admits
admins only.  Neither: the socket must be an ``ipc://`` path (made mode 0600) or loopback
TCP (reachable by every local user: see docs/security.md); any other address is refused.

Client side (``rail status`` ...): ``RAIL_CONTROL_SERVER_KEY`` (the supervisor's public key
or its ``.key`` file) with ``RAIL_CONTROL_KEY_FILE`` (this user's key pair; default
``RAIL_CURVE_KEY_FILE``, the key it uses for the broker).

The runtime may not import the broker's insides, so the few lines that read ``acl.toml``'s
admins live here too.
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from runtime.security.keys import KEY_FILE_ENV, KeyConfigError, public_key, read_keypair

CONTROL_KEY_ENV = "RAIL_CONTROL_SECRET_KEY"
CONTROL_ACL_ENV = "RAIL_CONTROL_ACL"
CONTROL_SERVER_KEY_ENV = "RAIL_CONTROL_SERVER_KEY"
CONTROL_CLIENT_KEY_ENV = "RAIL_CONTROL_KEY_FILE"
ZAP_DOMAIN = "rail-control"
LOOPBACK = ("tcp://127.0.0.1:", "tcp://localhost:", "tcp://[::1]:")
SELF = "@supervisor"  # the supervisor's own key: its /metrics asks status through the socket
_own: tuple[bytes, bytes] | None = None  # this process's guard key pair, once one serves
log = logging.getLogger("rail.security")


def admins(acl_path: str) -> dict[bytes, str]:
    """The Z85 public keys of ``acl_path``'s principals with admin on the cluster."""
    try:
        raw = tomllib.loads(Path(acl_path).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise KeyConfigError(f"cannot read {CONTROL_ACL_ENV}={acl_path}: {exc}") from None
    granted: set[str] = set()
    denied: set[str] = set()
    for rule in raw.get("rule", []):
        if rule.get("resource") == "cluster" and "admin" in rule.get("ops", []):
            (denied if rule.get("effect", "allow") == "deny" else granted).add(
                rule.get("principal"))
    if "*" in denied:
        granted = set()
    keys = {}
    for p in raw.get("principal", []):
        name = p.get("name", "")
        if name not in denied and (name in granted or "*" in granted):
            keys[public_key(str(p.get("key", "")), f"principal {name!r}")] = name
    if not keys:
        raise KeyConfigError(f"{acl_path} gives no principal admin on the cluster: nobody "
                             "could use the control socket (docs/security.md)")
    return keys


class ControlGuard:
    """The supervisor's CURVE key and the admins ZAP lets in."""

    def __init__(self, key_file: str, acl_path: str) -> None:
        self.public, self.secret = read_keypair(key_file)
        self.admins = {**admins(acl_path), self.public: SELF}
        self._auth: ThreadAuthenticator | None = None

    @classmethod
    def from_env(cls) -> ControlGuard | None:
        key_file, acl = os.environ.get(CONTROL_KEY_ENV, ""), os.environ.get(CONTROL_ACL_ENV, "")
        if not key_file and not acl:
            return None
        if not key_file or not acl:
            missing = CONTROL_KEY_ENV if not key_file else CONTROL_ACL_ENV
            raise KeyConfigError(f"{missing} is not set: a CURVE control socket needs both "
                                 f"{CONTROL_KEY_ENV} and {CONTROL_ACL_ENV}")
        guard = cls(key_file, acl)
        for name in (CONTROL_KEY_ENV, CONTROL_ACL_ENV):  # workers inherit the environment:
            os.environ.pop(name, None)  # the supervisor's key must not reach them
        return guard

    def serve(self, sock: zmq.Socket, context: zmq.Context) -> None:
        """Start ZAP in ``context`` and make ``sock`` a CURVE server (before bind)."""
        guard = self

        class _Admins:
            def callback(self, domain: str, key: bytes) -> bool:
                if key not in guard.admins:
                    log.warning("control socket: refused key %s (not an admin)", key.decode())
                    return False
                return True

        class _Auth(ThreadAuthenticator):
            def curve_user_id(self, client_public_key: bytes) -> str:
                return guard.admins.get(z85.encode(client_public_key), "")

        global _own
        _own = (self.public, self.secret)
        self._auth = _Auth(context, log=logging.getLogger("rail.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, _Admins())
        sock.curve_server = True
        sock.curve_secretkey = self.secret
        sock.zap_domain = ZAP_DOMAIN.encode()

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def check_unauthenticated(endpoint: str) -> None:
    """Without CURVE only a local socket will do; KeyConfigError for anything else."""
    if endpoint.startswith("ipc://") or endpoint.startswith(LOOPBACK):
        return
    raise KeyConfigError(f"the control socket {endpoint} would let anyone who reaches it run "
                         f"code: bind ipc:// or loopback, or set {CONTROL_KEY_ENV} and "
                         f"{CONTROL_ACL_ENV} (docs/security.md)")


def bind_private(sock: zmq.Socket, endpoint: str) -> None:
    """Bind; an ``ipc://`` socket file is created with mode 0600 (umask) and kept so."""
    if not endpoint.startswith("ipc://"):
        sock.bind(endpoint)
        return
    old = os.umask(0o177)
    try:
        sock.bind(endpoint)
    finally:
        os.umask(old)
    path = endpoint.removeprefix("ipc://")
    if path and not path.startswith("@"):  # "@name": Linux's abstract namespace, no file
        os.chmod(path, 0o600)


def secure_client(sock: zmq.Socket) -> None:
    """Make a control client CURVE when ``RAIL_CONTROL_SERVER_KEY`` is set (before connect)."""
    server = os.environ.get(CONTROL_SERVER_KEY_ENV, "")
    if not server:
        if _own is not None:  # the supervisor asking itself (its /metrics)
            sock.curve_serverkey = sock.curve_publickey = _own[0]
            sock.curve_secretkey = _own[1]
        return
    key_file = os.environ.get(CONTROL_CLIENT_KEY_ENV) or os.environ.get(KEY_FILE_ENV, "")
    if not key_file:
        raise KeyConfigError(f"{CONTROL_SERVER_KEY_ENV} is set but neither "
                             f"{CONTROL_CLIENT_KEY_ENV} nor {KEY_FILE_ENV}: the control "
                             "socket needs your admin key pair")
    public, secret = read_keypair(key_file)
    sock.curve_serverkey = public_key(server, CONTROL_SERVER_KEY_ENV)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
