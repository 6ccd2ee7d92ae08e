"""Test helpers for the network hub: run a real hub process, and peer processes.

As a module: :class:`HubProcess` (``agentmesh.testing.HubProcess``) starts ``python -m
agentmesh.hub_server`` on 127.0.0.1 (port 0 by default; the port is read from the ``listening
on`` line on stderr), stops it with SIGTERM or kills it with SIGKILL, and restarts it on the same
port and store.

As a script it is a peer process for cross-process tests and measurements::

    python hubutil.py receiver --port P --key bob.key --peer-key alice.key --count N
    python hubutil.py sender   --port P --key alice.key --peer-key bob.key --count N
    python hubutil.py echo     --port P --key bob.key --peer-key alice.key --count N
    python hubutil.py ping     --port P --key alice.key --peer-key bob.key --count N
    python hubutil.py lookup-flood --port P --count N --requests R --seconds S

Each prints one JSON line with its results on stdout and exits 0 on success. Everything here
talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentmesh.hub_protocol import FrameDecoder

# The one hub launcher (tests, benchmarks, crash campaign), imported by the tests from here.
from agentmesh.testing import HubProcess, subprocess_env  # noqa: F401

HOST = "127.0.0.1"


def eventually(predicate: Any, timeout: float = 30.0) -> bool:
    """Whether ``predicate()`` comes true within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --------------------------------------------------------------------------------------------
# Keys and envelopes through the real crypto API


def crypto() -> Any:
    from agentmesh import crypto as c

    return c


def new_keypair(agent_id: str, path: Path | None = None) -> Any:
    kp = crypto().AgentKeyPair.generate(agent_id)
    if path is not None:
        kp.save(str(path))
    return kp


def load_keypair(path: Path) -> Any:
    return crypto().AgentKeyPair.load(str(path))


def session(my_kp: Any, peer_kp: Any) -> Any:
    return crypto().perform_key_exchange(my_kp, peer_kp.public_bundle())


def seal_bytes(sess: Any, payload: dict[str, Any]) -> bytes:
    return bytes(sess.seal(payload).to_bytes())


