"""rotate_identity: an agent moves to a new identity key signed over by the old one; peers that
pinned the old key follow without the identity-changed error, on every hub that can re-bind
the id, and nothing sealed before the move is lost. A hub or agent presenting a new key
without a valid chain from the pinned key is refused exactly as before."""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from pathlib import Path

import pytest

from agentmesh import Agent, AsyncAgent, IdentityChangedError, LocalHub
from agentmesh import crypto as c
from agentmesh._native import sign_succession
from agentmesh.agent_rules import SESSION_RECHECK_S
from agentmesh.errors import HubError, IdentityRolledBackError, IdentityRotationError
from agentmesh.hubs import NetworkHub
from agentmesh.keystore import KeyStore


def key_of(agent: Agent) -> str:
    return str(agent.public_bundle["identity_key"])


def wait_for(items: list, n: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while len(items) < n and time.monotonic() < end:
        time.sleep(0.01)
    assert len(items) >= n, items


def test_peers_follow_a_rotation_on_every_hub(every_hub) -> None:
    got_a: list = []
    got_b: list = []
    with Agent("alice", hub=every_hub) as alice, Agent("bob", hub=every_hub) as bob:
        alice.on_message(lambda m: got_a.append(m.text))
        bob.on_message(lambda m: got_b.append(m.text))
        alice.send("bob", text="before")
        wait_for(got_b, 1)
        bob.send("alice", text="hello")
        wait_for(got_a, 1)
        old_fp, old_key = alice.fingerprint, key_of(alice)
        new_fp = alice.rotate_identity()
        assert new_fp == alice.fingerprint != old_fp
        assert len(alice.public_bundle["succession"]) == 1
        alice.send("bob", text="after")
        wait_for(got_b, 2)
        bob.send("alice", text="back")
        wait_for(got_a, 2)
        assert got_b == ["before", "after"] and got_a == ["hello", "back"]
        assert bob._core._pins["alice"] == key_of(alice) != old_key
        assert every_hub.get_bundle("alice")["identity_key"] == key_of(alice)
        assert bob.connect("alice") == new_fp  # the hub serves the new key, bob trusts it


def pair() -> tuple[Agent, Agent]:
    """alice and bob without a hub, with a session each way."""
    alice, bob = Agent("alice"), Agent("bob")
    bob.connect_with_bundle(alice.public_bundle)
    alice.connect_with_bundle(bob.public_bundle)
    assert alice.receive(bob._core.seal_for("alice", {"text": "hi"})) is not None
    assert bob.receive(alice._core.seal_for("bob", {"text": "hi"})) is not None
    return alice, bob


def test_what_was_sealed_for_the_old_key_still_opens() -> None:
    # envelopes are sealed and handed over by hand: in flight while alice rotates
    hub = LocalHub()
    with (
        Agent("alice", hub=hub) as alice,
        Agent("bob", hub=hub) as bob,
        Agent("carol", hub=hub) as carol,
    ):
        assert alice.receive(bob._core.seal_for("alice", {"text": "hi"})) is not None
        assert bob.receive(alice._core.seal_for("bob", {"text": "hi"})) is not None
        in_flight = bob._core.seal_for("alice", {"text": "sealed before the rotation"})
        first_contact = carol._core.seal_for("alice", {"text": "a set-up for the old key"})
        alice.rotate_identity()
        late = bob._core.seal_for("alice", {"text": "bob has not followed yet"})
        assert alice.receive(in_flight).text == "sealed before the rotation"
        assert alice.receive(late).text == "bob has not followed yet"
        assert alice.receive(first_contact).text == "a set-up for the old key"
        # alice's next message sets up a session with her new key; bob follows on the bundle
        from_new = alice._core.seal_for("bob", {"text": "from the new key"})
        assert bob.receive(from_new).text == "from the new key"
        assert bob._core._pins["alice"] == key_of(alice)
        to_new = bob._core.seal_for("alice", {"text": "to the new key"})
        assert alice.receive(to_new).text == "to the new key"
        # carol follows on a batch: its first envelope makes the new session, the others
        # (refused by her old session in the same batch) open with it
        batch = [alice._core.seal_for("carol", {"text": f"batch {i}"}) for i in range(5)]
        opened = carol._core.receive_batch(batch)
        assert [m.text for m in opened] == [f"batch {i}" for i in range(5)]
        assert alice.status()["rejected"] == bob.status()["rejected"] == 0
        assert carol.status()["rejected"] == 0


def test_a_new_key_without_statements_is_still_an_identity_change() -> None:
    alice, bob = pair()
    alice.rotate_identity()
    bare = {k: v for k, v in alice.public_bundle.items() if k != "succession"}
    with pytest.raises(IdentityChangedError):
        bob.connect_with_bundle(bare)
    assert bob._core._pins["alice"] != key_of(alice)


def hostile_bundle(agent_id: str, *, signer_id: str | None = None) -> dict:
    """A bundle of a fresh key for ``agent_id`` with a valid-looking chain from a key nobody
    pinned (``signer_id``: the chain is another id's)."""
    chain_id = signer_id or agent_id
    old, new = c.AgentKeyPair.generate(chain_id), c.AgentKeyPair.generate(chain_id)
    statement = sign_succession(old, new, 1, 1)
    target = new if signer_id is None else c.AgentKeyPair.generate(agent_id)
    bundle = dict(target.public_bundle())
    bundle["succession"] = [base64.b64encode(statement).decode()]
    return bundle


def test_statements_not_signed_by_the_pinned_key_are_refused() -> None:
    _, bob = pair()
    pinned = bob._core._pins["alice"]
    with pytest.raises(IdentityChangedError):
        bob.connect_with_bundle(hostile_bundle("alice"))
    with pytest.raises(IdentityChangedError):
        bob.connect_with_bundle(hostile_bundle("alice", signer_id="mallory"))
    assert bob._core._pins["alice"] == pinned


def test_a_statement_for_another_id_is_refused() -> None:
    alice, bob = pair()
    carol = Agent("carol")
    carol.rotate_identity()
    forged = dict(alice.public_bundle)
    alice.rotate_identity()
    forged = dict(alice.public_bundle)
    forged["succession"] = carol.public_bundle["succession"]
    with pytest.raises(IdentityChangedError):
        bob.connect_with_bundle(forged)


def test_a_replayed_older_statement_is_refused() -> None:
    alice, bob = pair()
    alice.rotate_identity()
    first = dict(alice.public_bundle)  # key 1, with the statement key 0 -> key 1
    alice.rotate_identity()
    bob.connect_with_bundle(alice.public_bundle)  # follows 0 -> 1 -> 2
    assert len(alice.public_bundle["succession"]) == 2
    with pytest.raises(IdentityChangedError):
        bob.connect_with_bundle(first)  # the hub serves the older key again
    assert bob._core._pins["alice"] == key_of(alice)


def another_client(hub):
    """A second client of the same hub (a NetworkHub object serves one agent per id)."""
    return hub if isinstance(hub, LocalHub) else NetworkHub(hub.host, hub.port)


def test_the_hub_refuses_a_rebinding_without_the_bound_keys_statement(every_hub) -> None:
    other = another_client(every_hub)
    with Agent("alice", hub=every_hub) as alice:
        # a chain from a key the hub never bound
        stranger = c.AgentKeyPair.generate("alice")
        impostor = c.AgentKeyPair.generate("alice")
        impostor.set_succession([sign_succession(stranger, impostor, 1, 1)])
        with pytest.raises((HubError, ValueError), match="another identity key"):
            Agent("alice", hub=other, keypair=impostor)
        assert every_hub.get_bundle("alice")["identity_key"] == key_of(alice)
        # the old key, with a statement like the one that once moved the id away from it,
        # cannot move it again: the hub has bound the newer key
        old = alice._core.keypair
        alice.rotate_identity()
        replayed = c.AgentKeyPair.generate("alice")
        replayed.set_succession([sign_succession(old, replayed, 1, 1)])
        with pytest.raises((HubError, ValueError), match="another identity key"):
            Agent("alice", hub=other, keypair=replayed)
        assert every_hub.get_bundle("alice")["identity_key"] == key_of(alice)


def test_a_rotation_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "alice.key"
    hub = LocalHub()
    with Agent("bob", hub=hub) as bob, Agent("alice", hub=hub, keypair_path=path) as alice:
        alice.connect("bob")
        new_fp = alice.rotate_identity()
        chain = alice.public_bundle["succession"]
    again = Agent("alice", keypair_path=path)
    try:
        assert again.fingerprint == new_fp
        assert again.public_bundle["succession"] == chain
        assert again._core._pins["bob"] == key_of(bob)  # pins survive the new state file
    finally:
        again.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "alice.key",
        "alice.key.lock",
        "alice.key.state",
        "alice.key.succession",
    ]


