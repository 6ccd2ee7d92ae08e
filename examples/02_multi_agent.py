"""A coordinator hands tasks to four workers and collects their results.

Every task and every result is end-to-end encrypted between the coordinator and one worker; the
workers cannot read each other's traffic and the hub can read none of it.

Run: python examples/02_multi_agent.py
"""

from agentmesh import Agent, LocalHub

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

hub = LocalHub()
coordinator = Agent("coordinator", hub=hub)
workers = [Agent(f"worker-{i}", hub=hub) for i in range(1, 5)]


def make_worker(worker):
    @worker.on_message
    def work(msg):
        if msg.type != "task":
            return
        words = len(msg.payload["document"].split())
        worker.send(
            msg.sender,
            text=f"{words} words",
            type="result",
            task_id=msg.payload["task_id"],
            words=words,
        )


for w in workers:
    make_worker(w)

results = {}


@coordinator.on_message
def collect(msg):
    if msg.type == "result":
        results[msg.payload["task_id"]] = (msg.sender, msg.payload["words"])


@coordinator.on_error
def rejected(exc):
    print(f"rejected an envelope: {exc}")


peers = coordinator.list_peers()
print(f"coordinator sees {len(peers)} workers: {', '.join(peers)}")
for task_id, document in enumerate(DOCUMENTS):
    worker_id = peers[task_id % len(peers)]
    coordinator.send(
        worker_id,
        text=f"count the words of task {task_id}",
        type="task",
        task_id=task_id,
        document=document,
    )

coordinator.flush()  # immediate on a LocalHub; on a NetworkHub it waits for the hub's acks

print()
for task_id in sorted(results):
    worker_id, words = results[task_id]
    print(f"task {task_id}: {words:2d} words  (by {worker_id})  {DOCUMENTS[task_id]!r}")
assert len(results) == len(DOCUMENTS), "every task must have a result"
print(
    f"\ntotal: {sum(w for _, w in results.values())} words; "
    f"coordinator status: {coordinator.status()['sent']} sent, "
    f"{coordinator.status()['received']} received, {coordinator.status()['rejected']} rejected"
)

for agent in (coordinator, *workers):
    agent.close()
