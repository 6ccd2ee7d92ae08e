"""The ``agentmesh`` command: subcommands, output and exit codes (0 ok, 1 failure, 2 usage)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentmesh.cli import main

FP_RE = re.compile(r"^[0-9a-f]{4}(:[0-9a-f]{4}){7}$")
LISTENING = re.compile(r"listening on \[?([^\]\s]+?)\]?:(\d+)")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def hub(tmp_path):
    log = tmp_path / "hub.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentmesh.cli", "hub", "--host", "127.0.0.1", "--port", "0",
             "--store", str(tmp_path / "hub.sqlite3"), "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (match := LISTENING.search(log.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(log.read_text())
        time.sleep(0.05)
    yield f"127.0.0.1:{match.group(2)}"
    os.kill(proc.pid, signal.SIGTERM)
    try:
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# -- in-process (fast) -------------------------------------------------------------------------


def test_help_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("hub", "keygen", "fingerprint", "send", "listen", "peers", "demo"):
        assert command in out
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["keygen"]) == 2  # --path missing
    assert main(["send", "--hub", "x:1"]) == 2
    assert main(["listen", "--hub", "127.0.0.1:1", "--key", "k", "--count", "x"]) == 2
    for sub in ("keygen", "fingerprint", "send", "listen", "peers", "demo"):
        assert main([sub, "--help"]) == 0
    assert "--to" in capsys.readouterr().out


def test_keygen_and_fingerprint(tmp_path, capsys):
    path = tmp_path / "alice.key"
    assert main(["keygen", "--path", str(path), "--id", "alice"]) == 0
    fp = capsys.readouterr().out.strip()
    assert FP_RE.match(fp)
    if sys.platform != "win32":
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert main(["fingerprint", "--path", str(path)]) == 0
    assert capsys.readouterr().out.strip() == fp
    assert main(["fingerprint", "--path", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"agent_id": "alice", "fingerprint": fp}
    # the Agent API sees the same identity
    from agentmesh import Agent

    assert Agent("alice", keypair_path=path).fingerprint == fp


def test_keygen_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "alice.key"
    assert main(["keygen", "--path", str(path)]) == 0
    before = path.read_bytes()
    capsys.readouterr()
    assert main(["keygen", "--path", str(path)]) == 1
    assert "overwrite" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_keygen_default_id_is_the_file_stem(tmp_path, capsys):
    path = tmp_path / "worker-7.key"
    assert main(["keygen", "--path", str(path)]) == 0
    capsys.readouterr()
    assert main(["fingerprint", "--path", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["agent_id"] == "worker-7"


def test_keygen_bad_id_is_a_usage_error(tmp_path, capsys):
    assert main(["keygen", "--path", str(tmp_path / "k.key"), "--id", "bad\nid"]) == 2
    assert "control character" in capsys.readouterr().err
    assert not (tmp_path / "k.key").exists()


def test_passphrase_env(tmp_path, capsys, monkeypatch):
    path = tmp_path / "alice.key"
    monkeypatch.setenv("AM_PASS", "s3cret")
    assert main(["keygen", "--path", str(path), "--passphrase-env", "AM_PASS"]) == 0
    fp = capsys.readouterr().out.strip()
    assert main(["fingerprint", "--path", str(path), "--passphrase-env", "AM_PASS"]) == 0
    assert capsys.readouterr().out.strip() == fp
    assert main(["fingerprint", "--path", str(path)]) == 1  # no passphrase: a clear failure
    assert "error" in capsys.readouterr().err
    monkeypatch.setenv("AM_WRONG", "nope")
    assert main(["fingerprint", "--path", str(path), "--passphrase-env", "AM_WRONG"]) == 1
    monkeypatch.delenv("AM_MISSING", raising=False)
    assert main(["fingerprint", "--path", str(path), "--passphrase-env", "AM_MISSING"]) == 2


def test_fingerprint_failures(tmp_path, capsys):
    assert main(["fingerprint", "--path", str(tmp_path / "missing.key")]) == 1
    assert "does not exist" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.key"
    corrupt.write_bytes(b"junk")
    assert main(["fingerprint", "--path", str(corrupt)]) == 1
    assert corrupt.read_bytes() == b"junk"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_is_a_runtime_failure(tmp_path, capsys):
    port = _free_port()
    assert main(["peers", "--hub", f"127.0.0.1:{port}"]) == 1
    assert "error" in capsys.readouterr().err
    assert main(["keygen", "--path", str(tmp_path / "a.key")]) == 0
    capsys.readouterr()
    code = main(["send", "--hub", f"127.0.0.1:{port}", "--key", str(tmp_path / "a.key"),
                 "--to", "b", "--text", "x", "--timeout", "2"])  # fmt: skip
    assert code == 1


def test_bad_hub_address_is_a_usage_error(capsys):
    assert main(["peers", "--hub", "127.0.0.1:notaport"]) == 2
    assert main(["peers", "--hub", "127.0.0.1:70000"]) == 2


def test_demo_subcommand(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Hello, Bob!" in out and "ciphertext" in out


# -- against a real hub (subprocesses) ---------------------------------------------------------


def test_send_listen_peers_through_a_hub(tmp_path, hub):
    for name in ("alice", "bob"):
        r = run_cli("keygen", "--path", str(tmp_path / f"{name}.key"), "--id", name)
        assert r.returncode == 0, r.stderr
    listener = subprocess.Popen(
        [sys.executable, "-m", "agentmesh.cli", "listen", "--hub", hub,
         "--key", str(tmp_path / "bob.key"), "--count", "2", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "bob" not in run_cli("peers", "--hub", hub).stdout.split():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        r1 = run_cli("send", "--hub", hub, "--key", str(tmp_path / "alice.key"),
                     "--to", "bob", "--text", "hello bob")  # fmt: skip
        assert r1.returncode == 0, r1.stderr
        assert re.fullmatch(r"[0-9a-f]+\n", r1.stdout)
        r2 = run_cli("send", "--hub", hub, "--key", str(tmp_path / "alice.key"), "--to", "bob",
                     "--text", "second", "--payload", '{"type": "task", "n": 2}')  # fmt: skip
        assert r2.returncode == 0, r2.stderr
        out, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert listener.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [m["text"] for m in lines] == ["hello bob", "second"]
    assert lines[0]["id"] == r1.stdout.strip()
    assert lines[1]["type"] == "task" and lines[1]["payload"]["n"] == 2
    assert all(m["sender"] == "alice" for m in lines)

    peers = run_cli("peers", "--hub", hub, "--json")
    assert peers.returncode == 0
    assert {"alice", "bob"} <= set(json.loads(peers.stdout))
    online = run_cli("peers", "--hub", hub, "--json", "--online")
    assert online.returncode == 0 and json.loads(online.stdout) == []  # everyone has left


def test_send_to_unknown_peer_fails(tmp_path, hub):
    assert run_cli("keygen", "--path", str(tmp_path / "alice.key")).returncode == 0
    r = run_cli("send", "--hub", hub, "--key", str(tmp_path / "alice.key"), "--to", "nobody",
                "--text", "x")  # fmt: skip
    assert r.returncode == 1
    assert "Peer 'nobody' not found on hub" in r.stderr
    assert r.stdout == ""


def test_send_usage_errors(tmp_path, hub):
    assert run_cli("keygen", "--path", str(tmp_path / "a.key")).returncode == 0
    r = run_cli("send", "--hub", hub, "--key", str(tmp_path / "a.key"), "--to", "b",
                "--payload", "[1, 2]")  # fmt: skip
    assert r.returncode == 2 and "JSON object" in r.stderr
    r = run_cli("send", "--hub", hub, "--key", str(tmp_path / "missing.key"), "--to", "b")
    assert r.returncode == 1 and "does not exist" in r.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_listen_stops_cleanly_on_sigterm_and_sigint(tmp_path, hub):
    assert run_cli("keygen", "--path", str(tmp_path / "bob.key")).returncode == 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentmesh.cli", "-v", "listen", "--hub", hub,
             "--key", str(tmp_path / "bob.key")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        started = ""
        while "listening as" not in started:  # registered and waiting
            line = proc.stderr.readline()
            assert line, f"listen exited early: {started}"
            started += line
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, started + err
        assert out == ""


def test_hub_subcommand_passes_flags_through():
    r = run_cli("hub", "--help")
    assert r.returncode == 0
    assert "--store" in r.stdout
    r = run_cli("hub", "--port", "not-a-port")
    assert r.returncode == 2


def test_console_script_entry_point_is_main():
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    if "agentmesh" not in scripts:
        pytest.skip("package not installed with its console scripts")
    assert scripts["agentmesh"] == "agentmesh.cli:main"


def test_python_dash_m_agentmesh_demo():
    r = subprocess.run(
        [sys.executable, "-m", "agentmesh.demo"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "[bob]   <- alice: Hello, Bob! This is end-to-end encrypted." in r.stdout
    assert "plaintext visible to the hub: none" in r.stdout
    assert re.search(r"alice\s+fingerprint [0-9a-f:]{39}", r.stdout)
    assert Path  # keep the import used


RESPONDER = """
import sys, threading
from agentmesh import Agent
from agentmesh.hubs import NetworkHub, parse_hub_address
host, port = parse_hub_address(sys.argv[1])
agent = Agent("bob", hub=NetworkHub(host, port), keypair_path=sys.argv[2])
done = threading.Event()

