"""``unseal_across``: several sessions' batches in one native call, each result exactly what
``CryptoSession.unseal_many`` gives for that session, with one signature check over them all."""

from __future__ import annotations

import threading

import pytest

from agentmesh.crypto import (
    AgentKeyPair,
    AuthenticationError,
    CryptoSession,
    FormatError,
    ReplayError,
    perform_key_exchange,
    unseal_across,
)


def _pair(host: AgentKeyPair, peer_id: str, *, deniable: bool = False, established: bool = True):
    """(peer's sending session, host's receiving session), after one round trip if asked."""
    peer = AgentKeyPair.generate(peer_id)
    sender = perform_key_exchange(peer, host.public_bundle(), deniable=deniable)
    receiver = perform_key_exchange(host, peer.public_bundle(), deniable=deniable)
    if established:
        assert receiver.unseal(sender.seal({"hello": peer_id})) == {"hello": peer_id}
        assert sender.unseal(receiver.seal({"back": 1})) == {"back": 1}
    return sender, receiver


def _twins(receivers: list[CryptoSession]) -> list[CryptoSession]:
    """Independent copies of the receiving sessions (and of their keypairs, one per keypair)."""
    keypairs: dict[int, AgentKeyPair] = {}
    twins = []
    for s in receivers:
        kp = keypairs.setdefault(id(s.keypair), AgentKeyPair.from_bytes(s.keypair.to_bytes()))
        twins.append(CryptoSession.import_state(kp, s.export_state()))
    return twins


def _comparable(items: list) -> list:
    return [type(item) if isinstance(item, Exception) else item for item in items]


def _tampered(env) -> bytes:
    data = bytearray(env.to_bytes())
    data[-3] ^= 0x80
    return bytes(data)


def test_many_sessions_match_unseal_many_and_keep_their_state():
    host, other_host = AgentKeyPair.generate("host"), AgentKeyPair.generate("other-host")
    pairs = [
        _pair(host, "p-signed"),
        _pair(host, "p-deniable", deniable=True),
        _pair(other_host, "p-tampered"),
        _pair(other_host, "p-new", established=False),
        _pair(host, "p-replay"),
        _pair(host, "p-bad-bytes", deniable=True),
        _pair(other_host, "p-empty"),
    ]
    payloads = [[{"peer": n, "i": i} for i in range(5)] for n in range(len(pairs))]
    sealed = [sender.seal_many(p) for (sender, _), p in zip(pairs, payloads, strict=True)]
    batches: list[list] = [list(envs) for envs in sealed]
    batches[2][1] = _tampered(sealed[2][1])
    batches[4].append(sealed[4][0])
    batches[5][3:3] = [b"garbage"]
    batches[6] = []
    receivers = [receiver for _, receiver in pairs]
    twins = _twins(receivers)

    results = unseal_across(list(zip(receivers, batches, strict=True)))
    expected = [twin.unseal_many(batch) for twin, batch in zip(twins, batches, strict=True)]

    assert [_comparable(r) for r in results] == [_comparable(e) for e in expected]
    assert results[0] == payloads[0] and results[1] == payloads[1] and results[3] == payloads[3]
    assert isinstance(results[2][1], AuthenticationError)
    assert results[2][:1] + results[2][2:] == payloads[2][:1] + payloads[2][2:]
    assert results[4][:5] == payloads[4] and isinstance(results[4][5], ReplayError)
    assert isinstance(results[5][3], FormatError)
    assert results[5][:3] + results[5][4:] == payloads[5]
    assert results[6] == []
    for n, ((sender, receiver), envs) in enumerate(zip(pairs, sealed, strict=True)):
        if n != 6:  # the empty batch opened nothing
            with pytest.raises(ReplayError):
                receiver.unseal(envs[0])
        assert receiver.unseal(sender.seal({"next": 1})) == {"next": 1}
    # The tampered envelope's genuine twin still opens: that batch went message by message.
    assert pairs[2][1].unseal(sealed[2][1]) == payloads[2][1]


def test_a_large_call_releases_the_gil_and_matches():
    host = AgentKeyPair.generate("host")
    pairs = [_pair(host, f"peer-{n}", deniable=n % 3 == 0) for n in range(20)]
    payloads = [[{"peer": n, "i": i} for i in range(4)] for n in range(len(pairs))]
    batches = [(r, s.seal_many(p)) for (s, r), p in zip(pairs, payloads, strict=True)]
    assert unseal_across(batches) == payloads
    again = unseal_across(batches)
    assert all(isinstance(item, ReplayError) for batch in again for item in batch)


def test_an_empty_call_and_empty_batches():
    host = AgentKeyPair.generate("host")
    _, receiver = _pair(host, "peer")
    assert unseal_across([]) == []
    assert unseal_across([(receiver, [])]) == [[]]


def test_the_same_session_twice_is_a_value_error_and_changes_nothing():
    host = AgentKeyPair.generate("host")
    sender, receiver = _pair(host, "peer")
    _, other = _pair(host, "other")
    envs = sender.seal_many([{"i": 0}, {"i": 1}])
    with pytest.raises(ValueError, match="batches 0 and 2 are of the same CryptoSession"):
        unseal_across([(receiver, envs[:1]), (other, []), (receiver, envs[1:])])
    assert receiver.unseal_many(envs) == [{"i": 0}, {"i": 1}]


def test_concurrent_calls_in_opposite_orders_do_not_deadlock():
    host = AgentKeyPair.generate("host")
    pairs = [_pair(host, f"peer-{n}") for n in range(4)]
    rounds = 30
    sealed = [
        [s.seal_many([{"r": r, "i": i} for i in range(20)]) for r in range(rounds)]
        for s, _ in pairs
    ]
    receivers = [r for _, r in pairs]
    failures: list = []

    def run(order: list[int]) -> None:
        for r in range(rounds):
            for batch in unseal_across([(receivers[n], sealed[n][r]) for n in order]):
                failures.extend(item for item in batch if isinstance(item, Exception))

    threads = [
        threading.Thread(target=run, args=([0, 1, 2, 3],)),
        threading.Thread(target=run, args=([3, 2, 1, 0],)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "unseal_across deadlocked"
    # Each round's envelopes went to both calls: one opened them, the other saw replays.
    assert len(failures) == rounds * 4 * 20
    assert all(isinstance(f, ReplayError) for f in failures)
