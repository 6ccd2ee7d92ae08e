"""A coordinator hands tasks to four workers and waits for their results (request and reply).

Every task and every result is end-to-end encrypted between the coordinator and one worker; the
workers cannot read each other's traffic and the hub can read none of it.

Run: python examples/02_multi_agent.py             (in-process LocalHub)
     python examples/02_multi_agent.py --network   (a network hub on 127.0.0.1, started here)
"""

import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agentmesh import Agent, LocalHub, NetworkHub, NetworkHubServer

DOCUMENTS = [
    "agents talk to agents",
    "every message is sealed with AES-256-GCM",
    "signatures prove who sent what",
    "the hub only routes ciphertext",
    "sessions ratchet forward after every message",
    "replayed envelopes are refused",
    "identities are pinned on first use",
    "four workers share the load",
]


def run(hub) -> None:
    coordinator = Agent("coordinator", hub=hub)
    workers = [Agent(f"worker-{i}", hub=hub) for i in range(1, 5)]

    def count_words(msg):
        if not msg.is_request:
            return
        document = msg.payload.get("document")
        if not isinstance(document, str):
            msg.reply_error("a task needs a 'document' string")
            return
        words = len(document.split())
        msg.reply(text=f"{words} words", words=words)

    for worker in workers:
        worker.on_message(count_words)

    @coordinator.on_error
    def rejected(exc):
        print(f"rejected an envelope: {exc}")

    peers = sorted(p for p in coordinator.list_peers() if p.startswith("worker-"))
    print(f"coordinator sees {len(peers)} workers: {', '.join(peers)}")

    def ask(task_id: int):
        worker_id = peers[task_id % len(peers)]
        reply = coordinator.request(
            worker_id,
            text=f"count the words of task {task_id}",
            timeout=30.0,
            document=DOCUMENTS[task_id],
        )
        return task_id, worker_id, reply.payload["words"]

    # the tasks go out at once; each call waits for its own reply
    with ThreadPoolExecutor(max_workers=len(peers)) as pool:
        answers = pool.map(ask, range(len(DOCUMENTS)))
        results = {task_id: (worker_id, words) for task_id, worker_id, words in answers}

    print()
    for task_id in sorted(results):
        worker_id, words = results[task_id]
        print(f"task {task_id}: {words:2d} words  (by {worker_id})  {DOCUMENTS[task_id]!r}")
    assert len(results) == len(DOCUMENTS), "every task must have a result"
    status = coordinator.status()
    print(
        f"\ntotal: {sum(w for _, w in results.values())} words; "
        f"coordinator status: {status['sent']} sent, {status['received']} received, "
        f"{status['rejected']} rejected"
    )
    for agent in (coordinator, *workers):
        agent.close()


def main() -> None:
    if "--network" not in sys.argv[1:]:
        run(LocalHub())
        return
    with tempfile.TemporaryDirectory(prefix="agentmesh-example-") as tmp:
        server = NetworkHubServer(port=0, store_path=str(Path(tmp) / "hub.sqlite3"))
        server.start(block=False)
        try:
            print(f"network hub on 127.0.0.1:{server.port}")
            hub = NetworkHub("127.0.0.1", server.port)
            run(hub)
            hub.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
