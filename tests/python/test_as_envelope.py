"""``crypto.as_envelope``: the one "Envelope or bytes -> Envelope" conversion the agent, the hubs
and the testing hub share."""

from __future__ import annotations

import pytest

from agentmesh import Agent, LocalHub
from agentmesh.crypto import AgentKeyPair, Envelope, as_envelope, perform_key_exchange, seal
from agentmesh.errors import FormatError


@pytest.fixture(scope="module")
def envelope() -> Envelope:
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")
    return seal(perform_key_exchange(alice, bob.public_bundle()), alice, "alice", "bob", {"x": 1})


def test_an_envelope_is_returned_as_it_is(envelope):
    assert as_envelope(envelope) is envelope


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_are_parsed(envelope, kind):
    data = bytes(envelope.to_bytes())
    parsed = as_envelope(kind(data))
    assert isinstance(parsed, Envelope)
    assert (parsed.sender, parsed.recipient, parsed.id) == ("alice", "bob", envelope.id)


@pytest.mark.parametrize("bad", ["text", 7, None, [b"x"]])
def test_anything_else_is_a_format_error_naming_the_type(bad):
    with pytest.raises(FormatError, match=type(bad).__name__):
        as_envelope(bad)


def test_bytes_that_are_no_envelope_are_a_format_error():
    with pytest.raises(FormatError):
        as_envelope(b"not an envelope")


def test_the_hub_and_the_agent_use_it():
    hub = LocalHub()
    bob = Agent("bob", hub=hub)
    errors: list[BaseException] = []
    bob.on_error(errors.append)
    with pytest.raises(FormatError, match="expected an Envelope or bytes, got str"):
        hub.deliver("not an envelope")
    bob._core.receive("not an envelope either")
    assert len(errors) == 1 and isinstance(errors[0], FormatError)
