"""acl.toml parsing and matching, without a broker (brokerd/security/acl.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from brokerd import protocol as p
from brokerd.security.acl import AclError, load_acl
from brokerd.security.checks import needs
from brokerd.security.denials import Denials

KEY_A = zmq.curve_keypair()[0].decode()
KEY_B = zmq.curve_keypair()[0].decode()


def acl_file(tmp_path: Path, rules: str, principals: str = "") -> Path:
    path = tmp_path / "acl.toml"
    path.write_text(principals or f'[[principal]]\nname = "a"\nkey = "{KEY_A}"\n'
                    f'[[principal]]\nname = "b"\nkey = "{KEY_B}"\n' + rules)
    return path


def test_prefix_matches_names_that_start_with_it_and_literal_only_itself(tmp_path: Path) -> None:
    acl = load_acl(acl_file(tmp_path, '''
[[rule]]
principal = "a"
resource = "topic"
name = "orders."
match = "prefix"
ops = ["write"]
[[rule]]
principal = "a"
resource = "group"
name = "g1"
ops = ["read"]
'''))
    assert acl.enforced
    assert acl.allows("a", "write", "topic", "orders.eu")
    assert not acl.allows("a", "write", "topic", "ordersx")
    assert not acl.allows("a", "read", "topic", "orders.eu")  # the op must match too
    assert acl.allows("a", "describe", "topic", "orders.eu")  # write implies describe
    assert not acl.allows("a", "describe", "topic", "ordersx")
    assert acl.allows("a", "read", "group", "g1")
    assert not acl.allows("a", "read", "group", "g10")  # literal: not a prefix
    assert not acl.allows("b", "write", "topic", "orders.eu")  # another principal


def test_deny_wins_and_star_rules_apply_to_everyone(tmp_path: Path) -> None:
    acl = load_acl(acl_file(tmp_path, '''
[[rule]]
principal = "*"
resource = "topic"
name = ""
match = "prefix"
ops = ["read"]
[[rule]]
principal = "b"
resource = "topic"
name = "secret."
match = "prefix"
ops = ["read"]
effect = "deny"
'''))
    assert acl.allows("a", "read", "topic", "secret.x")
    assert acl.allows("b", "read", "topic", "public")
    assert not acl.allows("b", "read", "topic", "secret.x")


def test_principals_alone_are_an_allow_list_not_rules(tmp_path: Path) -> None:
    acl = load_acl(acl_file(tmp_path, ""))
    assert not acl.enforced
    assert acl.principal_of(KEY_A.encode()) == "a"
    assert acl.principal_of(zmq.curve_keypair()[0]) is None


@pytest.mark.parametrize(("text", "says"), [
    ('[[rule]]\nprincipal = "zed"\nresource = "topic"\nname = "t"\nops = ["read"]\n',
     "no [[principal]] entry"),
    ('[[rule]]\nprincipal = "a"\nresource = "topic"\nops = ["read"]\n', "needs a name"),
    ('[[rule]]\nprincipal = "a"\nresource = "topic"\nname = "t"\nops = ["fly"]\n', "fly"),
    ('[[rule]]\nprincipal = "a"\nresource = "queue"\nname = "t"\nops = ["read"]\n', "queue"),
    ("[[principal]]\nname = 'c'\nkey = 'short'\n", "40 Z85 characters"),
    ("not toml [", "cannot read"),
])
def test_a_bad_acl_file_is_one_clear_error(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(AclError) as caught:
        load_acl(acl_file(tmp_path, text))
    assert says in str(caught.value)


def test_each_op_needs_what_the_issue_lists() -> None:
    raw = p.Produce(topic="t", records=b"\x90")  # type: ignore[arg-type]
    assert needs(raw) == (("write", "topic", "t"),)
    assert needs(p.Fetch(topic="t", partition=0, offset=0)) == (("read", "topic", "t"),)
    assert ("read", "group", "g") in needs(p.Commit(group="g", offsets=[("t", 0, 1)]))
    assert needs(p.Poll(group="g", member_id="m")) == (("read", "group", "g"),)
    assert needs(p.FindCoordinator(group="g")) == (("read", "group", "g"),)
    for admin in (p.CreateTopic(topic="t"), p.DeleteTopic(topic="t"),
                  p.CreatePartitions(topic="t", partitions=2), p.DeleteGroup(group="g"),
                  p.ReplicaFetch(topic="t", partition=0, offset=0, replica_id=1,
                                 leader_epoch=0)):
        assert needs(admin) == (("admin", "cluster", ""),)
    assert needs(p.Ping()) == ()
    lookup = p.CreateTopic(topic="t", exist_ok=True)  # a producer learning the partitions
    assert needs(lookup) == (("write", "topic", "t"),)
    assert needs(lookup, auto_create=False) == (("admin", "cluster", ""),)
    assert needs(p.CreateTopic(topic="t", exist_ok=True, partitions=4)) == (
        ("admin", "cluster", ""),)


def test_a_denial_is_logged_once_a_minute_per_principal_op_and_resource() -> None:
    d = Denials()
    assert d.denied("a", "produce", "topic 't'", now=0.0)
    assert not d.denied("a", "produce", "topic 't'", now=59.0)
    assert d.denied("a", "fetch", "topic 't'", now=59.0)
    assert d.denied("a", "produce", "topic 't'", now=60.5)
    assert d.suppressed == 1
