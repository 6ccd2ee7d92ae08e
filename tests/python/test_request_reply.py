"""Request and reply: ``agent.request(...)`` returns the reply ``msg.reply(...)`` sent, on
every hub, sync and async; correlation lives inside the encrypted payload and only the asked
peer can answer; timeouts, remote errors, late replies, handlers that wait for replies."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from agentmesh import (
    Agent,
    AsyncAgent,
    LateReplyError,
    RemoteError,
    ReplyTimeoutError,
)
from agentmesh.hubs import NetworkHub
from agentmesh.message import META_KEY
from agentmesh.testing import HostileHub, HubProcess, Rule


@pytest.fixture
def network_hub(tmp_path: Path):
    with HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start() as proc:
        yield NetworkHub("127.0.0.1", proc.port)


@pytest.fixture
def hub(every_hub):
    return every_hub


def echo_agent(hub, agent_id: str = "bob") -> Agent:
    agent = Agent(agent_id, hub=hub)

    @agent.on_message
    def answer(msg) -> None:
        if msg.text == "fail":
            msg.reply_error("cannot do that")
        elif msg.text != "ignore":
            msg.reply(text=msg.text.upper(), asked=msg.payload.get("n"))

    return agent


# -- the basics, on every hub -------------------------------------------------------------------


def test_a_request_returns_the_reply(hub) -> None:
    alice, bob = Agent("alice", hub=hub), echo_agent(hub)
    try:
        reply = alice.request("bob", text="hello", n=7, timeout=10)
        assert reply.text == "HELLO" and reply.payload == {"text": "HELLO", "asked": 7}
        assert reply.sender == "bob" and reply.recipient == "alice"
        assert reply.reply_to is not None and META_KEY not in reply.payload
        again = alice.request_payload("bob", {"text": "x", "n": 1}, timeout=10)
        assert again.text == "X" and again.reply_to != reply.reply_to
    finally:
        alice.close()
        bob.close()


def test_reply_to_names_the_request_and_the_responder_sees_a_request(hub) -> None:
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    seen = []

    @bob.on_message
    def answer(msg) -> None:
        seen.append((msg.id, msg.is_request, msg.reply_to))
        msg.reply(text="ok")

    try:
        reply = alice.request("bob", text="q", timeout=10)
        assert seen == [(reply.reply_to, True, None)]
        alice.send("bob", text="plain")  # not a request: answered, but nobody waits
        alice.flush(10)
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen[1][1] is False
    finally:
        alice.close()
        bob.close()


def test_reply_error_raises_remote_error_at_the_caller(hub) -> None:
    alice, bob = Agent("alice", hub=hub), echo_agent(hub)
    try:
        with pytest.raises(RemoteError, match="cannot do that") as caught:
            alice.request("bob", text="fail", timeout=10)
        assert caught.value.peer == "bob" and caught.value.reason == "cannot do that"
    finally:
        alice.close()
        bob.close()


def test_no_reply_in_time_is_a_timeout_naming_the_peer_and_a_late_reply_is_reported(hub):
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    kept = []
    bob.on_message(kept.append)  # answers later, by hand
    errors: list[BaseException] = []
    alice.on_error(errors.append)
    handled = []
    alice.on_message(handled.append)
    try:
        with pytest.raises(ReplyTimeoutError, match=r"'bob' within 0.3 s") as caught:
            alice.request("bob", text="slow", timeout=0.3)
        assert isinstance(caught.value, TimeoutError)
        deadline = time.monotonic() + 10
        while not kept and time.monotonic() < deadline:
            time.sleep(0.01)
        kept[0].reply(text="too late")
        bob.flush(10)
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(errors) == 1 and isinstance(errors[0], LateReplyError)
        assert errors[0].sender == "bob" and errors[0].message.text == "too late"
        assert handled == []  # never to the handlers, never to a caller that gave up
    finally:
        alice.close()
        bob.close()


def test_a_message_may_be_answered_later_from_another_thread(hub) -> None:
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)

    @bob.on_message
    def later(msg) -> None:
        threading.Timer(0.2, lambda: msg.reply(text="done later")).start()

    try:
        assert alice.request("bob", text="take your time", timeout=10).text == "done later"
    finally:
        alice.close()
        bob.close()


def test_bad_requests_fail_clearly(hub) -> None:
    alice, bob = Agent("alice", hub=hub), echo_agent(hub)
    try:
        with pytest.raises(ValueError, match="Peer 'ghost' not found on hub"):
            alice.request("ghost", text="anyone?", timeout=5)
        with pytest.raises(ValueError, match="reserved"):
            alice.request_payload("bob", {META_KEY: {"reply_to": "x"}}, timeout=5)
        with pytest.raises(ValueError, match="reserved"):
            alice.send("bob", text="x", **{META_KEY: {"reply_to": "x"}})
        with pytest.raises(TypeError):
            alice.request_payload("bob", "not a dict", timeout=5)  # type: ignore[arg-type]
    finally:
        alice.close()
        bob.close()
    with pytest.raises(RuntimeError, match="closed"):
        alice.request("bob", text="after close", timeout=5)


def test_many_requests_at_once_from_many_threads(hub) -> None:
    alice, bob = Agent("alice", hub=hub), echo_agent(hub)
    answers: list[bool] = []
    lock = threading.Lock()

    def ask(k: int) -> None:
        for i in range(25):
            reply = alice.request("bob", text=f"t{k}-{i}", n=i, timeout=30)
            with lock:
                answers.append(reply.text == f"T{k}-{i}" and reply.payload["asked"] == i)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(answers) == 200 and all(answers)
    finally:
        alice.close()
        bob.close()


# -- handlers that wait for replies -------------------------------------------------------------


def test_a_handler_may_ask_other_agents_before_it_answers(hub) -> None:
    """A coordinator's handler asks two workers and answers with their results: the workers'
    replies reach the coordinator while its handler waits (no deadlock, no timeout)."""
    client, coordinator = Agent("client", hub=hub), Agent("coordinator", hub=hub)
    workers = [echo_agent(hub, f"w{i}") for i in range(2)]

    @coordinator.on_message
    def coordinate(msg) -> None:
        parts = [coordinator.request(w.agent_id, text=msg.text, timeout=10).text for w in workers]
        msg.reply(text="+".join(parts))

    try:
        started = time.monotonic()
        for i in range(3):
            assert client.request("coordinator", text=f"job{i}", timeout=15).text == (
                f"JOB{i}+JOB{i}"
            )
        assert time.monotonic() - started < 10
    finally:
        for agent in (client, coordinator, *workers):
            agent.close()


def test_a_persistent_coordinator_waits_for_replies_in_its_handler(network_hub, tmp_path) -> None:
    client = Agent("client", hub=network_hub)
    coordinator = Agent("coordinator", hub=network_hub, keypair_path=tmp_path / "coord.key")
    worker = echo_agent(network_hub, "worker")

    @coordinator.on_message
    def coordinate(msg) -> None:
        msg.reply(text="got " + coordinator.request("worker", text=msg.text, timeout=10).text)

    try:
        for i in range(5):
            assert client.request("coordinator", text=f"t{i}", timeout=15).text == f"got T{i}"
    finally:
        for agent in (client, coordinator, worker):
            agent.close()


def test_async_agents_request_and_await_replies_in_async_handlers(hub) -> None:
    async def main() -> None:
        client = AsyncAgent("client", hub=hub)
        coordinator = AsyncAgent("coordinator", hub=hub)
        worker = AsyncAgent("worker", hub=hub)

        @worker.on_message
        async def work(msg) -> None:
            msg.reply(text=msg.text[::-1])

        @coordinator.on_message
        async def coordinate(msg) -> None:
            reply = await coordinator.request("worker", text=msg.text, timeout=10)
            msg.reply(text=f"<{reply.text}>")

        try:
            replies = await asyncio.gather(
                *(client.request("coordinator", text=f"abc{i}", timeout=15) for i in range(5))
            )
            assert sorted(r.text for r in replies) == sorted(f"<{i}cba>" for i in range(5))
            with pytest.raises(ReplyTimeoutError):
                await client.request("nobody-answers", text="x", timeout=0.2)
        finally:
            for agent in (client, coordinator, worker):
                await agent.close()

    silent = Agent("nobody-answers", hub=hub)
    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        silent.close()


# -- what a hostile hub or another agent can do -------------------------------------------------


def test_only_the_asked_peer_can_answer_a_request(hub) -> None:
    alice, bob, mallory = Agent("alice", hub=hub), Agent("bob", hub=hub), Agent("mallory", hub=hub)
    requests = []
    bob.on_message(requests.append)  # bob never answers
    try:
        result: dict[str, object] = {}

        def ask() -> None:
            try:
                result["reply"] = alice.request("bob", text="secret question", timeout=2)
            except ReplyTimeoutError as exc:
                result["error"] = exc

        asker = threading.Thread(target=ask)
        asker.start()
        deadline = time.monotonic() + 5
        while not requests and time.monotonic() < deadline:
            time.sleep(0.01)
        # mallory learns the request's id (say, from bob) and answers in bob's place (with a
        # client of its own: the API refuses the reserved key in a payload)
        forged = {"text": "forged", META_KEY: {"reply_to": requests[0].id}}
        mallory._core.send_payload("alice", forged)
        asker.join(10)
        assert isinstance(result.get("error"), ReplyTimeoutError)
    finally:
        for agent in (alice, bob, mallory):
            agent.close()


def test_a_duplicated_request_is_answered_once_and_a_replayed_reply_resolves_nothing() -> None:
    hub = HostileHub(rules=[Rule("duplicate")])
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    answered = []

    @bob.on_message
    def answer(msg) -> None:
        answered.append(msg.id)
        msg.reply(text="once")

    replays: list[BaseException] = []
    alice.on_error(replays.append)
    try:
        assert alice.request("bob", text="q1", timeout=5).text == "once"
        assert alice.request("bob", text="q2", timeout=5).text == "once"
        assert len(answered) == 2  # each request's duplicate was refused as a replay
        hub.replay_all()  # every reply again: refused, and no waiting call to resolve
        assert replays and all("replay" in type(e).__name__.lower() for e in replays)
    finally:
        alice.close()
        bob.close()


def test_an_offline_responder_answers_when_it_comes_back(network_hub, tmp_path) -> None:
    key = tmp_path / "bob.key"
    bob = Agent("bob", hub=network_hub, keypair_path=key)
    alice = Agent("alice", hub=network_hub)
    alice.connect("bob")
    bob.close()
    result: dict[str, object] = {}

    def ask() -> None:
        result["reply"] = alice.request("bob", text="are you there?", timeout=30)

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.5)  # the request waits at the hub
    back = echo_agent_from(network_hub, key)
    try:
        asker.join(30)
        assert getattr(result.get("reply"), "text", None) == "ARE YOU THERE?"
    finally:
        back.close()
        alice.close()


def echo_agent_from(hub, key: Path) -> Agent:
    agent = Agent("bob", hub=hub, keypair_path=key)
    agent.on_message(lambda msg: msg.reply(text=msg.text.upper()))
    return agent


def test_an_agent_without_handlers_acknowledges_its_replies(network_hub) -> None:
    """A caller with no message handler of its own: its replies are acknowledged as they are
    taken, or the hub's delivery window (1,024 unacknowledged) would fill and stop them."""
    from agentmesh.hub.limits import HubLimits

    alice, bob = Agent("alice", hub=network_hub), echo_agent(network_hub)
    try:
        for i in range(HubLimits().delivery_window + 100):
            assert alice.request("bob", text="q", n=i, timeout=10).payload["asked"] == i
    finally:
        alice.close()
        bob.close()


