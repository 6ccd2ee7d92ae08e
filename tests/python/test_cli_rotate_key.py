"""``agentmesh rotate-key``: the identity file moves to a new key; the hub re-binds the id (at
once with --hub, at the next connection without), and a peer that pinned the old key follows."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from agentmesh import Agent
from agentmesh.cli import main
from agentmesh.testing import HubProcess


def test_rotate_key_with_and_without_the_hub(tmp_path: Path, capsys) -> None:
    alice_key, bob_key = tmp_path / "alice.key", tmp_path / "bob.key"
    assert main(["keygen", "--path", str(alice_key)]) == 0
    first = capsys.readouterr().out.strip()
    hub = HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start()
    address = f"127.0.0.1:{hub.port}"
    try:
        heard: list[str] = []
        arrived = threading.Event()

        def on_message(msg) -> None:
            heard.append(msg.text)
            arrived.set()

        with Agent("bob", hub=address, keypair_path=bob_key) as bob:
            bob.on_message(on_message)
            for text, rotate in [("one", None), ("two", "--hub"), ("three", "offline")]:
                if rotate == "--hub":
                    assert main(["rotate-key", "--key", str(alice_key), "--hub", address]) == 0
                    old, new = capsys.readouterr().out.strip().split(" -> ")
                    assert old == first != new
                elif rotate == "offline":
                    assert main(["rotate-key", "--key", str(alice_key), "--json"]) == 0
                    out = json.loads(capsys.readouterr().out)
                    assert out["agent_id"] == "alice" and out["old_fingerprint"] == new
                arrived.clear()
                with Agent("alice", hub=address, keypair_path=alice_key) as alice:
                    alice.send("bob", text=text)
                assert arrived.wait(10), heard
            assert heard == ["one", "two", "three"]
            assert bob.connect("alice") == out["fingerprint"]
            assert bob.status()["rejected"] == 0
    finally:
        hub.stop()


def test_rotate_key_needs_an_existing_key_file(tmp_path: Path, capsys) -> None:
    assert main(["rotate-key", "--key", str(tmp_path / "nobody.key")]) == 1
    assert "does not exist" in capsys.readouterr().err