@agent.on_message
def answer(msg):
    if msg.text == "fail":
        msg.reply_error("no such task")
    elif msg.text == "stop":
        done.set()
    elif msg.text != "ignore":
        msg.reply(text=msg.text.upper(), n=msg.payload.get("n"))

print("ready", flush=True)
done.wait(120)
agent.close()
"""


def test_request_prints_the_reply_and_fails_on_errors_and_timeouts(tmp_path, hub):
    for name in ("alice", "bob"):
        r = run_cli("keygen", "--path", str(tmp_path / f"{name}.key"), "--id", name)
        assert r.returncode == 0, r.stderr
    responder = subprocess.Popen(
        [sys.executable, "-c", RESPONDER, hub, str(tmp_path / "bob.key")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    alice = ("--hub", hub, "--key", str(tmp_path / "alice.key"), "--to", "bob")
    try:
        assert responder.stdout is not None and responder.stdout.readline() == "ready\n"
        r = run_cli("request", *alice, "--text", "hello", "--payload", '{"n": 3}')
        assert r.returncode == 0, r.stderr
        reply = json.loads(r.stdout)
        assert reply["text"] == "HELLO" and reply["payload"]["n"] == 3
        assert reply["sender"] == "bob" and reply["reply_to"]
        r = run_cli("request", *alice, "--text", "fail")
        assert r.returncode == 1 and "no such task" in r.stderr and r.stdout == ""
        r = run_cli("request", *alice, "--text", "ignore", "--timeout", "1")
        assert r.returncode == 1 and "no reply from 'bob' within 1 s" in r.stderr
        assert run_cli("send", *alice, "--text", "stop").returncode == 0
        responder.wait(30)
    finally:
        if responder.poll() is None:
            responder.kill()


def test_send_reads_long_text_from_stdin_or_a_file(tmp_path, hub):
    for name in ("alice", "bob"):
        made = run_cli("keygen", "--path", str(tmp_path / f"{name}.key"), "--id", name)
        assert made.returncode == 0
    long_text = "lorem ipsum " * 20_000  # 240 KB: more than a command line takes
    (tmp_path / "text.txt").write_text("from a file", encoding="utf-8")
    listener = subprocess.Popen(
        [sys.executable, "-m", "agentmesh.cli", "listen", "--hub", hub,
         "--key", str(tmp_path / "bob.key"), "--count", "2", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    alice = ("--hub", hub, "--key", str(tmp_path / "alice.key"), "--to", "bob")
    try:
        deadline = time.monotonic() + 30
        while "bob" not in run_cli("peers", "--hub", hub).stdout.split():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        r = subprocess.run(
            [sys.executable, "-m", "agentmesh.cli", "send", *alice, "--text", "-", "-q"],
            input=long_text, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = run_cli("send", *alice, "--text-file", str(tmp_path / "text.txt"))
        assert r.returncode == 0, r.stderr
        out, _err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
    texts = [json.loads(line)["text"] for line in out.splitlines()]
    assert texts == [long_text, "from a file"]


def test_send_refuses_two_texts_and_a_missing_text_file(tmp_path, hub):
    assert run_cli("keygen", "--path", str(tmp_path / "a.key")).returncode == 0
    base = ("send", "--hub", hub, "--key", str(tmp_path / "a.key"), "--to", "b")
    r = run_cli(*base, "--text", "x", "--payload", '{"text": "y"}')
    assert r.returncode == 2 and "'text' field" in r.stderr
    r = run_cli(*base, "--text", "x", "--text-file", str(tmp_path / "t.txt"))
    assert r.returncode == 2 and "not both" in r.stderr
    r = run_cli(*base, "--text-file", str(tmp_path / "missing.txt"))
    assert r.returncode == 2 and "cannot read --text-file" in r.stderr


def test_timeouts_cover_connecting_to_something_that_is_not_a_hub():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections (the kernel does) and never answers
    try:
        port = silent.getsockname()[1]
        started = time.monotonic()
        r = run_cli("peers", "--hub", f"127.0.0.1:{port}", "--timeout", "1")
        assert r.returncode == 1 and time.monotonic() - started < 8, r.stderr
    finally:
        silent.close()