class Collector:
    """An ``on_batch`` handler (``HubClient.register(keypair, Collector())``) that unseals and
    records payloads, in delivery order, and wakes whoever waits for a count."""

    def __init__(self, sess: Any | None = None) -> None:
        self.sess = sess
        self.payloads: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.ids: list[int] = []
        self.errors: list[BaseException] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def __call__(self, batch: list[tuple[int, bytes]]) -> None:
        for delivery_id, envelope in batch:
            self.ids.append(delivery_id)
            self.raw.append(envelope)
            if self.sess is not None:
                try:
                    self.payloads.append(self.sess.unseal(envelope))
                except Exception as exc:
                    self.errors.append(exc)
        n = len(self.raw)
        for target, fut in self._waiters:
            if n >= target and not fut.done():
                fut.set_result(None)

    async def wait_for(self, count: int, timeout: float = 60.0) -> None:
        if len(self.raw) >= count:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((count, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise AssertionError(
                f"received {len(self.raw)} of {count} envelopes within {timeout}s"
            ) from None


# --------------------------------------------------------------------------------------------
# Raw protocol and TLS helpers


async def read_frames(
    reader: asyncio.StreamReader, *, timeout: float = 30.0, until: int | None = None
) -> list[tuple[int, bytes]]:
    """Frames the hub sends until it closes the connection (or ``until`` arrives)."""
    dec = FrameDecoder(1 << 24)
    frames: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            left = max(0.01, deadline - time.monotonic())
            data = await asyncio.wait_for(reader.read(65536), left)
        except (asyncio.TimeoutError, TimeoutError):
            break
        except ConnectionError:
            break
        if not data:
            break
        frames.extend(dec.feed(data))
        if until is not None and any(t == until for t, _ in frames):
            break
    return frames


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cryptography package, else the openssl CLI)."""
    cert, key = directory / "hub-cert.pem", directory / "hub-key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        import shutil
        import subprocess

        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cert, key
    pk = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pk.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(pk, hashes.SHA256())
    )
    key.write_bytes(
        pk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert, key


# --------------------------------------------------------------------------------------------
# Peer processes


def run_peer(role: str, *args: str, timeout: float = 120.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), role, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )


def peer_result(proc: subprocess.Popen[str], timeout: float = 120.0) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"peer timed out:\n{err}") from None
    if proc.returncode != 0:
        raise AssertionError(f"peer exited with {proc.returncode}:\n{out}\n{err}")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"peer printed no result:\n{out}\n{err}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def _lookup_flood(ns: argparse.Namespace) -> dict[str, Any]:
    """``--count`` unauthenticated lookup connections, each pipelining ``--requests``
    LIST_AGENTS at once and 100 more every 50 ms for ``--seconds``, never reading an answer."""
    from agentmesh.hub_protocol import FrameType, Op, encode_frame, encode_hello, encode_request

    burst = encode_hello() + encode_frame(FrameType.LOOKUP)
    burst += b"".join(encode_request(i, Op.LIST_AGENTS) for i in range(ns.requests))
    more = b"".join(encode_request(i, Op.LIST_AGENTS) for i in range(100))
    writers: list[asyncio.StreamWriter] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        try:
            _r, w = await asyncio.open_connection(HOST, ns.port)
        except OSError:
            failed += 1
            return
        w.write(burst)
        writers.append(w)

    for start in range(0, ns.count, 250):
        await asyncio.gather(*(one() for _ in range(min(250, ns.count - start))))
    print("FLOODING", flush=True)
    deadline = time.monotonic() + ns.seconds
    while time.monotonic() < deadline:
        for w in writers:
            if not w.is_closing() and w.transport.get_write_buffer_size() < 1 << 20:
                w.write(more)
        await asyncio.sleep(0.05)
    for w in writers:
        w.close()
    return {"opened": len(writers), "failed": failed}


async def _peer_main(ns: argparse.Namespace) -> dict[str, Any]:
    from agentmesh.hub_client import HubClient

    if ns.role == "lookup-flood":
        return await _lookup_flood(ns)
    me = load_keypair(Path(ns.key))
    peer = load_keypair(Path(ns.peer_key))
    sess = session(me, peer)
    client = HubClient(HOST, ns.port, max_backoff=0.5)
    count = ns.count
    if ns.role == "receiver":
        col = Collector(sess)
        first: list[float] = []

        async def on_batch(batch: list[tuple[int, bytes]]) -> None:
            if not first:
                first.append(time.perf_counter())
            await col(batch)

        await client.register(me, on_batch)
        print("READY", flush=True)
        await col.wait_for(count, ns.timeout)
        elapsed = time.perf_counter() - first[0] if first else 0.0
        await asyncio.sleep(0.2)  # let the last acknowledgements go out
        await client.close()
        seqs = [p.get("i") for p in col.payloads]
        return {
            "received": len(col.raw),
            "in_order": seqs == list(range(count)),
            "errors": [repr(e) for e in col.errors],
            "first": seqs[:3],
            "seconds": elapsed,
            "rate": count / elapsed if elapsed else 0.0,
        }
    if ns.role == "sender":
        await client.register(me, Collector())
        pad = "x" * max(0, ns.size - 10)
        t0 = time.perf_counter()
        for i in range(count):
            await client.send(peer.agent_id, seal_bytes(sess, {"i": i, "p": pad}))
        await client.flush(ns.timeout)
        dt = time.perf_counter() - t0
        await client.close()
        return {"sent": count, "seconds": dt, "rate": count / dt if dt else 0.0}
    if ns.role == "echo":  # answer every envelope with one back (for round trips)
        back = {"n": 0}

        async def on_batch(batch: list[tuple[int, bytes]]) -> None:
            for _did, env in batch:
                payload = sess.unseal(env)
                await client.send(peer.agent_id, seal_bytes(sess, payload))
                back["n"] += 1

        await client.register(me, on_batch)
        print("READY", flush=True)
        deadline = time.monotonic() + ns.timeout
        while back["n"] < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await client.close()
        return {"echoed": back["n"]}
    if ns.role == "ping":  # round trips through an echo peer
        replies: asyncio.Queue[float] = asyncio.Queue()

        async def on_reply(batch: list[tuple[int, bytes]]) -> None:
            for _did, env in batch:
                sess.unseal(env)
                replies.put_nowait(time.perf_counter())

        await client.register(me, on_reply)
        pad = "x" * max(0, ns.size - 10)
        rtts: list[float] = []
        for i in range(count + 50):  # the first 50 warm up
            t0 = time.perf_counter()
            await client.send(peer.agent_id, seal_bytes(sess, {"i": i, "p": pad}))
            t1 = await asyncio.wait_for(replies.get(), ns.timeout)
            if i >= 50:
                rtts.append(t1 - t0)
        await client.close()
        rtts.sort()
        return {
            "count": len(rtts),
            "p50_ms": rtts[len(rtts) // 2] * 1e3,
            "p99_ms": rtts[min(len(rtts) - 1, len(rtts) * 99 // 100)] * 1e3,
        }
    raise SystemExit(f"unknown role {ns.role}")


def _main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["receiver", "sender", "echo", "ping", "lookup-flood"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key")
    p.add_argument("--peer-key")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--timeout", type=float, default=90.0)
    ns = p.parse_args()
    if ns.role != "lookup-flood" and (ns.key is None or ns.peer_key is None):
        p.error(f"{ns.role} needs --key and --peer-key")
    result = asyncio.run(_peer_main(ns))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