def crash_during_rotation(tmp_path: Path, monkeypatch, fail_at: str) -> tuple[str, str]:
    """Rotate with the write of ``fail_at`` failing (a crash there); returns the fingerprints
    before and after the rotation that was attempted."""
    from agentmesh import keystore_rotation as kr

    path = tmp_path / "alice.key"
    agent = Agent("alice", keypair_path=path)
    before = agent.fingerprint
    real_write, real_replace = kr.write_private_file, kr.os.replace
    seen = {}

    def failing_write(target, data):
        if str(target).endswith(fail_at):
            raise OSError("crash")
        return real_write(target, data)

    def failing_replace(src, dst):
        if str(src).endswith(fail_at):
            raise OSError("crash")
        return real_replace(src, dst)

    monkeypatch.setattr(kr, "write_private_file", failing_write)
    monkeypatch.setattr(kr.os, "replace", failing_replace)
    original = kr.commit_rotation

    def spy(store, keypair, chain, state):
        seen["new"] = keypair.fingerprint
        return original(store, keypair, chain, state)

    monkeypatch.setattr("agentmesh.agent_rotation.commit_rotation", spy)
    with pytest.raises(OSError):
        agent.rotate_identity()
    monkeypatch.undo()
    agent._core.store.release()  # the process "died": its lock goes
    agent._core.closed = True
    return before, seen["new"]


