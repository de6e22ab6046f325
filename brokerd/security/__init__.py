"""Security at the socket edge: CURVE encryption and authentication (ZAP), and ACLs.

``Security`` is what the broker holds when it runs with ``--curve-secret-key`` and
``--acl``: it makes its sockets CURVE servers (or, for its own client sockets, CURVE
clients with the broker's key), and answers one question per request, before any handler
sees it: may this principal do this?  Handlers never see a key.  Without these options
the broker holds None and pays one attribute test per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from brokerd.errors import NotAuthorized
from brokerd.security.acl import Acl, AclError, load_acl
from brokerd.security.checks import needs
from brokerd.security.denials import Denials
from brokerd.security.keys import KeyFileError, KeyPair, load_keypair, loose_permissions
from brokerd.security.zap import SELF, ZAP_DOMAIN, Gate

__all__ = ["Security", "SecurityError"]
log = logging.getLogger("brokerd.security")


class SecurityError(ValueError):
    """The key or ACL options are unusable; one line that says which and why."""


class Security:
    def __init__(self, keys: KeyPair, acl_path: str, auto_create: bool = True) -> None:
        self.keys = keys
        self.acl_path = acl_path
        self.auto_create = auto_create  # the broker's auto_create_topics (see checks.needs)
        self.acl = _load(acl_path)
        self.denials = Denials()
        self.gate: Gate | None = None
        self.coordinator: Any = None  # brokerd.groups.Coordinator: what a poll reads

    def follow_groups(self, coordinator: Any) -> None:
        """Check a poll against the topics its member is assigned, not only its group, so
        a reload that takes read away stops the next poll (join checked them once)."""
        self.coordinator = coordinator

    @classmethod
    def from_options(cls, secret_key_file: str, acl_file: str,
                     auto_create: bool = True) -> Security | None:
        """None when both are empty; SecurityError when only one is given or either is bad."""
        if not secret_key_file and not acl_file:
            return None
        if not secret_key_file:
            raise SecurityError("--acl needs --curve-secret-key: without CURVE nobody has a "
                                "principal to check (make one with: rail keys new broker)")
        if not acl_file:
            raise SecurityError("--curve-secret-key needs --acl FILE: CURVE without an "
                                "allow-list would let any key in (docs/security.md)")
        try:
            keys = load_keypair(secret_key_file)
        except KeyFileError as exc:
            raise SecurityError(str(exc)) from None
        if loose_permissions(secret_key_file):
            log.warning("%s may be read by other users: chmod 600 it", secret_key_file)
        return cls(keys, acl_file, auto_create)

    def start(self, context: zmq.Context, on_refused: Callable[[], None]) -> None:
        """Start answering handshakes (before any CURVE socket binds); ``on_refused``
        is called (on the ZAP thread) for each key turned away."""
        self.gate = Gate(context, self.acl, self.keys.public, on_refused)

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.stop()
            self.gate = None

    def serve_securely(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server whose clients the gate checks (before bind)."""
        sock.curve_server = True
        sock.curve_secretkey = self.keys.secret
        sock.zap_domain = ZAP_DOMAIN.encode()

    def connect_securely(self, sock: zmq.Socket, server_public: bytes | None = None) -> None:
        """Make ``sock`` a CURVE client with the broker's own key (before connect); the
        server is this broker unless ``server_public`` names another (a replica's leader)."""
        sock.curve_serverkey = server_public or self.keys.public
        sock.curve_publickey = self.keys.public
        sock.curve_secretkey = self.keys.secret

    def reload(self) -> bool:
        """Read the ACL file again (SIGHUP); on error keep the current one.  Connections stay."""
        try:
            acl = _load(self.acl_path)
        except SecurityError as exc:
            log.error("ACL reload failed, keeping the previous rules: %s", exc)
            return False
        self.acl = acl
        if self.gate is not None:
            self.gate.acl = acl
        log.info("ACL reloaded from %s: %d principal(s), rules %s", self.acl_path,
                 len(acl.names), "enforced" if acl.enforced else "off (allow-list only)")
        return True

    def authorize(self, request: Any, frame: zmq.Frame) -> None:
        """Raise NotAuthorized unless the sender of ``frame`` may make ``request``."""
        acl = self.acl
        principal = str(frame.get("User-Id"))  # ZAP's User-Id: the principal's name
        if principal == SELF:
            return
        if principal not in acl.principals:  # removed by a reload since its handshake
            raise self._revoked(principal, request.__struct_config__.tag)
        if not acl.enforced:
            return
        for op, kind, name in needs(request, self.auto_create):
            if not acl.allows(principal, op, kind, name):
                raise self._denied(principal, request.__struct_config__.tag, op, kind, name)
        if self.coordinator is not None and request.__struct_config__.tag == "poll":
            for topic in self._polled(request.group, request.member_id):
                if not acl.allows(principal, "read", "topic", topic):
                    raise self._denied(principal, "poll", "read", "topic", topic)

    def _polled(self, group_name: str, member_id: str) -> set[str]:
        group = self.coordinator.groups.get(group_name)
        if group is None or member_id not in group.members:
            return set()  # the handler answers NOT_MEMBER
        return {tp[0] for tp in group.assignment_of(member_id)}

    def may_ingest(self, principal: str, topic: str) -> bool:
        """Whether an ingest message of ``principal`` may go into ``topic``."""
        acl = self.acl
        if principal == SELF:
            return True
        if principal not in acl.principals:
            self._revoked(principal, "ingest")
            return False
        if not acl.enforced or acl.allows(principal, "write", "topic", topic):
            return True
        self._denied(principal, "ingest", "write", "topic", topic)
        return False

    def _revoked(self, principal: str, request: str) -> NotAuthorized:
        self.denials.denied(principal, request, "the allow-list")
        return NotAuthorized(f"principal {principal!r} was removed from {self.acl_path}: "
                             "this connection may do nothing more; reconnect with a listed key")

    def _denied(self, principal: str, request: str, op: str, kind: str,
                name: str) -> NotAuthorized:
        resource = "cluster" if kind == "cluster" else f"{kind} {name!r}"
        self.denials.denied(principal, request, resource)
        return NotAuthorized(f"principal {principal!r} may not {request} ({op} on {resource}):"
                             f" ask an operator for an ACL rule in {self.acl_path}")


def _load(path: str) -> Acl:
    try:
        return load_acl(path)
    except AclError as exc:
        raise SecurityError(str(exc)) from None
