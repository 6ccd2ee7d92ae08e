"""One hub address syntax everywhere: ``Agent(hub="host:port")``, ``NetworkHub("host:port")``,
the CLI's ``--hub``, with URL forms for plain and TLS connections; bad addresses are refused up
front, saying what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentmesh import Agent, AsyncAgent
from agentmesh.hub_address import HubAddress, parse_hub_address
from agentmesh.hubs import NetworkHub
from agentmesh.testing import HubProcess


@pytest.mark.parametrize(
    ("text", "host", "port", "tls"),
    [
        ("127.0.0.1:7701", "127.0.0.1", 7701, False),
        ("localhost", "localhost", 7700, False),
        ("[::1]:7702", "::1", 7702, False),
        ("::1", "::1", 7700, False),
        ("agentmesh://hub.example:7703", "hub.example", 7703, False),
        ("agentmesh://hub.example/", "hub.example", 7700, False),
        ("AGENTMESH+TLS://[::1]:7704", "::1", 7704, True),
        ("  127.0.0.1:7705  ", "127.0.0.1", 7705, False),
    ],
)
def test_addresses_parse(text: str, host: str, port: int, tls: bool) -> None:
    assert HubAddress.parse(text) == HubAddress(host, port, tls)
    assert parse_hub_address(text) == (host, port)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("http://127.0.0.1:7700", "scheme 'http' is not a hub's"),
        ("https://hub.example", "scheme 'https' is not a hub's"),
        ("127.0.0.1:http", "is not a number"),
        ("127.0.0.1:70000", "out of range"),
        ("[::1", "missing ']'"),
        ("agentmesh://hub.example:7700/path", "no path"),
        (":7700", "no host"),
        ("my hub:7700", "white space"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        HubAddress.parse(text)


def test_network_hub_takes_an_address_or_a_host_and_a_port() -> None:
    assert (NetworkHub("127.0.0.1:7701").host, NetworkHub("127.0.0.1:7701").port) == (
        "127.0.0.1",
        7701,
    )
    hub = NetworkHub("127.0.0.1", 7702)
    assert (hub.host, hub.port) == ("127.0.0.1", 7702)
    assert NetworkHub("agentmesh+tls://127.0.0.1:7703").ssl is not None
    with pytest.raises(ValueError, match="pass it alone"):
        NetworkHub("127.0.0.1:7700", 7700)
    with pytest.raises(ValueError, match="scheme 'http'"):
        NetworkHub("http://127.0.0.1:7700")


def test_an_agent_takes_a_hub_address_and_closes_the_hub_it_made(tmp_path: Path) -> None:
    with HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start() as proc:
        alice = Agent("alice", hub=f"127.0.0.1:{proc.port}")
        bob = Agent("bob", hub=f"agentmesh://127.0.0.1:{proc.port}")
        bob.on_message(lambda msg: msg.reply(text="heard: " + msg.text))
        assert alice.request("bob", text="via an address", timeout=10).text == (
            "heard: via an address"
        )
        made = alice.hub
        assert isinstance(made, NetworkHub) and made.port == proc.port
        bob.close()
        alice.close()
        assert made.closed  # the agent made it, so the agent closed it


def test_an_agent_refuses_a_bad_hub_before_opening_its_identity(tmp_path: Path) -> None:
    key = tmp_path / "alice.key"
    with pytest.raises(ValueError, match="scheme 'http'"):
        Agent("alice", hub="http://127.0.0.1:7700", keypair_path=key)
    assert not key.exists()
    with pytest.raises(TypeError, match="hub must be a hub"):
        Agent("alice", hub=7700)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hub must be a hub"):
        AsyncAgent("alice", hub=3.5)  # type: ignore[arg-type]


def test_the_cli_refuses_a_bad_hub_address_with_exit_code_2(tmp_path: Path) -> None:
    key = tmp_path / "a.key"
    run = [sys.executable, "-m", "agentmesh.cli"]
    assert subprocess.run([*run, "keygen", "--path", str(key)], capture_output=True).returncode == 0
    r = subprocess.run(
        [*run, "send", "--hub", "http://127.0.0.1:7700", "--key", str(key), "--to", "b"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "scheme 'http' is not a hub's" in r.stderr
