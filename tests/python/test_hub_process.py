"""The hub as a real process (``python -m agentmesh.hub_server``): the command line, agents in
other processes, crashes (SIGKILL) and restarts, hostile input, idle clients, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hubutil import (
    HOST,
    Collector,
    HubProcess,
    make_self_signed_cert,
    new_keypair,
    peer_result,
    read_frames,
    run_peer,
    seal_bytes,
    session,
    subprocess_env,
)

from agentmesh.hub_client import HubClient
from agentmesh.hub_protocol import (
    ErrorCode,
    FrameType,
    HubRequestError,
    decode_error,
    encode_frame,
    encode_hello,
)
from agentmesh.hub_server import HubLimits


def run(coro: Awaitable[Any], timeout: float = 180.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    with HubProcess(tmp_path / "hub.db") as h:
        yield h


def client(h: HubProcess, **kw: Any) -> HubClient:
    kw.setdefault("max_backoff", 0.3)
    return HubClient(HOST, h.port, **kw)


def hub_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.hub_server", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------
# Command line


def test_listening_line_and_clean_stop_on_sigterm(hub: HubProcess) -> None:
    assert hub.port > 0
    assert f"agentmesh-hub listening on {HOST}:{hub.port}" in hub.stderr
    assert hub.stop() == 0
    assert "hub stopped" in hub.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in (
        ["--port", "abc"],
        ["--port", "70000"],
        ["--log-level", "loud"],
        ["--tls-cert", str(tmp_path / "c.pem")],
        ["--idle-timeout", "1", "--ping-interval", "5"],
        ["--no-such-flag"],
    ):
        res = hub_cli("--host", HOST, "--store", str(tmp_path / "x.db"), *args)
        assert res.returncode == 2, (args, res.stderr)
        assert "usage" in res.stderr
    res = hub_cli("--help")
    assert res.returncode == 0 and "--store" in res.stdout


def test_fatal_errors_exit_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = hub_cli("--host", HOST, "--port", str(port), "--store", str(tmp_path / "a.db"))
        assert res.returncode == 1, res.stderr
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"garbage" * 1000)
    res = hub_cli("--host", HOST, "--port", "0", "--store", str(bad))
    assert res.returncode == 1 and "cannot open hub store" in res.stderr
    res = hub_cli(
        "--host", HOST, "--port", "0", "--store", str(tmp_path / "b.db"),
        "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "missing.key"),
    )  # fmt: skip
    assert res.returncode == 1


def test_console_script_if_installed() -> None:
    exe = shutil.which("agentmesh-hub")
    if exe is None:
        pytest.skip("agentmesh-hub is not on PATH (package not installed)")
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--tls-cert" in res.stdout


# --------------------------------------------------------------------------------------------
# Agents in other processes


def test_send_and_receive_across_processes(hub: HubProcess, tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice.key", tmp_path / "bob.key"
    new_keypair("alice", alice)
    bob_kp = new_keypair("bob", bob)

    async def enroll() -> None:  # bob must be known to the hub before anyone sends to him
        c = client(hub)
        await c.register(bob_kp, Collector())
        await c.close()

    run(enroll())
    n = 2000
    common = ["--port", str(hub.port), "--count", str(n)]
    receiver = run_peer("receiver", *common, "--key", str(bob), "--peer-key", str(alice))
    # The receiver may or may not be online before the sender starts: both orders work.
    sender = run_peer("sender", *common, "--key", str(alice), "--peer-key", str(bob))
    sent = peer_result(sender)
    got = peer_result(receiver)
    assert sent["sent"] == n
    assert got["received"] == n and got["in_order"], got
    assert got["errors"] == []

    async def count() -> int:
        c = client(hub)
        try:
            return await c.message_count()
        finally:
            await c.close()

    assert run(count()) == n


def test_sigkill_loses_nothing_acknowledged(hub: HubProcess) -> None:
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    n = 500

    async def phase1() -> None:
        b = client(hub)
        await b.register(bob_kp, Collector())
        await b.close()  # offline from now on
        a = client(hub)
        await a.register(alice_kp, Collector())
        s = session(alice_kp, bob_kp)
        for i in range(n):
            await a.send("bob", seal_bytes(s, {"i": i}))
        await a.flush(60)  # acknowledged => durable
        # No close(): the hub dies under the open connection.
        hub.kill()
        await a.close()  # nothing unacknowledged: returns at once

    run(phase1())
    assert hub.returncode == -9
    hub.restart()

    async def phase2() -> None:
        got = Collector(session(bob_kp, alice_kp))
        b = client(hub)
        await b.register(bob_kp, got)
        await got.wait_for(n)
        assert [p["i"] for p in got.payloads] == list(range(n))
        look = client(hub)
        assert await look.message_count() == n
        assert await look.list_agents() == ["alice", "bob"]
        await look.close()
        await b.close()

    run(phase2())


def test_reconnect_and_resend_after_a_hub_crash(hub: HubProcess) -> None:
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    n = 1000

    async def go() -> None:
        got = Collector(session(bob_kp, alice_kp))
        a, b = client(hub), client(hub)
        await a.register(alice_kp, Collector())
        await b.register(bob_kp, got)
        s = session(alice_kp, bob_kp)
        for i in range(n // 2):
            await a.send("bob", seal_bytes(s, {"i": i}))
        await got.wait_for(100)
        # Killed mid-stream: some envelopes are acknowledged, some delivered, some not.
        await asyncio.get_running_loop().run_in_executor(None, hub.kill)
        for i in range(n // 2, n):
            await a.send("bob", seal_bytes(s, {"i": i}))  # queued locally while down
        await asyncio.get_running_loop().run_in_executor(None, hub.restart)
        await a.flush(120)  # resent after the reconnect and acknowledged
        await got.wait_for(n, timeout=120)
        deadline = time.monotonic() + 60
        while len(got.payloads) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        # Every message is handled exactly once and in order; a duplicate the hub may
        # deliver after the crash is rejected by the session (replay protection).
        assert [p["i"] for p in got.payloads] == list(range(n))
        assert all(type(e).__name__ == "ReplayError" for e in got.errors), got.errors[:3]
        assert a.reconnects >= 1 and b.reconnects >= 1
        for c in (a, b):
            await c.close()

    run(go())


def test_recipient_reconnects_in_the_middle_of_a_backlog(hub: HubProcess) -> None:
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    n = 3000  # about three delivery windows

    async def go() -> None:
        b = client(hub)
        await b.register(bob_kp, Collector())
        await b.close()
        a = client(hub)
        await a.register(alice_kp, Collector())
        s = session(alice_kp, bob_kp)
        for i in range(n):
            await a.send("bob", seal_bytes(s, {"i": i}))
        await a.flush(60)
        await a.close()
        got = Collector(session(bob_kp, alice_kp))
        b = client(hub)
        await b.register(bob_kp, got)
        await got.wait_for(500)
        await asyncio.get_running_loop().run_in_executor(None, hub.kill)
        await asyncio.get_running_loop().run_in_executor(None, hub.restart)
        await got.wait_for(n, timeout=120)
        assert [p["i"] for p in got.payloads] == list(range(n))
        # Redeliveries of what was handled but whose deletion the crash lost are skipped by the
        # client (same delivery id from the same store): the session never sees a replay.
        assert got.errors == []
        assert b.reconnects >= 1
        await b.close()

    run(go())


def test_lookup_client_survives_a_hub_restart(hub: HubProcess) -> None:
    async def go() -> None:
        look = client(hub)
        assert await look.list_agents() == []
        c = client(hub)
        await c.register(new_keypair("alice"), Collector())
        await c.close()
        await asyncio.get_running_loop().run_in_executor(None, hub.kill)
        await asyncio.get_running_loop().run_in_executor(None, hub.restart)
        assert await look.list_agents() == ["alice"]  # retried after the reconnect
        assert look.reconnects >= 1
        await look.close()

    run(go())


def test_clean_restart_keeps_queue_and_count(hub: HubProcess) -> None:
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")

    async def before() -> None:
        b = client(hub)
        await b.register(bob_kp, Collector())
        await b.close()
        a = client(hub)
        await a.register(alice_kp, Collector())
        s = session(alice_kp, bob_kp)
        for i in range(10):
            await a.send("bob", seal_bytes(s, {"i": i}))
        await a.close()  # close() flushes

    run(before())
    assert hub.stop() == 0
    hub.restart()

    async def after() -> None:
        got = Collector(session(bob_kp, alice_kp))
        b = client(hub)
        await b.register(bob_kp, got)
        await got.wait_for(10)
        assert [p["i"] for p in got.payloads] == list(range(10))
        assert await b.message_count() == 10
        await b.close()

    run(after())


# --------------------------------------------------------------------------------------------
# Hostile and idle connections


def test_hostile_input_leaves_the_hub_serving_others(tmp_path: Path) -> None:
    args = ["--handshake-timeout", "1.5", "--idle-timeout", "3", "--ping-interval", "0.5"]
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    with HubProcess(tmp_path / "hub.db", extra_args=args) as h:

        async def go() -> None:
            got = Collector(session(bob_kp, alice_kp))
            a, b = client(h), client(h)
            await a.register(alice_kp, Collector())
            await b.register(bob_kp, got)
            s = session(alice_kp, bob_kp)
            sent = 0

            async def traffic(stop: asyncio.Event) -> None:
                nonlocal sent
                while not stop.is_set():
                    await a.send("bob", seal_bytes(s, {"i": sent}))
                    sent += 1
                    await asyncio.sleep(0.01)

            stop = asyncio.Event()
            mover = asyncio.create_task(traffic(stop))

            async def expect_error(payload: bytes, code: ErrorCode) -> None:
                reader, writer = await asyncio.open_connection(HOST, h.port)
                writer.write(payload)
                frames = await read_frames(reader, timeout=30)
                assert frames and frames[-1][0] == FrameType.ERROR, frames
                assert decode_error(frames[-1][1])[0] == code
                writer.close()

            rng = random.Random(7)
            await expect_error(struct.pack(">I", 1 << 30) + b"\x01", ErrorCode.FRAME_TOO_LARGE)
            await expect_error(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ErrorCode.FRAME_TOO_LARGE)
            await expect_error(b"\x00\x00\x00\x05\x01XXXX", ErrorCode.PROTOCOL)  # bad magic
            await expect_error(encode_hello() + b"\x00\x00\x00\x01\xee", ErrorCode.UNKNOWN_FRAME)
            await expect_error(b"\x00\x00\x00\x00", ErrorCode.PROTOCOL)
            await expect_error(
                encode_hello() + encode_frame(FrameType.DELIVER, b"\x00" * 9), ErrorCode.PROTOCOL
            )
            await expect_error(
                encode_hello() + encode_frame(FrameType.REGISTER, b"x" * 100),
                ErrorCode.BAD_REGISTRATION,
            )
            for _ in range(5):  # random garbage: an error frame or a closed connection
                reader, writer = await asyncio.open_connection(HOST, h.port)
                writer.write(rng.randbytes(rng.randint(1, 4096)))
                await read_frames(reader, timeout=30)
                writer.close()

            # Silent, half-open and slowloris connections are closed by the handshake timeout.
            t0 = time.monotonic()
            silent = await asyncio.open_connection(HOST, h.port)
            half = await asyncio.open_connection(HOST, h.port)
            half[1].write_eof()
            slow = await asyncio.open_connection(HOST, h.port)

            async def drip() -> None:
                for byte in encode_hello():
                    slow[1].write(bytes([byte]))
                    await asyncio.sleep(0.4)

            dripper = asyncio.create_task(drip())
            for reader, _w in (silent, half, slow):
                frames = await read_frames(reader, timeout=30)
                if frames:
                    assert frames[-1][0] == FrameType.ERROR
            assert time.monotonic() - t0 < 20
            dripper.cancel()
            for _r, w in (silent, half, slow):
                w.close()

            # Several hundred connections at once from one address: the per-address cap of
            # unauthenticated connections completes that many lookup handshakes, refuses the
            # rest with an error, and the hub serves on.
            cap = HubLimits().max_unauthenticated_per_address
            many = []
            for _ in range(300):
                many.append(await asyncio.open_connection(HOST, h.port))
            for _r, w in many:
                with contextlib.suppress(ConnectionError):
                    w.write(encode_hello() + encode_frame(FrameType.LOOKUP))
            ready = 0
            for r, _w in many:
                frames = await read_frames(r, timeout=30, until=FrameType.READY)
                ready += any(t == FrameType.READY for t, _ in frames)
                assert not frames or frames[-1][0] in (FrameType.READY, FrameType.ERROR), frames
            # (a refused socket may be reset before its ERROR frame is read; connections of
            # the steps above may not all be gone yet: at most `cap` get in)
            assert 0 < ready <= cap
            for _r, w in many:
                w.close()

            async def lookup_once_free() -> HubClient:
                deadline = time.monotonic() + 30
                while True:
                    c = client(h)
                    try:
                        await c.connect_lookup()
                        return c
                    except HubRequestError as exc:
                        await c.close()
                        if exc.code != ErrorCode.TOO_MANY_CONNECTIONS:
                            raise
                        assert time.monotonic() < deadline, "closed connections stay counted"
                        await asyncio.sleep(0.05)

            lookups = [await lookup_once_free() for _ in range(20)]
            answers = await asyncio.gather(*(c.list_agents() for c in lookups))
            assert all(x == ["alice", "bob"] for x in answers)
            for c in lookups:
                await c.close()

            stop.set()
            await mover
            await a.flush(60)
            await got.wait_for(sent, timeout=60)
            assert [p["i"] for p in got.payloads] == list(range(sent))
            assert a.reconnects == 0 and b.reconnects == 0
            for c in (a, b):
                await c.close()

        run(go())
        assert h.alive()
        assert "Traceback" not in h.stderr
        assert h.stop() == 0


def test_idle_agent_is_alive_after_the_idle_timeout(tmp_path: Path) -> None:
    args = ["--idle-timeout", "2", "--ping-interval", "0.5"]
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    with HubProcess(tmp_path / "hub.db", extra_args=args) as h:

        async def go() -> None:
            got = Collector(session(bob_kp, alice_kp))
            a, b = client(h), client(h)
            await a.register(alice_kp, Collector())
            await b.register(bob_kp, got)
            await asyncio.sleep(5.0)  # 2.5 idle timeouts without a message
            await a.send("bob", seal_bytes(session(alice_kp, bob_kp), {"i": 0}))
            await a.flush(30)
            await got.wait_for(1)
            assert a.reconnects == 0 and b.reconnects == 0
            for c in (a, b):
                await c.close()

        run(go())


def test_tls_hub_process(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with HubProcess(tmp_path / "hub.db", extra_args=args) as h:
        assert "tls" in h.stderr
        ctx = ssl.create_default_context(cafile=str(cert))

        async def go() -> None:
            got = Collector(session(bob_kp, alice_kp))
            a, b = client(h, ssl=ctx), client(h, ssl=ctx)
            await a.register(alice_kp, Collector())
            await b.register(bob_kp, got)
            s = session(alice_kp, bob_kp)
            for i in range(100):
                await a.send("bob", seal_bytes(s, {"i": i}))
            await a.flush(30)
            await got.wait_for(100)
            assert [p["i"] for p in got.payloads] == list(range(100))
            # A plain-TCP client gets no service from a TLS hub (and does no harm).
            reader, writer = await asyncio.open_connection(HOST, h.port)
            writer.write(encode_hello())
            frames = await read_frames(reader, timeout=30)
            assert all(t != FrameType.WELCOME for t, _ in frames)
            writer.close()
            for c in (a, b):
                await c.close()

        run(go())
        assert h.stop() == 0
