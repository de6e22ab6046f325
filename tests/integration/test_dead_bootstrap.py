"""A bootstrap list whose first broker is down: requests go to the live one at once
instead of waiting out a timeout at the dead one (ZeroMQ retries a refused connection in
silence)."""

from __future__ import annotations

import time

import zmq

from brokerd import protocol as p
from runtime.routing import Router, call_any, refusing
from tests.helpers import BrokerProcess, free_port


def test_a_refused_endpoint_is_asked_last_and_costs_no_timeout(broker: BrokerProcess) -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    assert refusing(dead) and not refusing(broker.api)
    assert not refusing("ipc:///nowhere")  # only TCP is looked at

    started = time.monotonic()
    reply = call_any([dead, broker.api], zmq.Context.instance(), p.Ping(), timeout_s=5.0)
    assert isinstance(reply, p.PingReply)
    assert time.monotonic() - started < 1.0  # not the 5 s timeout at the dead one

    router = Router(f"{dead},{broker.api}", timeout_s=5.0)
    try:
        started = time.monotonic()
        assert isinstance(router.call(p.Ping()), p.PingReply)  # a request any broker answers
        assert time.monotonic() - started < 1.0
    finally:
        router.close()
