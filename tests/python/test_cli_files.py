"""``agentmesh send --file`` and ``listen --save-dir`` through real processes and a real hub: a
file's bytes arrive unchanged (as binary, not base64), are saved owner-only under the message
id, or are printed as base64 without --save-dir."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys

import pytest
from test_cli import hub, run_cli  # noqa: F401 (the hub fixture)

from agentmesh import Agent, LocalHub, Message
from agentmesh.agent_rules import MAX_ENVELOPE_BYTES
from agentmesh.cli_files import saved_payload

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


def identities(tmp_path, hub) -> None:  # noqa: F811
    for name in ("alice", "bob"):
        made = run_cli("keygen", "--path", str(tmp_path / f"{name}.key"), "--id", name)
        assert made.returncode == 0, made.stderr
    Agent("bob", hub=hub, keypair_path=tmp_path / "bob.key").close()  # known to the hub


def send_file(tmp_path, hub, path, *extra: str):  # noqa: F811
    return run_cli("send", "--hub", hub, "--key", str(tmp_path / "alice.key"), "--to", "bob",
                   "--file", str(path), *extra)  # fmt: skip


def listen(tmp_path, hub, *extra: str) -> list[dict]:  # noqa: F811
    r = run_cli("listen", "--hub", hub, "--key", str(tmp_path / "bob.key"), "--count", "1",
                "--timeout", "30", *extra)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_send_file_arrives_as_bytes_and_is_saved_or_printed(tmp_path, hub) -> None:  # noqa: F811
    identities(tmp_path, hub)
    blob = os.urandom(300_000)
    source = tmp_path / "photo.png"
    source.write_bytes(blob)
    sent = send_file(tmp_path, hub, source, "--text", "a photo")
    assert sent.returncode == 0, sent.stderr
    saved = tmp_path / "inbox"
    saved.mkdir()
    (line,) = listen(tmp_path, hub, "--save-dir", str(saved))
    assert line["id"] == sent.stdout.strip() and line["text"] == "a photo"
    shown = line["payload"]["data"]
    assert shown == {"bytes": len(blob), "saved": str(saved / f"{line['id']}-photo.png")}
    assert line["payload"]["filename"] == "photo.png"
    path = saved / f"{line['id']}-photo.png"
    assert path.read_bytes() == blob
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again = send_file(tmp_path, hub, source)
    assert again.returncode == 0, again.stderr
    (line,) = listen(tmp_path, hub)
    assert line["payload"]["data"]["bytes"] == len(blob)
    assert base64.b64decode(line["payload"]["data"]["base64"]) == blob


def test_a_sender_chosen_file_name_never_leaves_the_save_dir(tmp_path, hub) -> None:  # noqa: F811
    identities(tmp_path, hub)
    with Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key") as alice:
        alice.send("bob", data=b"x", filename="../../escape.txt", more=b"y")
        alice.flush(30)
    saved = tmp_path / "inbox"
    saved.mkdir()
    (line,) = listen(tmp_path, hub, "--save-dir", str(saved))
    assert sorted(os.listdir(saved)) == sorted([f"{line['id']}-escape.txt", f"{line['id']}-0.bin"])
    assert line["payload"]["more"]["saved"] == str(saved / f"{line['id']}-0.bin")
    assert line["payload"]["data"]["saved"] == str(saved / f"{line['id']}-escape.txt")


def _one_message(**payload) -> Message:
    local = LocalHub()
    alice, bob = Agent("alice", hub=local), Agent("bob", hub=local)
    got: list[Message] = []
    bob.on_message(got.append)
    alice.send("bob", **payload)
    return got[0]


def test_saving_keeps_files_private_and_names_short_and_loses_nothing(tmp_path) -> None:
    msg = _one_message(data=b"x", filename="n" * 300 + ".txt")
    saved = tmp_path / "inbox"
    saved.mkdir()
    loose = saved / f"{msg.id}-0.bin"
    loose.write_bytes(b"old")
    loose.chmod(0o644)
    shown = saved_payload(msg, str(saved))
    # a name too long for a file system gives way to the message's own; an existing file
    # written again is owner-only like a new one
    assert shown["data"] == {"bytes": 1, "saved": str(loose)}
    assert loose.read_bytes() == b"x" and stat.S_IMODE(loose.stat().st_mode) == 0o600
    # a file that cannot be written: the data goes out on the line, with the reason
    shown = saved_payload(msg, str(tmp_path / "missing"))
    assert shown["data"]["base64"] == base64.b64encode(b"x").decode()
    assert "not saved" in shown["data"]["error"]


def test_send_file_usage_errors(tmp_path, hub) -> None:  # noqa: F811
    identities(tmp_path, hub)
    missing = send_file(tmp_path, hub, tmp_path / "missing.bin")
    assert missing.returncode == 2
    assert "--file" in missing.stderr and "missing.bin" in missing.stderr
    source = tmp_path / "a.bin"
    source.write_bytes(b"x")
    clash = send_file(tmp_path, hub, source, "--payload", '{"data": 1}')
    assert clash.returncode == 2 and "'data'" in clash.stderr
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(MAX_ENVELOPE_BYTES + 1)
    too_big = send_file(tmp_path, hub, big)
    assert too_big.returncode == 2 and "at most" in too_big.stderr
    no_dir = run_cli("listen", "--hub", hub, "--key", str(tmp_path / "bob.key"),
                     "--save-dir", str(tmp_path / "nowhere"))  # fmt: skip
    assert no_dir.returncode == 2 and "--save-dir" in no_dir.stderr
