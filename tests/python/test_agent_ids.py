"""One agent-id rule: the Rust core's (keys.rs ``agent_id_problem``), applied the same way by
the Agent, the hub protocol, the CLI and the core's own key generation."""

from __future__ import annotations

import pytest

from agentmesh import hub_protocol
from agentmesh.agent import validate_agent_id
from agentmesh.crypto import AgentKeyPair, check_agent_id

IDS = [
    "a",
    "x" * 255,
    "é" * 127,
    "\u200bzero-width space (format, not control)",
    "\u00a0nbsp",
    "",
    "x" * 256,
    "é" * 128,
    "a\nb",
    "\x7f",
    "\x85next",
    "\x9f",
    "\ud800",
    None,
    7,
    b"bytes",
]


def verdict(fn, agent_id: object) -> str | None:
    try:
        fn(agent_id)
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("agent_id", IDS)
def test_every_layer_applies_the_same_rule(agent_id):
    core = verdict(check_agent_id, agent_id)
    assert (verdict(validate_agent_id, agent_id) is None) == (core is None)
    assert (verdict(hub_protocol.check_agent_id, agent_id) is None) == (core is None)
    if isinstance(agent_id, str) and "\ud800" not in agent_id:
        # what the core enforces on identities and envelopes, through a different path
        assert (verdict(AgentKeyPair.generate, agent_id) is None) == (core is None)


@pytest.mark.parametrize(
    ("agent_id", "message"),
    [
        ("", "recipient id must not be empty"),
        ("é" * 128, "recipient id is too long: 256 UTF-8 bytes, at most 255 allowed"),
        (
            "éa\x85b\n",
            "recipient id 'éa\\x85b\\n' contains a control character ('\\x85' at index 2)",
        ),
        ("\ud800", "recipient id '\\ud800' is not valid Unicode text"),
        (None, "recipient id must be a str, not NoneType"),
    ],
)
def test_the_error_names_the_value_and_the_problem(agent_id, message):
    with pytest.raises(ValueError) as info:
        check_agent_id(agent_id, "recipient id")
    assert str(info.value).startswith(message)


def test_default_name_is_agent_id():
    with pytest.raises(ValueError, match=r"^agent_id must not be empty$"):
        check_agent_id("")
    assert check_agent_id("alice") is None
