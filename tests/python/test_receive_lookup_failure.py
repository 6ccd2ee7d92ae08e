"""A new sender whose bundle cannot be looked up right now (the hub unreachable, a cluster
electing a leader) is not rejected: its envelope stays unacknowledged and is read when it
comes again. Rejecting it would lose a message the hub had accepted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from agentmesh import Agent
from agentmesh.errors import HubError
from agentmesh.testing import HubProcess


def test_a_failed_lookup_leaves_the_message_for_the_next_connection(tmp_path: Path) -> None:
    with HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start() as proc:
        address = f"127.0.0.1:{proc.port}"
        key = tmp_path / "bob.key"
        Agent("bob", hub=address, keypair_path=key).close()  # known to the hub
        with Agent("alice", hub=address) as alice:
            alice.send("bob", text="first contact")
            alice.flush(10)
            bob = Agent("bob", hub=address, keypair_path=key)
            tried = threading.Event()
            real = bob._core._lookup_bundle

            def unreachable(peer: str):  # the hub does not answer this lookup
                tried.set()
                raise HubError(f"looking up {peer!r}: the hub did not answer")

            bob._core._lookup_bundle = unreachable  # type: ignore[method-assign]
            got: list[str] = []
            errors: list[BaseException] = []
            bob.on_error(errors.append)
            bob.on_message(lambda msg: got.append(msg.text))
            assert tried.wait(10)
            bob._core._lookup_bundle = real  # type: ignore[method-assign]
            bob.close()
            assert got == [] and errors == []  # not handled, not reported as a rejection
            again = Agent("bob", hub=address, keypair_path=key)
            heard = threading.Event()
            again.on_message(lambda msg: (got.append(msg.text), heard.set()))
            assert heard.wait(10)
            again.close()
            assert got == ["first contact"]


def test_a_batch_that_fails_to_read_is_not_acknowledged(tmp_path: Path) -> None:
    """An unexpected error while a batch is read (a bug, a failing machine) must not
    acknowledge the batch as if it were rejected: the next connection reads it."""
    with HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start() as proc:
        address = f"127.0.0.1:{proc.port}"
        key = tmp_path / "bob.key"
        Agent("bob", hub=address, keypair_path=key).close()
        with Agent("alice", hub=address) as alice:
            alice.send("bob", text="read me")
            alice.flush(10)
            bob = Agent("bob", hub=address, keypair_path=key)
            failed = threading.Event()

            def broken(envelopes, dispatch=True):
                failed.set()
                raise RuntimeError("reading failed")

            bob._core.receive_batch = broken  # type: ignore[method-assign]
            got: list[str] = []
            bob.on_message(lambda msg: got.append(msg.text))
            assert failed.wait(10)
            time.sleep(0.5)  # (the batch's fate is settled: acknowledged or not)
            bob.close()
            assert got == []
            again = Agent("bob", hub=address, keypair_path=key)
            heard = threading.Event()
            again.on_message(lambda msg: (got.append(msg.text), heard.set()))
            assert heard.wait(10)
            again.close()
            assert got == ["read me"]