def test_a_crash_before_the_commit_point_keeps_the_old_identity(tmp_path, monkeypatch) -> None:
    before, _ = crash_during_rotation(tmp_path, monkeypatch, ".succession")
    with Agent("alice", keypair_path=tmp_path / "alice.key") as agent:
        assert agent.fingerprint == before
        assert "succession" not in agent.public_bundle
    assert not (tmp_path / "alice.key.next").exists()


def test_a_crash_after_the_commit_point_finishes_the_rotation(tmp_path, monkeypatch) -> None:
    _, new = crash_during_rotation(tmp_path, monkeypatch, ".next")
    assert (tmp_path / "alice.key.next").exists()
    with Agent("alice", keypair_path=tmp_path / "alice.key") as agent:
        assert agent.fingerprint == new
        assert len(agent.public_bundle["succession"]) == 1
    assert not (tmp_path / "alice.key.next").exists()
    assert not (tmp_path / "alice.key.state.next").exists()


def test_a_crash_between_the_two_renames_finishes_the_rotation(tmp_path, monkeypatch) -> None:
    _, new = crash_during_rotation(tmp_path, monkeypatch, ".state.next")
    assert not (tmp_path / "alice.key.next").exists()  # the identity was renamed, its state not
    assert (tmp_path / "alice.key.state.next").exists()
    with Agent("alice", keypair_path=tmp_path / "alice.key") as agent:
        assert agent.fingerprint == new
    assert not (tmp_path / "alice.key.state.next").exists()


def test_a_rotation_is_refused_where_it_cannot_be_completed() -> None:
    class NoRebinding(LocalHub):
        rotates_identities = False

    hub = NoRebinding()
    with Agent("alice", hub=hub) as alice:
        before = alice.fingerprint
        with pytest.raises(IdentityRotationError, match="cannot move agent id"):
            alice.rotate_identity()
        assert alice.fingerprint == before
    alice = Agent("alice")
    alice.create_group("team", [])
    with pytest.raises(IdentityRotationError, match="member of groups"):
        alice.rotate_identity()
    alice.close()
    with pytest.raises(IdentityRotationError, match="closed"):
        alice.rotate_identity()


def test_the_asyncio_face_rotates_too() -> None:
    import asyncio

    async def run() -> None:
        hub = LocalHub()
        heard = asyncio.Event()
        async with AsyncAgent("alice", hub=hub) as alice, AsyncAgent("bob", hub=hub) as bob:
            bob.on_message(lambda m: heard.set())
            await alice.send("bob", text="one")
            await asyncio.wait_for(heard.wait(), 10)
            heard.clear()
            fingerprint = await alice.rotate_identity()
            assert fingerprint == alice.fingerprint
            await alice.send("bob", text="two")
            await asyncio.wait_for(heard.wait(), 10)

    asyncio.run(run())


def test_rotation_inside_a_handler_is_refused(every_hub) -> None:
    errors: list = []
    done = threading.Event()
    with Agent("alice", hub=every_hub) as alice, Agent("bob", hub=every_hub) as bob:

        def handler(msg):
            try:
                bob.rotate_identity()
            except Exception as exc:
                errors.append(exc)
            done.set()

        bob.on_message(handler)
        alice.send("bob", text="rotate now")
        assert done.wait(10)
    if isinstance(every_hub, LocalHub):
        assert errors == []  # (a LocalHub handler runs in the sender's thread: it can)
    else:
        assert isinstance(errors[0], IdentityRotationError)


