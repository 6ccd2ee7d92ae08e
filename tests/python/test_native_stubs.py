"""The .pyi stubs of agentmesh._native match the compiled module (mypy.stubtest)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_stubs_match_the_native_module(tmp_path):
    pytest.importorskip("mypy")
    allow = tmp_path / "allowlist.txt"
    # The memory benchmark's helper (`_bench_rust_heap`) is private and deliberately unstubbed,
    # so the runtime __all__ lists a name the stub's does not. (The floor is not in this module:
    # it is agentmesh_bench, rust/agentmesh-bench.)
    allow.write_text("agentmesh._native._bench.*\nagentmesh._native.__all__\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "agentmesh._native",
            "--allowlist",
            str(allow),
            "--ignore-unused-allowlist",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
