"""Agents in separate processes, through a network hub this example starts itself.

The parent starts a hub on 127.0.0.1 (a free port, a store in a temporary directory), then two
worker processes; each worker serves requests until told to stop. The parent, a third agent,
waits until both are online, asks each a question, prints the answers, stops them and the hub,
and exits 0. Every message is end-to-end encrypted between two processes; the hub routes
ciphertext and keeps it on disk until it is acknowledged.

Run: python examples/07_network.py
"""

import subprocess
import sys
import tempfile
from pathlib import Path

from agentmesh import Agent, NetworkHubServer

WORKERS = ["summariser", "translator"]


def worker(address: str, name: str, key: str) -> None:
    """One worker process: answers until a message says "stop"."""
    agent = Agent(name, hub=address, keypair_path=key)

    @agent.on_message
    def answer(msg):
        if msg.text == "stop":
            agent.close()
        elif name == "summariser":
            msg.reply(text=f"{len(msg.text.split())} words, starting with {msg.text.split()[0]!r}")
        else:
            msg.reply(text=msg.text[::-1])

    agent.run_forever()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="agentmesh-example-") as tmp:
        server = NetworkHubServer(port=0, store_path=str(Path(tmp) / "hub.sqlite3"))
        server.start(block=False)
        address = f"127.0.0.1:{server.port}"
        print(f"hub on {address}")
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", address, name, str(Path(tmp) / name)]
            )
            for name in WORKERS
        ]
        try:
            with Agent("client", hub=address) as client:
                for name in WORKERS:
                    client.wait_for_peer(name, timeout=60)
                print(f"online: {', '.join(WORKERS)} (each in its own process)")
                question = "agents in separate processes talk through one hub"
                for name in WORKERS:
                    reply = client.request(name, text=question, timeout=30)
                    print(f"{name}: {reply.text}")
                for name in WORKERS:
                    client.send(name, text="stop")
                client.flush(30)
            for proc in procs:
                if proc.wait(60) != 0:
                    raise SystemExit(f"a worker exited with {proc.returncode}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            server.stop()
    print("done")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(*sys.argv[2:5])
    else:
        main()
