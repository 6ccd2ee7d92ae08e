"""An agent's identity (and its sessions) survive a restart.

The first run creates key files; the second run -- new objects, a new hub, as after a process
restart -- loads them: same fingerprints, and the sessions continue where they stopped.

Run: python examples/03_persistent_keys.py [--dir DIR]
(without --dir a temporary directory is used and removed afterwards; with --dir, run it twice and
the fingerprints stay the same across runs)
"""

import argparse
import os
import stat
import tempfile
from pathlib import Path

from agentmesh import Agent, LocalHub


def run(key_dir: Path, label: str) -> tuple[str, str]:
    hub = LocalHub()
    alice = Agent("alice", hub=hub, keypair_path=key_dir / "alice.key")
    bob = Agent("bob", hub=hub, keypair_path=key_dir / "bob.key")
    print(f"--- {label} ---")
    print(f"alice {alice.fingerprint}  sessions restored: {alice.status()['active_sessions']}")
    print(f"bob   {bob.fingerprint}  sessions restored: {bob.status()['active_sessions']}")

    bob.on_message(lambda msg: print(f"[bob] <- {msg.sender}: {msg.text}"))
    alice.send("bob", text=f"Hello from the {label}.")

    fingerprints = (alice.fingerprint, bob.fingerprint)
    alice.close()  # writes the session state beside the key file
    bob.close()
    return fingerprints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="keep the key files here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        key_dir = args.dir or Path(tmp)
        key_dir.mkdir(parents=True, exist_ok=True)
        first = run(key_dir, "first run")
        mode = stat.S_IMODE(os.stat(key_dir / "alice.key").st_mode)
        print(f"\nkey files: {sorted(p.name for p in key_dir.iterdir())}, mode {mode:o}\n")
        second = run(key_dir, "second run (after a restart)")
        assert first == second, "the identities must survive the restart"
        print("\nsame fingerprints after the restart: the identities survived")


if __name__ == "__main__":
    main()
