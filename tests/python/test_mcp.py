"""MCP between agents (``agentmesh.mcp``) with the official SDK: real servers, real agents, on
``LocalHub`` and through a real network hub process on 127.0.0.1 (stopped by its pid)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("mcp", reason="the MCP SDK is not installed: pip install 'agentmesh[mcp]'")

import anyio
from mcp import Client
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCRequest

import agentmesh.mcp as amcp
from agentmesh import Agent, AsyncAgent, LocalHub
from agentmesh.hubs import NetworkHub
from agentmesh.testing import HubProcess

# Secrets that must never show at the hub: a tool's name, its argument, its result.
TOOL_NAME = "vault_lookup_7f3a"
TOOL_ARGUMENT = "argument-plaintext-91c2e"
TOOL_RESULT = "result-plaintext-5d8b0"


def make_app(calls: list[str] | None = None) -> MCPServer:
    app = MCPServer("tools")

    @app.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        if calls is not None:
            calls.append("add")
        return a + b

    @app.tool()
    async def count_to(n: int, ctx: Context) -> str:
        """Report progress n times, log once, then answer."""
        for i in range(n):
            await ctx.report_progress(i + 1, n, f"step {i + 1}")
        with warnings.catch_warnings():  # (logging is deprecated from MCP 2026-07-28 on)
            warnings.simplefilter("ignore")
            await ctx.info(f"counted to {n}")
        return f"counted to {n}"

    @app.tool()
    async def whoami(delay: float = 0.0) -> str:
        """The calling agent, as agentmesh authenticated it."""
        await anyio.sleep(delay)
        return amcp.caller()

    @app.resource("notes://today")
    def today() -> str:
        return "buy milk"

    return app


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
def local():
    hub = LocalHub()
    agents = {name: Agent(name, hub=hub) for name in ("tools", "alice", "bob", "mallory")}
    yield agents
    for agent in agents.values():
        agent.close()


def test_tools_listed_and_called_on_a_local_hub(local):
    calls: list[str] = []
    with amcp.serve(local["tools"], make_app(calls), allow=["alice"]):

        async def main():
            async with amcp.connect(local["alice"], "tools", timeout=10) as session:
                tools = await session.list_tools()
                assert {"add", "count_to", "whoami"} <= {t.name for t in tools.tools}
                result = await session.call_tool("add", {"a": 2, "b": 40})
                assert not result.is_error and text_of(result) == "42"
                assert result.structured_content == {"result": 42}

        run(main())
    assert calls == ["add"]


def test_resources_read(local):
    with amcp.serve(local["tools"], make_app(), allow=["alice"]):

        async def main():
            async with amcp.connect(local["alice"], "tools", timeout=10) as session:
                listed = await session.list_resources()
                assert [str(r.uri) for r in listed.resources] == ["notes://today"]
                read = await session.read_resource("notes://today")
                assert [c.text for c in read.contents] == ["buy milk"]

        run(main())


def test_progress_and_log_notifications_reach_the_caller(local):
    progress: list[tuple[float, float | None, str | None]] = []
    logs: list[str] = []

    async def on_progress(value, total, message):
        progress.append((value, total, message))

    async def on_log(params):
        logs.append(params.data)

    with amcp.serve(local["tools"], make_app(), allow=["alice"]):

        async def main():
            async with amcp.connect(
                local["alice"], "tools", timeout=10, logging_callback=on_log
            ) as session:
                result = await session.call_tool(
                    "count_to", {"n": 3}, progress_callback=on_progress
                )
                assert text_of(result) == "counted to 3"

        run(main())
    assert progress == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert logs == ["counted to 3"]


def test_a_peer_not_on_the_allow_list_is_refused(local):
    calls: list[str] = []
    with amcp.serve(local["tools"], make_app(calls), allow=["alice"]) as service:

        async def main():
            with pytest.raises(MCPError) as refused:
                async with amcp.connect(local["mallory"], "tools", timeout=10):
                    pass
            assert refused.value.code == -32003
            assert "agent 'mallory' is not allowed to call this MCP server" in str(
                refused.value.error.message
            )
            # a hand-made call without the handshake is refused the same way
            async with amcp.AgentTransport(local["mallory"], "tools") as (read, write):
                request = JSONRPCRequest(
                    jsonrpc="2.0", id=7, method="tools/call", params={"name": "add"}
                )
                await write.send(SessionMessage(request))
                with anyio.fail_after(10):
                    answer = await read.receive()
                assert answer.message.id == 7
                assert "not allowed" in answer.message.error.message

        run(main())
        assert service.sessions() == []  # mallory never reached the server
    assert calls == []


def test_access_by_fingerprint_and_by_callable(local):
    alice, bob = local["alice"], local["bob"]
    asked: list[tuple[str, str]] = []

    def only_bob(agent_id: str, fingerprint: str) -> bool:
        asked.append((agent_id, fingerprint))
        return agent_id == "bob"

    async def who(agent) -> str:
        async with amcp.connect(agent, "tools", timeout=10) as session:
            return text_of(await session.call_tool("whoami", {}))

    async def refused(agent) -> bool:
        try:
            await who(agent)
        except MCPError as exc:
            return "not allowed" in exc.error.message
        return False

    with amcp.serve(local["tools"], make_app(), allow_fingerprints=[alice.fingerprint]):
        assert run(who(alice)) == "alice"
        assert run(refused(bob))
    with amcp.serve(local["tools"], make_app(), allow=only_bob):
        assert run(who(bob)) == "bob"
        assert run(refused(alice))
    assert ("bob", bob.fingerprint) in asked and ("alice", alice.fingerprint) in asked

    def broken(agent_id: str, fingerprint: str) -> bool:
        raise KeyError("a policy with a bug")

    with amcp.serve(local["tools"], make_app(), allow=broken):  # admits nobody, says why
        assert run(refused(alice))


def test_serve_checks_its_arguments(local):
    tools = local["tools"]
    with pytest.raises(ValueError, match="say which agents may call"):
        amcp.serve(tools, make_app())
    with pytest.raises(TypeError, match=r"did you mean allow=\['alice'\]"):
        amcp.serve(tools, make_app(), allow="alice")
    with pytest.raises(ValueError, match="is not a fingerprint"):
        amcp.serve(tools, make_app(), allow_fingerprints=["nope"])
    with pytest.raises(TypeError, match="expected an MCP server"):
        amcp.serve(tools, object(), allow=["alice"])
    with pytest.raises(TypeError, match="expected an agentmesh Agent"):
        amcp.serve("tools", make_app(), allow=["alice"])
    with (
        amcp.serve(tools, make_app(), allow=["alice"]),
        pytest.raises(RuntimeError, match="already serves an MCP server"),
    ):
        amcp.serve(tools, make_app(), allow=["alice"])
    amcp.serve(tools, make_app(), allow=["alice"]).close()  # free again once closed


def test_async_agents_and_the_sdk_client_over_an_agent_transport():
    """``AgentTransport`` goes wherever the SDK takes a transport: here ``mcp.Client``."""

    async def main():
        hub = LocalHub()
        async with (
            AsyncAgent("tools", hub=hub) as tools,
            AsyncAgent("alice", hub=hub) as alice,
            amcp.serve(tools, make_app(), allow=["alice"]),
            Client(amcp.AgentTransport(alice, "tools"), mode="legacy") as client,
        ):
            result = await client.call_tool("add", {"a": 1, "b": 2})
            assert text_of(result) == "3"
            assert "add" in {t.name for t in (await client.list_tools()).tools}

    run(main())


def test_two_concurrent_sessions_from_two_peers(local):
    with amcp.serve(local["tools"], make_app(), allow=["alice", "bob"]) as service:
        seen_open: list[list[tuple[str, str]]] = []

        async def caller(name: str) -> list[str]:
            async with amcp.connect(local[name], "tools", timeout=10) as session:
                answers = await asyncio.gather(
                    *(session.call_tool("whoami", {"delay": 0.05}) for _ in range(5))
                )
                seen_open.append(service.sessions())
                return [text_of(a) for a in answers]

        async def main():
            return await asyncio.gather(caller("alice"), caller("bob"))

        alice_answers, bob_answers = run(main())
        assert alice_answers == ["alice"] * 5 and bob_answers == ["bob"] * 5
        assert any({peer for peer, _ in s} == {"alice", "bob"} for s in seen_open)
        deadline = time.monotonic() + 10
        while service.sessions() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.sessions() == []  # each session ended with its caller


def test_unknown_silent_and_closed_servers_give_clear_errors(local):
    alice = local["alice"]

    async def main():
        with pytest.raises(ValueError, match="'ghost' not found"):
            async with amcp.connect(alice, "ghost", timeout=5):
                pass
        # bob runs no MCP at all: the call cannot be answered, the handshake times out
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="agent 'bob' did not answer the MCP handshake"):
            async with amcp.connect(alice, "bob", timeout=1):
                pass
        assert time.monotonic() - started < 5
        with pytest.raises(ValueError, match="cannot be its own MCP client"):
            amcp.AgentTransport(alice, "alice")

    run(main())
    # an agent that once served MCP and stopped answers at once that it serves none
    amcp.serve(local["tools"], make_app(), allow=["alice"]).close()

    async def no_server():
        with pytest.raises(MCPError, match="agent 'tools' serves no MCP server"):
            async with amcp.connect(alice, "tools", timeout=10):
                pass

    run(no_server())


def test_closing_the_service_ends_open_sessions_at_once(local):
    service = amcp.serve(local["tools"], make_app(), allow=["alice"])

    async def main():
        async with amcp.connect(local["alice"], "tools", timeout=30) as session:
            assert text_of(await session.call_tool("add", {"a": 1, "b": 1})) == "2"
            await asyncio.to_thread(service.close)
            started = time.monotonic()
            with pytest.raises(MCPError):
                await session.call_tool("add", {"a": 1, "b": 1})
            assert time.monotonic() - started < 5  # not the 30 s read timeout

    run(main())


def test_import_without_the_sdk_names_the_extra():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["mcp"] = None  # as if the SDK were not installed
        import agentmesh  # works without it
        try:
            import agentmesh.mcp
        except ImportError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "pip install 'agentmesh[mcp]'" in out


SERVING_AGENT = textwrap.dedent(
    f"""
    import sys, threading
    from mcp.server.mcpserver import MCPServer
    import agentmesh.mcp
    from agentmesh import Agent
    from agentmesh.hubs import NetworkHub

    port, key = int(sys.argv[1]), sys.argv[2]
    app = MCPServer("vault")

    @app.tool()
    def {TOOL_NAME}(query: str) -> str:
        return "{TOOL_RESULT}" if query == "{TOOL_ARGUMENT}" else "no"

    hub = NetworkHub("127.0.0.1", port)
    agent = Agent("vault", hub=hub, keypair_path=key)
    with agentmesh.mcp.serve(agent, app, allow=["client"]):
        print("serving", flush=True)
        sys.stdin.readline()  # until the test says stop
    agent.close()
    hub.close()
    print("stopped", flush=True)
    """
)


def test_across_processes_through_a_network_hub_with_no_plaintext_in_its_store(tmp_path):
    store = tmp_path / "hub.sqlite3"
    hub = HubProcess(store, 0, log_level="warning").start()
    server = None
    try:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVING_AGENT, str(hub.port), str(tmp_path / "vault.key")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdin is not None
        assert server.stdout.readline().strip() == "serving"
        net = NetworkHub("127.0.0.1", hub.port)
        client = Agent("client", hub=net)

        async def calls():
            async with amcp.connect(client, "vault", timeout=20) as session:
                tools = await session.list_tools()
                assert [t.name for t in tools.tools] == [TOOL_NAME]
                result = await session.call_tool(TOOL_NAME, {"query": TOOL_ARGUMENT})
                assert text_of(result) == TOOL_RESULT
            # the serving process stops; one more call (a new session) waits, queued at the hub
            server.stdin.write("stop\n")
            server.stdin.flush()
            assert server.stdout.readline().strip() == "stopped"
            async with amcp.AgentTransport(client, "vault") as (read, write):
                params = {"name": TOOL_NAME, "arguments": {"query": TOOL_ARGUMENT}}
                call = JSONRPCRequest(jsonrpc="2.0", id=1, method="tools/call", params=params)
                await write.send(SessionMessage(call))
                with anyio.move_on_after(1) as waited:
                    await read.receive()
                assert waited.cancelled_caught  # nobody answers

        run(calls(), timeout=120)
        client.flush(30)
        client.close()
        net.close()
        assert server.wait(30) == 0
    finally:
        if server is not None and server.poll() is None:
            server.kill()
        hub.stop()
    # The stopped hub's store (a clean stop leaves no WAL) still holds the last call, queued
    # for the stopped agent: it is there, and unreadable.
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        (queued,) = db.execute("SELECT COUNT(*) FROM inbox WHERE recipient = 'vault'").fetchone()
    assert queued >= 1
    stored = b"".join(p.read_bytes() for p in Path(tmp_path).glob("hub.sqlite3*"))
    for secret in (TOOL_NAME, TOOL_ARGUMENT, TOOL_RESULT, "tools/call", "jsonrpc"):
        assert secret.encode() not in stored, secret


def test_many_calls_from_threads_share_nothing_by_accident(local):
    """Sessions opened from several threads (each with its own event loop) stay apart."""
    errors: list[BaseException] = []

    def worker(name: str, k: int) -> None:
        async def main():
            async with amcp.connect(local[name], "tools", timeout=10) as session:
                for i in range(10):
                    result = await session.call_tool("add", {"a": k, "b": i})
                    assert text_of(result) == str(k + i)

        try:
            run(main())
        except BaseException as exc:
            errors.append(exc)

    with amcp.serve(local["tools"], make_app(), allow=["alice", "bob"]):
        threads = [
            threading.Thread(target=worker, args=(name, k))
            for k, name in enumerate(["alice", "bob", "alice", "bob"])
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []


def test_the_module_docstring_example_runs():
    doc = amcp.__doc__ or ""
    body = doc.split("::\n", 1)[1].split("\nNeeds the official MCP SDK", 1)[0]
    code = textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


def test_a_call_that_cannot_be_sent_fails_at_once(local):
    """The calling agent closed under an open session: the call fails with the reason."""
    with amcp.serve(local["tools"], make_app(), allow=["alice"]):

        async def main():
            async with amcp.connect(local["alice"], "tools", timeout=30) as session:
                local["alice"].close()
                started = time.monotonic()
                with pytest.raises(MCPError, match=r"could not send to agent 'tools'.*closed"):
                    await session.call_tool("add", {"a": 1, "b": 1})
                assert time.monotonic() - started < 5

        run(main())


def test_a_caller_past_its_session_limit_loses_its_oldest_session(local):
    alice = local["alice"]
    with amcp.serve(local["tools"], make_app(), allow=["alice"], max_sessions_per_agent=1) as svc:

        async def main():
            async with amcp.connect(alice, "tools", timeout=30) as first:
                assert text_of(await first.call_tool("add", {"a": 1, "b": 1})) == "2"
                async with amcp.connect(alice, "tools", timeout=30) as second:
                    assert text_of(await second.call_tool("add", {"a": 2, "b": 2})) == "4"
                    started = time.monotonic()
                    with pytest.raises(MCPError):
                        await first.call_tool("add", {"a": 1, "b": 1})
                    assert time.monotonic() - started < 5
                    assert [peer for peer, _ in svc.sessions()] == ["alice"]

        run(main())