def test_messages_of_an_intercepted_kind_skip_the_handlers(hub) -> None:
    """How a protocol carried between agents (MCP) keeps its traffic: a kind with an
    interceptor goes to it, a kind nobody takes is dropped, plain messages reach handlers."""
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    taken: list[str] = []
    handled: list[str] = []
    bob._core.intercept("probe", lambda msg: taken.append(msg.text))
    bob.on_message(lambda msg: handled.append(msg.text))
    try:
        alice._core.send_kind("bob", "probe", {"text": "for the interceptor"})
        alice._core.send_kind("bob", "nobody", {"text": "dropped"})
        alice.send("bob", text="for the handlers")
        alice.flush(10)
        deadline = time.monotonic() + 10
        while not handled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert taken == ["for the interceptor"] and handled == ["for the handlers"]
    finally:
        alice.close()
        bob.close()


def test_a_requester_without_handlers_leaves_its_backlog_readable(network_hub, tmp_path) -> None:
    """bob's identity has messages queued for it; a bob with no handler (a CLI `request`)
    asks carol a question: waiting for the reply, it reads the backlog too, but never saves
    those sessions' advance before handlers ran, so the listener that comes next reads every
    message (saved, they would be refused as replays)."""
    key = tmp_path / "bob.key"
    Agent("bob", hub=network_hub, keypair_path=key).close()  # known to the hub
    alice, carol = Agent("alice", hub=network_hub), echo_agent(network_hub, "carol")
    for i in range(3):
        alice.send("bob", text=f"backlog {i}")
    alice.flush(10)
    asker = Agent("bob", hub=network_hub, keypair_path=key)
    assert asker.request("carol", text="q", timeout=10).text == "Q"
    time.sleep(0.3)  # (the backlog arrived meanwhile)
    asker.close()
    listener = Agent("bob", hub=network_hub, keypair_path=key)
    got: list[str] = []
    errors: list[BaseException] = []
    listener.on_error(errors.append)
    listener.on_message(lambda msg: got.append(msg.text))
    try:
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [f"backlog {i}" for i in range(3)] and errors == []
    finally:
        for agent in (listener, alice, carol):
            agent.close()
