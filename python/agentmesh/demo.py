"""The local encrypted demo: ``python -m agentmesh.demo`` (or ``agentmesh demo``).

Alice and Bob exchange a few messages through an in-process hub. The demo prints what each agent
decrypted and, next to it, what the hub saw: sender, recipient and ciphertext size -- no payload
byte. No network, no files.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from .agent import Agent, Message
from .hubs import LocalHub


class _ObservedHub(LocalHub):
    """A LocalHub that records what a hub operator could see of each envelope."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, int, bytes]] = []

    def deliver(self, envelope: Any) -> None:
        wire = envelope if isinstance(envelope, bytes) else envelope.to_bytes()
        self.seen.append((envelope.sender, envelope.recipient, len(wire), wire))
        super().deliver(envelope)


def main(argv: Sequence[str] | None = None) -> int:
    out = sys.stdout
    hub = _ObservedHub()
    alice = Agent("alice", hub=hub)
    bob = Agent("bob", hub=hub)

    print("agentmesh demo: two agents, one in-process hub, end-to-end encryption\n", file=out)
    print(f"  alice  fingerprint {alice.fingerprint}", file=out)
    print(f"  bob    fingerprint {bob.fingerprint}\n", file=out)

    lines: list[str] = []

    @bob.on_message
    def bob_reads(msg: Message) -> None:
        lines.append(f"[bob]   <- {msg.sender}: {msg.text}")
        if msg.type == "question":
            bob.send(
                msg.sender, text=f"The answer to {msg.payload['about']!r} is 42.", type="answer"
            )

    @alice.on_message
    def alice_reads(msg: Message) -> None:
        lines.append(f"[alice] <- {msg.sender}: {msg.text}")

    conversation = [
        ("Hello, Bob! This is end-to-end encrypted.", {}),
        ("What is the answer?", {"type": "question", "about": "life"}),
        ("Thanks. The hub never saw a word of this.", {}),
    ]
    secrets_in_clear = []
    for text, extra in conversation:
        alice.send("bob", text=text, **extra)
        secrets_in_clear.append(text.encode())
    secrets_in_clear.append(b"The answer to")

    print("decrypted by the agents:", file=out)
    for line in lines:
        print(f"  {line}", file=out)

    print("\nwhat the hub saw (routing metadata and ciphertext only):", file=out)
    for sender, recipient, size, _wire in hub.seen:
        print(f"  {sender:>5} -> {recipient:<5}  {size:4d} bytes of ciphertext", file=out)
    leaked = any(secret in wire for *_rest, wire in hub.seen for secret in secrets_in_clear)
    print(
        f"\nplaintext visible to the hub: {'YES (bug!)' if leaked else 'none'}; "
        f"envelopes routed: {hub.message_count()}",
        file=out,
    )
    alice.close()
    bob.close()
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
