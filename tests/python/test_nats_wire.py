"""Protocol commands written to nats-py's buffer (agentmesh.nats_wire): the same bytes as
nats-py's own publish, and a header value that would end its line is refused."""

from __future__ import annotations

import pytest

pytest.importorskip("nats", reason="the NATS tests need nats-py (pip install -e '.[dev]')")

from nats.protocol.command import hpub_cmd, pub_cmd

from agentmesh.nats_wire import ack_commands, publish_command


def test_a_publish_is_the_command_nats_py_would_write():
    headers = {"Nats-Msg-Id": "0123abcd-ef", "Nats-Expected-Stream": "AGENTMESH_INBOX"}
    head = b"NATS/1.0\r\nNats-Msg-Id: 0123abcd-ef\r\nNats-Expected-Stream: AGENTMESH_INBOX\r\n\r\n"
    expected = hpub_cmd("agentmesh.inbox.a.b", "_INBOX.x.7", head, b"\x00data\r\n")
    assert publish_command("agentmesh.inbox.a.b", "_INBOX.x.7", headers, b"\x00data\r\n") == (
        expected
    )


def test_acknowledgements_are_empty_publishes_to_each_reply():
    replies = ["$JS.ACK.S.c.1.1.1.0.0", "$JS.ACK.S.c.1.2.2.0.0"]
    # (nats-py writes the empty reply as a second space)
    expected = b"".join(pub_cmd(r, "", b"").replace(b"  ", b" ") for r in replies)
    assert ack_commands(replies) == expected


@pytest.mark.parametrize("value", ["a\r\nNats-Expected-Last-Sequence: 1", "a\nb", "é", ""])
def test_a_header_value_that_cannot_be_sent_is_refused(value):
    if value == "":
        publish_command("s", "r", {"Nats-Msg-Id": value}, b"")  # (empty is allowed)
        return
    with pytest.raises(ValueError, match="Nats-Msg-Id"):
        publish_command("s", "r", {"Nats-Msg-Id": value}, b"")