def test_what_was_sealed_for_the_old_key_opens_after_a_restart(tmp_path: Path) -> None:
    hub = LocalHub()
    alice_key, bob_key = tmp_path / "alice.key", tmp_path / "bob.key"
    with Agent("carol", hub=hub) as carol:
        alice = Agent("alice", hub=hub, keypair_path=alice_key)
        bob = Agent("bob", hub=hub, keypair_path=bob_key)
        assert alice.receive(bob._core.seal_for("alice", {"text": "hi"})) is not None
        assert bob.receive(alice._core.seal_for("bob", {"text": "hi"})) is not None
        to_old = bob._core.seal_for("alice", {"text": "in flight to the old key"})
        from_old = alice._core.seal_for("bob", {"text": "in flight from the old key"})
        first_contact = carol._core.seal_for("alice", {"text": "a set-up for the old key"})
        alice.rotate_identity()
        bob.connect("alice")  # bob follows (and retires his session with the old key)
        alice.close()
        bob.close()
        alice = Agent("alice", hub=hub, keypair_path=alice_key)
        bob = Agent("bob", hub=hub, keypair_path=bob_key)
        try:
            assert alice.receive(to_old).text == "in flight to the old key"
            assert alice.receive(first_contact).text == "a set-up for the old key"
            assert bob.receive(from_old).text == "in flight from the old key"
            assert alice.status()["rejected"] == bob.status()["rejected"] == 0
        finally:
            alice.close()
            bob.close()


def test_retired_sessions_go_after_their_grace_period(tmp_path: Path, monkeypatch) -> None:
    from agentmesh import agent_persistence, agent_sessions
    from agentmesh.agent_rules import RETIRED_GRACE_MS

    hub = LocalHub()
    path = tmp_path / "alice.key"
    with Agent("bob", hub=hub) as bob:
        alice = Agent("alice", hub=hub, keypair_path=path)
        assert alice.receive(bob._core.seal_for("alice", {"text": "hi"})) is not None
        late = bob._core.seal_for("alice", {"text": "too late"})
        alice.rotate_identity()
        alice.close()
        later = agent_persistence._now_ms() + RETIRED_GRACE_MS + 1
        monkeypatch.setattr(agent_persistence, "_now_ms", lambda: later)
        recheck = agent_sessions._recheck_clock() + SESSION_RECHECK_S + 1
        monkeypatch.setattr(agent_sessions, "_recheck_clock", lambda: recheck)
        errors: list = []
        with Agent("alice", hub=hub, keypair_path=path) as alice:
            alice.on_error(errors.append)
            assert alice.receive(late) is None
            assert len(errors) == 1
        store = KeyStore(path)
        state = store.load_state(store.load_identity())
        assert state.retired_identity is None and not state.retired_sessions


def test_a_sender_that_never_hears_back_is_not_lost_after_the_grace_period(
    tmp_path: Path, monkeypatch
) -> None:
    # bob only ever sends to alice (a worker reporting to a coordinator that rotated): his
    # session with her old key is never re-checked against the hub, so once alice's grace
    # period is over every message he sends is refused at her side, acknowledged by the hub
    from agentmesh import agent_persistence, agent_sessions
    from agentmesh.agent_rules import RETIRED_GRACE_MS

    hub = LocalHub()
    path = tmp_path / "alice.key"
    with Agent("bob", hub=hub) as bob:
        alice = Agent("alice", hub=hub, keypair_path=path)
        bob.send("alice", text="before")
        alice.rotate_identity()
        heard: list = []
        alice.on_message(lambda m: heard.append(m.text))
        bob.send("alice", text="within the grace period")  # opened by the retired session
        wait_for(heard, 1)
        assert heard == ["within the grace period"]
        alice.close()
        later = agent_persistence._now_ms() + RETIRED_GRACE_MS + 1
        monkeypatch.setattr(agent_persistence, "_now_ms", lambda: later)
        recheck = agent_sessions._recheck_clock() + SESSION_RECHECK_S + 1
        monkeypatch.setattr(agent_sessions, "_recheck_clock", lambda: recheck)
        got: list = []
        errors: list = []
        with Agent("alice", hub=hub, keypair_path=path) as alice:
            alice.on_message(lambda m: got.append(m.text))
            alice.on_error(errors.append)
            for i in range(3):
                bob.send("alice", text=f"after the grace period {i}")
            assert got == [f"after the grace period {i}" for i in range(3)], errors


