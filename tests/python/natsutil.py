"""Helpers of the NATS tests: one real three-node cluster per test module, and a fresh
deployment (its own stream and buckets, by prefix) per test."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

_prefixes = itertools.count(1)


def fresh_prefix() -> str:
    """A prefix no other test of this process uses: its own stream and buckets."""
    return f"t{next(_prefixes)}x{int(time.time() * 1000) % 100000}"


def auth_services(
    cluster: Any, root: Any, count: int, lifetime: float = 600.0, options: Any = ()
) -> list[Any]:
    """``count`` authorization services (not started) for ``cluster``, keys in ``root/keys``,
    logs ``root/auth<i>.log``; ``options``: more of ``agentmesh nats-auth``'s options."""
    from agentmesh.nats_auth_process import AuthServiceProcess

    return [
        AuthServiceProcess(
            cluster.urls,
            root / "keys",
            root / f"auth{i}.log",
            lifetime=lifetime,
            options=options,
        )
        for i in range(count)
    ]


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.02)


def stream_leader(urls: list[str], stream: str) -> str:
    """The name of the node leading ``stream`` (asked through nats-py)."""

    async def ask() -> str:
        import nats

        nc = await nats.connect(servers=urls, connect_timeout=5, max_reconnect_attempts=2)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    info = await nc.jetstream(timeout=5).stream_info(stream)
                    if info.cluster is not None and info.cluster.leader:
                        return str(info.cluster.leader)
                except Exception:
                    pass
                assert time.monotonic() < deadline, f"stream {stream} has no leader"
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    return asyncio.run(ask())


def raw_kv_put(urls: list[str], bucket: str, key: str, value: bytes) -> Any:
    """Writes a KV entry as any client of the cluster can (there is no authorization)."""

    async def put() -> int:
        import nats

        nc = await nats.connect(servers=urls, connect_timeout=5, max_reconnect_attempts=2)
        try:
            kv = await nc.jetstream(timeout=5).key_value(bucket)
            return int(await kv.put(key, value))
        finally:
            await nc.close()

    return asyncio.run(put())


class Raw:
    """A raw nats-py connection with the options of an agent (or a reader), recording the
    server's permission errors."""

    def __init__(self, urls: list[str], options: dict[str, Any]) -> None:
        self.urls, self.options = urls, options
        self.errors: list[str] = []
        self.nc: Any = None

    async def __aenter__(self) -> Raw:
        import nats

        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            self.urls,
            connect_timeout=5,
            max_reconnect_attempts=0,
            allow_reconnect=False,
            error_cb=on_error,
            **self.options,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def refused(self, what: str, action: Callable[[], Awaitable[Any]]) -> None:
        """``action`` fails and the server reports a permissions violation for it."""
        self.errors.clear()
        try:
            await asyncio.wait_for(action(), 5.0)
        except Exception:
            pass
        else:
            raise AssertionError(f"{what}: allowed")
        for _ in range(100):
            if any("permissions violation" in e.lower() for e in self.errors):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{what}: no permissions violation reported ({self.errors})")
