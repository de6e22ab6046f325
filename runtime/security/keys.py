"""CURVE keys for clients and for ``rail keys``.

Files use ZeroMQ's certificate format (what pyzmq's ``zmq.auth`` and czmq read):
``NAME.key`` holds the public key, ``NAME.key_secret`` both keys and is written mode 0600.
A client takes its keys from the environment (or from arguments):

- ``RAIL_CURVE_SERVER_KEY``: the broker's public key, as its 40 Z85 characters or the path
  of its ``.key`` file: the one key a client pins;
- ``RAIL_CURVE_KEY_FILE``: this client's ``NAME.key_secret`` file.

Neither set: plaintext, as before.  One without the other is an error, never a silent
fall-back to plaintext.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import zmq
from zmq.auth import load_certificate
from zmq.utils import z85

from runtime.config import ConfigError

SERVER_KEY_ENV = "RAIL_CURVE_SERVER_KEY"
KEY_FILE_ENV = "RAIL_CURVE_KEY_FILE"
KEYS_DIR_ENV = "RAIL_KEYS_DIR"
SECRET_SUFFIX = ".key_secret"


class KeyConfigError(ConfigError, ValueError):
    """Keys are missing or unusable; the message names the file or variable and the fix
    (a ConfigError, so ``rail`` prints it as one line and exits 78)."""


@dataclass(frozen=True)
class ClientKeys:
    """What a CURVE client needs: the server's public key and its own key pair (Z85)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_key: str, key_file: str) -> ClientKeys:
        public, secret = read_keypair(key_file)
        return cls(public_key(server_key, SERVER_KEY_ENV), public, secret)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ClientKeys | None:
        """Keys named by the environment; None when neither variable is set."""
        source = os.environ if env is None else env
        server, own = source.get(SERVER_KEY_ENV, ""), source.get(KEY_FILE_ENV, "")
        if not server and not own:
            return None
        if not server or not own:
            missing = SERVER_KEY_ENV if not server else KEY_FILE_ENV
            raise KeyConfigError(f"{missing} is not set but {SERVER_KEY_ENV if server else KEY_FILE_ENV}"
                                 " is: a CURVE client needs both (docs/security.md)")
        return cls.from_files(server, own)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client (before it connects)."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def _checked(key: bytes | str, what: str) -> bytes:
    raw = (key.encode() if isinstance(key, str) else key).strip()
    if len(raw) != 40:
        raise KeyConfigError(f"{what}: a CURVE key is 40 Z85 characters, got {len(raw)}")
    try:
        z85.decode(raw)
    except (ValueError, KeyError, IndexError):
        raise KeyConfigError(f"{what}: not a Z85-encoded key") from None
    return raw


def public_key(text_or_path: str, what: str) -> bytes:
    """A public key given as its 40 Z85 characters or as the path of a key file."""
    if len(text_or_path.strip()) == 40 and not os.path.exists(text_or_path):
        return _checked(text_or_path, what)
    try:
        public, _ = load_certificate(text_or_path)
    except (OSError, ValueError) as exc:
        raise KeyConfigError(f"{what}={text_or_path!r} is neither a 40-character key nor "
                             f"a readable key file: {exc}") from None
    return _checked(public, text_or_path)


def read_keypair(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``NAME.key_secret`` file."""
    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyConfigError(f"cannot read the key file {path}: {exc}") from None
    if secret is None:
        raise KeyConfigError(f"{path} holds only a public key: give NAME{SECRET_SUFFIX}")
    return _checked(public, path), _checked(secret, path)


def default_dir() -> Path:
    return Path(os.environ.get(KEYS_DIR_ENV) or "keys")


def new_keypair(directory: Path, name: str) -> tuple[Path, Path, bytes]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (0600, never over an existing file);
    return both paths and the public key."""
    if not name or "/" in name or name.startswith("."):
        raise KeyConfigError(f"bad key name {name!r}: use letters, digits, '-', '_' or '.'")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    public_path, secret_path = directory / f"{name}.key", directory / f"{name}{SECRET_SUFFIX}"
    for path in (public_path, secret_path):
        if path.exists():
            raise KeyConfigError(f"{path} exists: pick another name or remove it first")
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    banner = f"#   Rail CURVE key {name!r}, made {stamp} by rail keys new\n"
    _write(public_path, f"{banner}#   public: give it to whoever checks this key\n"
           f"metadata\n    name = \"{name}\"\ncurve\n    public-key = \"{public.decode()}\"\n",
           0o644)
    _write(secret_path, f"{banner}#   SECRET: keep it to its owner (mode 0600)\nmetadata\n"
           f"    name = \"{name}\"\ncurve\n    public-key = \"{public.decode()}\"\n"
           f"    secret-key = \"{secret.decode()}\"\n", 0o600)
    return public_path, secret_path, public


def _write(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (no moment with a wider one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)  # the umask may have narrowed it; never widened past ``mode``


def list_keys(directory: Path) -> list[tuple[str, str, bool, str]]:
    """(name, public key, has secret, secret file mode) for each key in ``directory``."""
    rows = []
    for path in sorted(directory.glob("*.key")):
        name = path.name[:-len(".key")]
        try:
            public = public_key(str(path), str(path)).decode()
        except KeyConfigError:
            public = "(unreadable)"
        secret = directory / f"{name}{SECRET_SUFFIX}"
        mode = oct(secret.stat().st_mode & 0o777)[2:] if secret.exists() else ""
        rows.append((name, public, secret.exists(), mode))
    return rows
