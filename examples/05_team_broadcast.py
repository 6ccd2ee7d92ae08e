"""A coordinator briefs a team of workers over an encrypted group, on a real network hub.

The example starts a hub process on 127.0.0.1 itself (agentmesh.testing.HubProcess), puts a
coordinator and three workers on it, creates the group "team", broadcasts a plan (sealed and
signed once for everybody), collects each worker's answer (sent to the group too), removes one
worker and shows that the next broadcast reaches only the others. Exits 0 when every step held.

Run: python examples/05_team_broadcast.py
"""

import sys
import tempfile
import threading
import time
from pathlib import Path

from agentmesh import Agent
from agentmesh.hubs import NetworkHub
from agentmesh.testing import HubProcess

WORKERS = ["worker-1", "worker-2", "worker-3"]


def wait_for(condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.01)


def main():
    with (
        tempfile.TemporaryDirectory() as tmp,
        HubProcess(Path(tmp) / "hub.sqlite3", 0, log_level="warning").start() as hub,
    ):
        net = NetworkHub("127.0.0.1", hub.port)
        lock = threading.Lock()
        heard = {name: [] for name in ["coordinator", *WORKERS]}

        def listener(name):
            def on_message(msg):
                with lock:
                    heard[name].append((msg.group, msg.sender, msg.text))
                print(f"  {name:12} <- {msg.sender:12} [{msg.group}] {msg.text}")

            return on_message

        coordinator = Agent("coordinator", hub=net)
        coordinator.on_message(listener("coordinator"))
        workers = {}
        for name in WORKERS:
            worker = Agent(name, hub=net)
            worker.on_message(listener(name))
            workers[name] = worker

        team = coordinator.create_group("team", members=WORKERS)
        wait_for(lambda: all(w.groups() for w in workers.values()), "the invitations")
        print(f"group {team.id!r}: {team.members}")

        print("coordinator broadcasts the plan:")
        team.send(text="plan: split the corpus in three and summarise your part")
        wait_for(lambda: all(heard[w] for w in WORKERS), "every worker to get the plan")

        print("each worker answers the whole team:")
        for name, worker in workers.items():
            worker.group("team").send(text=f"{name}: on it")
        wait_for(lambda: len(heard["coordinator"]) == 3, "the three answers")

        print("worker-3 is removed; the next broadcast reaches the other two only:")
        team.remove("worker-3")
        wait_for(lambda: not workers["worker-3"].groups(), "worker-3's removal")
        before = len(heard["worker-3"])
        team.send(text="worker-3 is off the project; new split in two")
        wait_for(lambda: len(heard["worker-1"]) == 4 and len(heard["worker-2"]) == 4, "it")
        time.sleep(0.2)
        assert len(heard["worker-3"]) == before, "a removed worker got a group message"

        for agent in [coordinator, *workers.values()]:
            agent.close()
        net.close()
    print("ok")


if __name__ == "__main__":
    main()
