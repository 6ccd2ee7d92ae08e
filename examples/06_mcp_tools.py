"""An agent serves two MCP tools; another agent lists and calls them through a network hub.

The MCP server is an ordinary one from the official SDK (``MCPServer``). ``agentmesh.mcp.serve``
makes it callable through the "toolsmith" agent by the agents it allows; the "planner" agent
opens an MCP client session to it with ``agentmesh.mcp.connect``. Every JSON-RPC message
travels as one end-to-end encrypted agentmesh message: the hub (started here, on 127.0.0.1)
relays and stores envelopes it cannot read, and "intruder", not on the allow-list, is refused.

Needs the MCP SDK: pip install 'agentmesh[mcp]'.

Run: python examples/06_mcp_tools.py
"""

import asyncio
import sys
import tempfile
from pathlib import Path

from agentmesh import Agent, NetworkHub, NetworkHubServer

try:
    from mcp.server.mcpserver import MCPServer
    from mcp.shared.exceptions import MCPError

    import agentmesh.mcp
except ImportError as exc:
    sys.exit(f"this example needs the MCP SDK: pip install 'agentmesh[mcp]' ({exc})")

tools = MCPServer("toolsmith")


@tools.tool()
def word_count(text: str) -> int:
    """How many words ``text`` has."""
    return len(text.split())


@tools.tool()
def celsius_to_fahrenheit(celsius: float) -> float:
    """A temperature in degrees Celsius, in degrees Fahrenheit."""
    return round(celsius * 9 / 5 + 32, 2)


def text_of(result) -> str:
    return "".join(getattr(part, "text", "") for part in result.content)


async def plan(planner: Agent, intruder: Agent) -> None:
    async with agentmesh.mcp.connect(planner, "toolsmith", timeout=20) as session:
        listed = await session.list_tools()
        for tool in listed.tools:
            print(f"planner sees tool {tool.name!r}: {tool.description}")
        words = await session.call_tool("word_count", {"text": "agents call agents' tools"})
        print(f"word_count('agents call agents' tools') = {text_of(words)}")
        degrees = await session.call_tool("celsius_to_fahrenheit", {"celsius": 21.5})
        print(f"celsius_to_fahrenheit(21.5) = {text_of(degrees)}")
    try:
        async with agentmesh.mcp.connect(intruder, "toolsmith", timeout=20):
            print("intruder got in (it should not have)")
            sys.exit(1)
    except MCPError as refused:
        print(f"intruder refused: {refused.error.message}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="agentmesh-example-") as tmp:
        server = NetworkHubServer(port=0, store_path=str(Path(tmp) / "hub.sqlite3"))
        server.start(block=False)
        try:
            print(f"network hub on 127.0.0.1:{server.port}")
            hub = NetworkHub("127.0.0.1", server.port)
            toolsmith = Agent("toolsmith", hub=hub)
            planner = Agent("planner", hub=hub)
            intruder = Agent("intruder", hub=hub)
            with agentmesh.mcp.serve(toolsmith, tools, allow=["planner"]):
                asyncio.run(plan(planner, intruder))
            for agent in (planner, intruder, toolsmith):
                agent.close()
            hub.close()
        finally:
            server.stop()
    print("done: every tool call was end-to-end encrypted; the hub saw only envelopes")


if __name__ == "__main__":
    main()
