"""on_message / on_error: registration forms, order, isolation of failing handlers."""

from __future__ import annotations

import logging

import pytest

from agentmesh import Agent, LocalHub


def _pair():
    hub = LocalHub()
    return hub, Agent("alice", hub=hub), Agent("bob", hub=hub)


def test_decorator_call_and_lambda_all_work_and_return_the_handler():
    _hub, alice, bob = _pair()
    calls: list[str] = []

    @bob.on_message
    def decorated(msg):
        calls.append("decorated")

    def plain(msg):
        calls.append("plain")

    assert bob.on_message(plain) is plain
    lam = lambda msg: calls.append("lambda")  # noqa: E731
    assert bob.on_message(lam) is lam
    assert decorated.__name__ == "decorated"  # the decorator returned the function itself

    class Callable_:
        def __call__(self, msg):
            calls.append("object")

    obj = Callable_()
    assert bob.on_message(obj) is obj

    alice.send("bob", text="x")
    assert calls == ["decorated", "plain", "lambda", "object"]


def test_handlers_run_in_registration_order_for_every_message():
    _hub, alice, bob = _pair()
    calls: list[tuple[int, str]] = []
    for i in range(5):
        bob.on_message(lambda msg, i=i: calls.append((i, msg.text)))
    alice.send("bob", text="a")
    alice.send("bob", text="b")
    assert calls == [(i, "a") for i in range(5)] + [(i, "b") for i in range(5)]


def test_a_raising_handler_does_not_stop_the_others(caplog):
    _hub, alice, bob = _pair()
    calls: list[str] = []

    @bob.on_message
    def first(msg):
        calls.append("first")

    @bob.on_message
    def broken(msg):
        raise RuntimeError("handler bug")

    @bob.on_message
    def third(msg):
        calls.append("third")

    with caplog.at_level(logging.ERROR):
        alice.send("bob", text="x")  # the sender is not affected either
        alice.send("bob", text="y")
    assert calls == ["first", "third", "first", "third"]
    assert "handler bug" in caplog.text
    status = bob.status()
    assert status["received"] == 2 and status["rejected"] == 0
    assert status["handler_errors"] == 2


def test_non_callable_handlers_are_refused():
    agent = Agent("alice")
    with pytest.raises(TypeError):
        agent.on_message("not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        agent.on_error(42)  # type: ignore[arg-type]


def test_no_handler_is_fine():
    _hub, alice, bob = _pair()
    alice.send("bob", text="nobody listens")
    assert bob.status()["received"] == 1


def test_on_error_forms_and_order():
    hub, alice, bob = _pair()
    calls: list[str] = []

    @bob.on_error
    def first(exc):
        calls.append("first")

    def second(exc):
        raise RuntimeError("error handler bug")

    assert bob.on_error(second) is second
    bob.on_error(lambda exc: calls.append("third"))
    env = alice.send("bob", text="x")
    hub.deliver(env)  # replay
    assert calls == ["first", "third"]


def test_handler_can_register_another_handler():
    _hub, alice, bob = _pair()
    calls: list[str] = []

    def late(msg):
        calls.append(f"late {msg.text}")

    @bob.on_message
    def first(msg):
        calls.append(f"first {msg.text}")
        if msg.text == "1":
            bob.on_message(late)

    alice.send("bob", text="1")
    alice.send("bob", text="2")
    assert calls == ["first 1", "first 2", "late 2"]
