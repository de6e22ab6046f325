"""CURVE key files: ZeroMQ's certificate format (``NAME.key`` public, ``NAME.key_secret``
secret), so czmq's and pyzmq's tools read them too.

A key is kept as its 40-character Z85 text (what ZeroMQ's socket options take and what
``acl.toml`` lists); a file is checked when it is read, so a bad key is one clear error at
start-up rather than a handshake that silently never completes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth import load_certificate


class KeyFileError(ValueError):
    """A key file or key text is unusable; the message names it and says why."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # Z85, 40 bytes
    secret: bytes  # Z85, 40 bytes


def check_key(text: str | bytes, what: str) -> bytes:
    """``text`` as a Z85 key (bytes), or KeyFileError saying what is wrong with ``what``."""
    key = text.encode() if isinstance(text, str) else text
    key = key.strip()
    if len(key) != 40:
        raise KeyFileError(f"{what}: a CURVE key is 40 Z85 characters, got {len(key)}")
    try:
        zmq.utils.z85.decode(key)
    except (ValueError, KeyError, IndexError) as exc:
        raise KeyFileError(f"{what}: not a Z85 key: {exc}") from None
    return key


def load_keypair(path: str | Path) -> KeyPair:
    """Read a secret key file (``rail keys new`` writes one); KeyFileError if unusable."""
    try:
        public, secret = load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc}") from None
    if secret is None:
        raise KeyFileError(f"{path} holds only a public key: give the NAME.key_secret file")
    return KeyPair(check_key(public, str(path)), check_key(secret, str(path)))


def load_public(path_or_key: str) -> bytes:
    """A public key given as its Z85 text or as a key file's path."""
    if len(path_or_key.strip()) == 40 and not os.path.exists(path_or_key):
        return check_key(path_or_key, "public key")
    try:
        public, _ = load_certificate(path_or_key)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path_or_key!r} is neither a 40-character key nor a readable "
                        f"key file: {exc}") from None
    return check_key(public, path_or_key)


def loose_permissions(path: str | Path) -> bool:
    """True if a secret key file may be read by its group or others."""
    return bool(os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))
