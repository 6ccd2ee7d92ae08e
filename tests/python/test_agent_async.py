"""AsyncAgent: await send(...), async for msg in agent, async handlers; one shared core."""

from __future__ import annotations

import asyncio

import pytest

from agentmesh import Agent, LocalHub
from agentmesh.agent import AsyncAgent
from agentmesh.agent_core import _AgentCore
from agentmesh.errors import ReplayError


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_async_send_with_sync_handler_has_run_when_send_returns():
    async def main():
        hub = LocalHub()
        alice = AsyncAgent("alice", hub=hub)
        bob = AsyncAgent("bob", hub=hub)
        got = []
        bob.on_message(lambda m: got.append(m.text))
        env = await alice.send("bob", text="hello", extra=1)
        assert got == ["hello"]
        assert env.sender == "alice"
        await alice.send_payload("bob", {"text": "raw"})
        assert got == ["hello", "raw"]
        await alice.close()
        await bob.close()

    run(main())


def test_async_for_yields_messages_in_order():
    async def main():
        hub = LocalHub()
        alice = AsyncAgent("alice", hub=hub)
        bob = AsyncAgent("bob", hub=hub)
        for i in range(5):
            await alice.send("bob", text=f"m{i}")
        seen = []
        async for msg in bob:
            seen.append(msg.text)
            if len(seen) == 5:
                break
        assert seen == [f"m{i}" for i in range(5)]

    run(main())


def test_async_for_waits_for_messages_and_ends_on_close():
    async def main():
        hub = LocalHub()
        alice = AsyncAgent("alice", hub=hub)
        bob = AsyncAgent("bob", hub=hub)
        seen = []

        async def consume():
            async for msg in bob:
                seen.append(msg.text)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        await alice.send("bob", text="late")
        await asyncio.sleep(0.01)
        assert seen == ["late"]
        await bob.close()
        await asyncio.wait_for(task, 5)
        assert seen == ["late"]

    run(main())


def test_next_message_with_timeout():
    async def main():
        hub = LocalHub()
        alice = AsyncAgent("alice", hub=hub)
        bob = AsyncAgent("bob", hub=hub)
        with pytest.raises(asyncio.TimeoutError):
            await bob.next_message(timeout=0.05)
        await alice.send("bob", text="x")
        msg = await bob.next_message(timeout=1)
        assert msg.text == "x" and msg.sender == "alice"

    run(main())


def test_async_handlers_run_in_registration_order():
    async def main():
        hub = LocalHub()
        alice = AsyncAgent("alice", hub=hub)
        bob = AsyncAgent("bob", hub=hub)
        calls = []
        done = asyncio.Event()

        @bob.on_message
        async def first(msg):
            await asyncio.sleep(0.01)
            calls.append(("first", msg.text))

        @bob.on_message
        def second(msg):
            calls.append(("second", msg.text))

        @bob.on_message
        async def broken(msg):
            raise RuntimeError("async handler bug")

        @bob.on_message
        async def last(msg):
            calls.append(("last", msg.text))
            if msg.text == "b":
                done.set()

        await alice.send("bob", text="a")
        await alice.send("bob", text="b")
        await asyncio.wait_for(done.wait(), 5)
        assert calls == [
            ("first", "a"),
            ("second", "a"),
            ("last", "a"),
            ("first", "b"),
            ("second", "b"),
            ("last", "b"),
        ]
        assert bob.status()["handler_errors"] == 2

    run(main())


def test_handlers_and_iteration_together():
    async def main():
        hub = LocalHub()
        alice = AsyncAgent("alice", hub=hub)
        bob = AsyncAgent("bob", hub=hub)
        handled = []
        bob.on_message(lambda m: handled.append(m.text))
        it = bob.__aiter__()  # iteration started: messages also go to the inbox
        await alice.send("bob", text="both")
        msg = await it.__anext__()
        assert msg.text == "both" and handled == ["both"]

    run(main())


def test_sync_and_async_agents_talk_to_each_other():
    async def main():
        hub = LocalHub()
        alice = Agent("alice", hub=hub)
        bob = AsyncAgent("bob", hub=hub)

        @bob.on_message
        async def echo(msg):
            await bob.send(msg.sender, text=msg.text.upper())

        got = []
        alice.on_message(lambda m: got.append(m.text))
        alice.send("bob", text="shout")
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == ["SHOUT"]

    run(main())


def test_async_errors_and_context_manager():
    async def main():
        hub = LocalHub()
        async with AsyncAgent("alice", hub=hub) as alice, AsyncAgent("bob", hub=hub) as bob:
            errors = []
            bob.on_error(errors.append)
            bob.on_message(lambda m: None)
            env = await alice.send("bob", text="x")
            await bob.receive(env)
            assert len(errors) == 1 and isinstance(errors[0], ReplayError)
            assert await alice.list_peers() == ["bob"]
            assert await alice.connect("bob") == bob.fingerprint
            with pytest.raises(ValueError, match="not found on hub"):
                await alice.send("nobody", text="x")
            await alice.flush()
            status = bob.status()
            assert status["received"] == 1 and status["rejected"] == 1
        assert alice.closed and bob.closed

    run(main())


def test_sync_and_async_share_one_core_implementation():
    assert isinstance(Agent("a")._core, _AgentCore)
    assert isinstance(AsyncAgent("b")._core, _AgentCore)
    # neither driver re-implements the crypto: no seal/unseal calls of their own
    import inspect

    from agentmesh import agent as mod

    for cls in (mod.Agent, mod.AsyncAgent):
        src = inspect.getsource(cls)
        assert ".seal(" not in src and ".unseal(" not in src


def test_async_agent_created_outside_a_loop():
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    bob = AsyncAgent("bob", hub=hub)
    alice.send("bob", text="before any loop")

    async def main():
        return await bob.next_message(timeout=1)

    assert run(main()).text == "before any loop"


def test_full_inbox_drops_oldest_on_the_loop_thread_and_waits_elsewhere():
    import threading

    async def main():
        hub = LocalHub()
        alice = Agent("alice", hub=hub)
        bob = AsyncAgent("bob", hub=hub, inbox_size=3)
        for i in range(5):  # same thread as the loop: cannot wait, drops the oldest
            alice.send("bob", text=f"m{i}")
        assert bob.status()["dropped"] == 2
        assert [(await bob.next_message(1)).text for _ in range(3)] == ["m2", "m3", "m4"]

        sent = []

        def producer():  # another thread: waits for room instead of dropping
            for i in range(6):
                alice.send("bob", text=f"t{i}")
                sent.append(i)

        thread = threading.Thread(target=producer)
        thread.start()
        await asyncio.sleep(0.2)
        assert len(sent) == 3  # blocked on the fourth
        got = [(await bob.next_message(5)).text for _ in range(6)]
        await asyncio.to_thread(thread.join, 5)
        assert got == [f"t{i}" for i in range(6)]
        assert bob.status()["dropped"] == 2

    run(main())
