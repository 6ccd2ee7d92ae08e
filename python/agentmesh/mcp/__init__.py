"""MCP between agents: serve any MCP server through an agent, call it from another agent.

Each JSON-RPC message travels as one end-to-end encrypted agentmesh message, so the hub sees
only envelopes, and the serving agent decides which agents may call it::

    import asyncio

    from mcp.server.mcpserver import MCPServer

    import agentmesh.mcp
    from agentmesh import Agent, LocalHub

    app = MCPServer("tools")

    @app.tool()
    def add(a: int, b: int) -> int:
        return a + b

    hub = LocalHub()
    tools, alice = Agent("tools", hub=hub), Agent("alice", hub=hub)

    async def main():
        async with agentmesh.mcp.connect(alice, "tools") as session:
            result = await session.call_tool("add", {"a": 1, "b": 2})
            print(result.content[0].text)  # 3

    with agentmesh.mcp.serve(tools, app, allow=["alice"]):
        asyncio.run(main())

Needs the official MCP SDK: ``pip install 'agentmesh[mcp]'``.
"""

from __future__ import annotations

try:
    import mcp as _sdk  # noqa: F401  (the official SDK; this package is agentmesh.mcp)
    import mcp_types as _sdk_types  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "agentmesh.mcp needs the official MCP SDK (mcp 2.x): pip install 'agentmesh[mcp]'"
    ) from exc

from ._wire import KIND
from .access import AccessPolicy, any_agent
from .client import DEFAULT_TIMEOUT, AgentTransport, connect
from .server import MAX_SESSIONS_PER_AGENT, MCPService, caller, serve

__all__ = [
    "DEFAULT_TIMEOUT",
    "KIND",
    "MAX_SESSIONS_PER_AGENT",
    "AccessPolicy",
    "AgentTransport",
    "MCPService",
    "any_agent",
    "caller",
    "connect",
    "serve",
]
