"""Two agents chat through an in-process hub; every message is end-to-end encrypted.

Run: python examples/01_simple_chat.py
"""

from agentmesh import Agent, LocalHub

hub = LocalHub()
alice = Agent("alice", hub=hub)
bob = Agent("bob", hub=hub)

print(f"alice's fingerprint: {alice.fingerprint}")
print(f"bob's fingerprint:   {bob.fingerprint}\n")


@bob.on_message
def bob_replies(msg):
    print(f"[{msg.recipient}] <- {msg.sender}: {msg.text}")
    if msg.payload.get("turn", 0) < 3:
        bob.send(
            msg.sender, text=f"Got your message #{msg.payload['turn']}.", turn=msg.payload["turn"]
        )


@alice.on_message
def alice_continues(msg):
    print(f"[{msg.recipient}] <- {msg.sender}: {msg.text}")
    turn = msg.payload["turn"] + 1
    if turn <= 3:
        alice.send(msg.sender, text=f"Here is message #{turn}.", turn=turn)


# With a LocalHub the whole exchange (all replies) has happened when send returns.
alice.send("bob", text="Hello, Bob! This is end-to-end encrypted.", turn=1)

print()
for agent in (alice, bob):
    s = agent.status()
    print(
        f"{s['agent_id']}: sent {s['sent']}, received {s['received']}, "
        f"sessions with {s['active_sessions']}"
    )
print(f"the hub routed {hub.message_count()} envelopes and could read none of them")

alice.close()
bob.close()
