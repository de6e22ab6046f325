"""``acl.toml``: who may connect (principals: a name and a CURVE public key) and what each
may do (rules after Kafka's ACLs and NATS's per-user allow/deny).

    [[principal]]
    name = "orders-service"
    key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"   # its public key, Z85

    [[rule]]
    principal = "orders-service"      # a principal's name, or "*" for every principal
    resource = "topic"                # topic | group | cluster
    name = "orders."                  # ignored for cluster; prefix "" covers every name
    match = "prefix"                  # literal (default) | prefix
    ops = ["write"]                   # read | write | admin
    effect = "allow"                  # allow (default) | deny

A request is allowed when some allow rule matches it and no deny rule does (deny wins).
With at least one rule the file is enforced: everything not allowed is denied.  A file
with principals only is an allow-list: it decides who connects, not what they may do.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from brokerd.security.keys import KeyFileError, check_key

Operation = Literal["read", "write", "admin"]
Resource = Literal["topic", "group", "cluster"]
CACHE_LIMIT = 10_000  # decisions remembered between reloads (then forgotten at once)


class AclError(ValueError):
    """``acl.toml`` is unusable; the message names the entry and says why."""


class Principal(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    key: str


class Rule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    principal: str
    resource: Resource
    ops: list[Operation]
    name: str = ""
    match: Literal["literal", "prefix"] = "literal"
    effect: Literal["allow", "deny"] = "allow"

    def covers(self, op: str, resource: str, name: str) -> bool:
        if op not in self.ops or resource != self.resource:
            return False
        if resource == "cluster":
            return True
        return name.startswith(self.name) if self.match == "prefix" else name == self.name


class _File(msgspec.Struct, forbid_unknown_fields=True):
    principal: list[Principal] = []
    rule: list[Rule] = []


class Acl:
    """The parsed file: the allow-list (key -> name) and the rules.  Immutable once built,
    so the ZAP thread may read one while the loop builds its successor on SIGHUP."""

    def __init__(self, principals: list[Principal], rules: list[Rule]) -> None:
        self.names = {check_key(p.key, f"principal {p.name!r}"): p.name for p in principals}
        self.principals = frozenset(self.names.values())
        self.rules: dict[str, list[Rule]] = {}
        for rule in rules:
            self.rules.setdefault(rule.principal, []).append(rule)
        self.enforced = bool(rules)
        self._decided: dict[tuple[str, str, str, str], bool] = {}

    def principal_of(self, public_key: bytes) -> str | None:
        """The name the allow-list gives a Z85 public key (None: not allowed to connect)."""
        return self.names.get(public_key)

    def allows(self, principal: str, op: str, resource: str, name: str) -> bool:
        """Whether ``principal`` may ``op`` the ``resource`` called ``name`` (remembered)."""
        key = (principal, op, resource, name)
        decided = self._decided.get(key)
        if decided is None:
            if len(self._decided) >= CACHE_LIMIT:
                self._decided.clear()
            decided = self._decided[key] = self._decide(principal, op, resource, name)
        return decided

    def _decide(self, principal: str, op: str, resource: str, name: str) -> bool:
        if op == "describe":  # implied by read or write, as Kafka's Describe is
            return any(self._decide(principal, o, resource, name) for o in ("read", "write"))
        allowed = False
        for who in (principal, "*"):
            for rule in self.rules.get(who, ()):
                if rule.covers(op, resource, name):
                    if rule.effect == "deny":
                        return False
                    allowed = True
        return allowed


def load_acl(path: str | Path) -> Acl:
    """Read and check ``acl.toml``; AclError naming the problem."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AclError(f"cannot read the ACL file {path}: {exc}") from None
    try:
        parsed = msgspec.convert(raw, _File)
    except msgspec.ValidationError as exc:
        raise AclError(f"{path}: {exc}") from None
    names = [p.name for p in parsed.principal]
    if len(set(names)) != len(names):
        raise AclError(f"{path}: two principals share a name")
    for rule in parsed.rule:
        if rule.principal != "*" and rule.principal not in names:
            raise AclError(f"{path}: a rule names principal {rule.principal!r}, which no "
                           "[[principal]] entry defines")
        if rule.resource != "cluster" and not rule.name and rule.match == "literal":
            raise AclError(f"{path}: a {rule.resource} rule for {rule.principal!r} needs a "
                           "name (a literal name, or a prefix with match = \"prefix\"; the "
                           "empty prefix covers every name)")
        if not rule.ops:
            raise AclError(f"{path}: a rule for {rule.principal!r} lists no ops")
    try:
        acl = Acl(parsed.principal, parsed.rule)
    except KeyFileError as exc:
        raise AclError(f"{path}: {exc}") from None
    if len(acl.names) != len(parsed.principal):
        raise AclError(f"{path}: two principals share a key")
    if not acl.names:
        raise AclError(f"{path}: no [[principal]] entries: nobody could connect")
    return acl
