"""The allocator policy: importing and using agentmesh leaves the process's malloc settings as
they are (a fresh process with glibc gives the megabyte objects of a 1 MiB message back to the
kernel after every message), and ``keep_freed_memory`` is the explicit opt-in that keeps them.
Each case runs in a fresh process with default settings, as a user's program starts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

import agentmesh
from agentmesh import keep_freed_memory

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the policy concerns glibc's malloc"
)

CHILD = """
import json, resource, sys
import agentmesh
from agentmesh.crypto import AgentKeyPair, perform_key_exchange
opted_in = agentmesh.keep_freed_memory(8 << 20) if sys.argv[1] == "opt-in" else None
alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")
a = perform_key_exchange(alice, bob.public_bundle())
b = perform_key_exchange(bob, alice.public_bundle())
payload = {"data": b"a" * (1 << 20)}
for _ in range(3):
    assert b.unseal(a.seal(payload).to_bytes()) == payload
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    b.unseal(a.seal(payload).to_bytes())
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"faults": faults, "opted_in": opted_in}))
"""


def _fresh(mode: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PYTHONMALLOC")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@glibc_only
def test_agentmesh_leaves_the_malloc_settings_of_a_fresh_process_alone() -> None:
    # glibc's defaults give both megabytes back after each message: about 480 faults each.
    assert float(_fresh("default")["faults"]) > 200  # type: ignore[arg-type]


@glibc_only
def test_keep_freed_memory_reuses_the_megabytes_of_each_message() -> None:
    got = _fresh("opt-in")
    assert got["opted_in"] is True
    assert float(got["faults"]) < 20  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, -1, 2**31])
def test_keep_freed_memory_refuses_a_limit_out_of_range(limit: int) -> None:
    with pytest.raises(ValueError, match="limit must be between 1 and"):
        keep_freed_memory(limit)


@pytest.mark.parametrize("limit", ["64M", 1.5, True, None])
def test_keep_freed_memory_refuses_a_limit_that_is_not_an_int(limit: object) -> None:
    with pytest.raises(TypeError, match="limit must be an int"):
        keep_freed_memory(limit)  # type: ignore[arg-type]


def test_keep_freed_memory_is_exported() -> None:
    assert agentmesh.keep_freed_memory is keep_freed_memory
    assert "keep_freed_memory" in agentmesh.__all__
