"""A peer process of the NATS JetStream comparison (127.0.0.1 only); ``...`` stands for
``python -m benches.peers.jetstream_peer``:

    ... am-recv --servers URLS --id rx --count N
    ... am-send --servers URLS --id tx --peer rx --count N --size B
    ... am-echo --servers URLS --id rx --count N
    ... am-ping --servers URLS --id tx --peer rx --count N --size B
    ... js-recv --servers URLS --id rx --count N
    ... js-send --servers URLS --id rx --count N --size B
    ... js-echo --servers URLS --id rx --count N
    ... js-ping --servers URLS --id tx --peer rx --count N --size B
    ... js-tuned-recv --servers URLS --id rx --count N
    ... js-tuned-send --servers URLS --id rx --count N --size B

``am-*``: agentmesh Agents on NatsHub (seal, sign, ordered durable publish, pull, unseal,
handler). ``js-*``: raw nats-py on a stream with the same settings (work queue, file storage,
the cluster's replicas, a durable pull consumer with explicit acks, ``max_ack_pending`` equal
to the fetch batch, a ``Nats-Msg-Id`` on every publish, every publish acknowledged) carrying
bytes of the same size as the envelope, through nats-py's JetStream API as an application
would use it (``publish_async``, ``fetch``, ``ack``). ``js-tuned-*``: the same, with the two
client techniques agentmesh's NATS backend uses: its pull requests (the next batch asked for
while this one is handled, a batch's acknowledgements in one write: ``agentmesh.nats_pull``)
and publishes written as protocol commands (``agentmesh.nats_wire``). Receivers and echoes
print ``READY``; every role prints one JSON line with its results. Times are ``time.time()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

RAW_STREAM = "BENCHRAW"
FETCH = 256


def envelope_size(size: int) -> int:
    """Bytes of an agentmesh envelope carrying ``{"text": "a" * size}``."""
    from agentmesh.crypto import AgentKeyPair, perform_key_exchange

    a, b = AgentKeyPair.generate("tx"), AgentKeyPair.generate("rx")
    session = perform_key_exchange(a, b.public_bundle())
    return len(session.seal({"text": "a" * size}).to_bytes())


# -- agentmesh on NatsHub ------------------------------------------------------------------------


def _agent(ns: argparse.Namespace) -> Any:
    from agentmesh import Agent, NatsHub

    return Agent(ns.id, hub=NatsHub(ns.servers.split(","), prefix=ns.prefix))


def am_receiver(ns: argparse.Namespace, echo: bool) -> dict[str, Any]:
    agent = _agent(ns)
    done = threading.Event()
    times: list[float] = []

    @agent.on_message
    def _on(msg: Any) -> None:
        times.append(time.time())
        if echo:
            agent.send(msg.sender, text=msg.text)
        if len(times) >= ns.count:
            done.set()

    print("READY", flush=True)
    ok = done.wait(ns.timeout)
    if echo:
        agent.flush(ns.timeout)
    agent.close()
    if not ok:
        raise SystemExit(f"timed out with {len(times)} of {ns.count}")
    return {"count": len(times), "first": times[0], "last": times[-1]}


def am_sender(ns: argparse.Namespace) -> dict[str, Any]:
    agent = _agent(ns)
    agent.connect(ns.peer)
    text = "a" * ns.size
    start = time.time()
    for _ in range(ns.count):
        agent.send(ns.peer, text=text)
    agent.flush(ns.timeout)
    flushed = time.time()
    agent.close()
    return {"start": start, "flushed": flushed}


def am_ping(ns: argparse.Namespace) -> dict[str, Any]:
    import queue

    agent = _agent(ns)
    replies: queue.Queue[Any] = queue.Queue()
    agent.on_message(replies.put)
    text = "a" * ns.size
    rtts: list[float] = []
    for i in range(ns.count + ns.warmup):
        t0 = time.perf_counter()
        agent.send(ns.peer, text=text)
        replies.get(timeout=ns.timeout)
        if i >= ns.warmup:
            rtts.append(time.perf_counter() - t0)
    agent.close()
    return {"rtts": rtts}


# -- raw JetStream -------------------------------------------------------------------------------


async def _js(ns: argparse.Namespace) -> tuple[Any, Any]:
    import nats

    nc = await nats.connect(servers=ns.servers.split(","), connect_timeout=10)
    return nc, nc.jetstream(timeout=30, publish_async_max_pending=1024)  # (our window)


async def _consumer(js: Any, agent_id: str) -> Any:
    await _add_consumer(js, agent_id)
    return await js.pull_subscribe_bind(durable=f"raw_{agent_id}", stream=RAW_STREAM)


async def _add_consumer(js: Any, agent_id: str) -> None:
    from nats.js import api

    config = api.ConsumerConfig(
        durable_name=f"raw_{agent_id}",
        filter_subject=f"benchraw.{agent_id}",
        ack_policy=api.AckPolicy.EXPLICIT,
        max_ack_pending=FETCH,
        ack_wait=10,
    )
    await js.add_consumer(RAW_STREAM, config)


async def js_receiver(ns: argparse.Namespace, echo: bool) -> dict[str, Any]:
    from nats.errors import TimeoutError as NatsTimeout

    nc, js = await _js(ns)
    pull = await _consumer(js, ns.id)
    print("READY", flush=True)
    times: list[float] = []
    deadline = time.monotonic() + ns.timeout
    while len(times) < ns.count and time.monotonic() < deadline:
        try:
            msgs = await pull.fetch(FETCH, timeout=2)
        except (NatsTimeout, asyncio.TimeoutError):
            continue
        for msg in msgs:
            times.append(time.time())
            if echo:
                reply_to = msg.headers.get("Reply-To") if msg.headers else None
                await js.publish(
                    f"benchraw.{reply_to}", msg.data, headers={"Nats-Msg-Id": os.urandom(8).hex()}
                )
        for msg in msgs:
            await msg.ack()
    await nc.close()
    if len(times) < ns.count:
        raise SystemExit(f"timed out with {len(times)} of {ns.count}")
    return {"count": len(times), "first": times[0], "last": times[-1]}


async def js_sender(ns: argparse.Namespace) -> dict[str, Any]:
    nc, js = await _js(ns)
    data = os.urandom(ns.size)
    start = time.time()
    futures = []
    for _ in range(ns.count):
        headers = {"Nats-Msg-Id": os.urandom(16).hex()}
        futures.append(await js.publish_async(f"benchraw.{ns.id}", data, headers=headers))
    await asyncio.wait_for(asyncio.gather(*futures), ns.timeout)
    flushed = time.time()
    await nc.close()
    return {"start": start, "flushed": flushed}


async def js_tuned_receiver(ns: argparse.Namespace) -> dict[str, Any]:
    from agentmesh.nats_pull import InboxPuller

    nc, js = await _js(ns)
    await _add_consumer(js, ns.id)
    puller = InboxPuller(nc, RAW_STREAM, f"raw_{ns.id}", FETCH, 2.0)
    await puller.start()
    print("READY", flush=True)
    times: list[float] = []
    deadline = time.monotonic() + ns.timeout
    while len(times) < ns.count and time.monotonic() < deadline:
        msgs = await puller.take(2.0)
        now = time.time()
        times.extend(now for _ in msgs)
        await puller.acknowledge(msgs)
    await nc.close()
    if len(times) < ns.count:
        raise SystemExit(f"timed out with {len(times)} of {ns.count}")
    return {"count": len(times), "first": times[0], "last": times[-1]}


async def js_tuned_sender(ns: argparse.Namespace) -> dict[str, Any]:
    from agentmesh import nats_wire

    nc, _ = await _js(ns)
    inbox = nc.new_inbox()
    window = asyncio.Semaphore(1024)  # (our window)
    done = asyncio.Event()
    answers: list[bytes] = []

    async def on_answer(msg: Any) -> None:
        answers.append(msg.data)
        window.release()
        if len(answers) == ns.count:
            done.set()

    await nc.subscribe(inbox + ".*", cb=on_answer)
    data = os.urandom(ns.size)
    subject = f"benchraw.{ns.id}"
    start = time.time()
    for i in range(ns.count):
        await window.acquire()
        headers = {"Nats-Msg-Id": os.urandom(16).hex()}
        command = nats_wire.publish_command(subject, f"{inbox}.{i}", headers, data)
        await nats_wire.write(nc, command)
    await asyncio.wait_for(done.wait(), ns.timeout)
    flushed = time.time()
    await nc.close()
    refused = [a for a in answers if b'"error"' in a or not a.startswith(b'{"stream"')]
    if refused:
        raise SystemExit(f"{len(refused)} publishes not stored: {refused[0]!r}")
    return {"start": start, "flushed": flushed}


async def js_ping(ns: argparse.Namespace) -> dict[str, Any]:
    nc, js = await _js(ns)
    pull = await _consumer(js, ns.id)
    data = os.urandom(ns.size)
    rtts: list[float] = []
    for i in range(ns.count + ns.warmup):
        t0 = time.perf_counter()
        headers = {"Nats-Msg-Id": os.urandom(16).hex(), "Reply-To": ns.id}
        await js.publish(f"benchraw.{ns.peer}", data, headers=headers)
        msgs = await pull.fetch(1, timeout=ns.timeout)
        await msgs[0].ack()
        if i >= ns.warmup:
            rtts.append(time.perf_counter() - t0)
    await nc.close()
    return {"rtts": rtts}


def _run(coro: Any) -> Any:
    from agentmesh._eventloop import new_event_loop

    loop = new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        # (as asyncio.run does: nats-py leaves tasks behind at close, which would otherwise
        # run into the closed loop, "Event loop is closed", and fail the peer)
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.peers.jetstream_peer")
    p.add_argument(
        "role",
        choices=[
            "am-recv",
            "am-send",
            "am-echo",
            "am-ping",
            "js-recv",
            "js-send",
            "js-echo",
            "js-ping",
            "js-tuned-recv",
            "js-tuned-send",
        ],
    )
    p.add_argument("--servers", required=True)
    p.add_argument("--prefix", default="agentmesh")
    p.add_argument("--id", required=True)
    p.add_argument("--peer", default="")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--timeout", type=float, default=120.0)
    ns = p.parse_args(argv)
    watchdog = threading.Timer(ns.timeout + 30, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()
    role = ns.role
    if role in ("am-recv", "am-echo"):
        out = am_receiver(ns, echo=role == "am-echo")
    elif role == "am-send":
        out = am_sender(ns)
    elif role == "am-ping":
        out = am_ping(ns)
    elif role in ("js-recv", "js-echo"):
        out = _run(js_receiver(ns, echo=role == "js-echo"))
    elif role == "js-send":
        out = _run(js_sender(ns))
    elif role == "js-tuned-recv":
        out = _run(js_tuned_receiver(ns))
    elif role == "js-tuned-send":
        out = _run(js_tuned_sender(ns))
    else:
        out = _run(js_ping(ns))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
