"""The ZAP handler: pyzmq's authenticator on its own thread, answering the CURVE
handshakes of every socket in the broker's context that has the ``rail`` ZAP domain.

A client is admitted only if its public key is in the allow-list (``acl.toml``'s
principals, plus the broker's own key for its in-process clients); its User-Id is the
principal's name, which every message it sends then carries.  Never the address: a key is
the identity.  The loop swaps in a new Acl on SIGHUP; the thread reads whichever is
current (one attribute read, atomic under the GIL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from brokerd.security.acl import Acl

ZAP_DOMAIN = "rail"
LOG_EVERY_S = 10.0
SELF = "@broker"  # the principal of the broker's own key (its metrics and replica clients)
log = logging.getLogger("brokerd.security")


class Gate:
    """Admits allow-listed keys; ``acl`` may be replaced at any time."""

    def __init__(self, context: zmq.Context, acl: Acl, own_public: bytes,
                 on_refused: Callable[[], None]) -> None:
        self.acl = acl
        self.own_public = own_public
        self.on_refused = on_refused  # counts in stats (runs on the ZAP thread)
        self.refused = 0
        self._logged_at = -LOG_EVERY_S
        self._auth = _Authenticator(context, self)
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, self)

    def principal_of(self, z85_key: bytes) -> str | None:
        name = self.acl.principal_of(z85_key)
        if name is None and z85_key == self.own_public:
            return SELF
        return name

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """pyzmq's credentials-provider hook: may this key connect?"""
        allowed = self.principal_of(z85_key) is not None
        if not allowed:
            self.refused += 1
            self.on_refused()
            now = time.monotonic()
            if now - self._logged_at >= LOG_EVERY_S:  # a scan of bad keys must not flood
                self._logged_at = now
                log.warning("refused a CURVE client with an unknown key %s (%d refused so "
                            "far)", z85_key.decode(errors="replace"), self.refused)
        return allowed

    def stop(self) -> None:
        self._auth.stop()


class _Authenticator(ThreadAuthenticator):
    def __init__(self, context: zmq.Context, gate: Gate) -> None:
        super().__init__(context, log=logging.getLogger("brokerd.zap"))
        self.gate = gate

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.gate.principal_of(z85.encode(client_public_key)) or ""