@pytest.mark.xfail(
    strict=True,
    reason="known limit (docs/agents.md, 'Rotating the identity key'): a succession statement "
    "binds only the Ed25519 identity keys, and the hub serves only the new bundle, so a peer "
    "that never saw the old bundle has no old exchange key to open a set-up sealed with it",
)
def test_a_first_contact_sealed_by_the_old_key_still_opens() -> None:
    # alice's first message to dave (a set-up) was sealed and acknowledged by the hub before
    # she rotated; dave receives it afterwards, when the hub serves her new key
    hub = LocalHub()
    with Agent("alice", hub=hub) as alice, Agent("dave", hub=hub) as dave:
        in_flight = alice._core.seal_for("dave", {"text": "a set-up from the old key"})
        alice.rotate_identity()
        assert dave.receive(in_flight).text == "a set-up from the old key"


def test_a_stale_old_key_bundle_does_not_block_a_peer_that_followed() -> None:
    # bob followed alice's rotation; a hub (or a lagging replica) then serves her old bundle
    # once: refused, but seeing her current bundle again must let bob send again, without
    # asking him to "trust" the key she rotated away from
    alice, bob = pair()
    old = dict(alice.public_bundle)
    alice.rotate_identity()
    bob.connect_with_bundle(alice.public_bundle)
    with pytest.raises(IdentityChangedError) as refused:
        bob.connect_with_bundle(old)
    assert isinstance(refused.value, IdentityRolledBackError)  # her own chain retired that key
    assert "trust_new_identity" not in str(refused.value)
    bob.connect_with_bundle(alice.public_bundle)
    assert alice.receive(bob._core.seal_for("alice", {"text": "still talking"})) is not None


def test_two_rotations_at_once_do_not_fork_the_chain(every_hub, monkeypatch) -> None:
    # both calls read the current key before either has switched: the old key then signs two
    # successors, the hub binds one and the agent ends on the other (locked out of its id)
    from agentmesh import agent_rotation

    both_read = threading.Barrier(2, timeout=5)
    generate = c.AgentKeyPair.generate

    def generate_together(agent_id: str):
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait()
        return generate(agent_id)

    errors: list = []
    done: list = []
    with Agent("alice", hub=every_hub) as alice:
        monkeypatch.setattr(agent_rotation._crypto.AgentKeyPair, "generate", generate_together)

        def rotate() -> None:
            try:
                done.append(alice.rotate_identity())
            except IdentityRotationError:
                pass  # refusing the second rotation is fine
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=rotate) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert errors == []
        assert len(alice.public_bundle["succession"]) == len(done)  # one statement each
        assert every_hub.get_bundle("alice")["identity_key"] == key_of(alice)


def test_an_async_sender_rechecks_its_sessions_hourly_and_not_before(monkeypatch) -> None:
    # the async send's no-I/O fast path must not skip the hourly re-check, and within the
    # hour a send looks nothing up
    import asyncio

    from agentmesh import agent_sessions, async_agent
    from agentmesh.agent_rules import SESSION_RECHECK_S, _recheck_clock

    hub = LocalHub()
    lookups: list[str] = []
    get_bundle = hub.get_bundle

    def counted(agent_id: str):
        lookups.append(agent_id)
        return get_bundle(agent_id)

    async def run() -> None:
        got: list = []
        with Agent("alice", hub=hub) as alice:
            alice.on_message(lambda m: got.append(m.text))
            async with AsyncAgent("bob", hub=hub) as bob:
                await bob.send("alice", text="one")
                await asyncio.to_thread(wait_for, got, 1)
                alice.rotate_identity()
                monkeypatch.setattr(hub, "get_bundle", counted)
                await bob.send("alice", text="within the hour")
                assert lookups == []
                later = _recheck_clock() + SESSION_RECHECK_S + 1
                for module in (agent_sessions, async_agent):
                    monkeypatch.setattr(module, "_recheck_clock", lambda: later)
                await bob.send("alice", text="an hour later")
                await asyncio.to_thread(wait_for, got, 3)
                assert bob._core._pins["alice"] == key_of(alice)  # followed the rotation
                assert "alice" in lookups
                assert got == ["one", "within the hour", "an hour later"]

    asyncio.run(run())
