"""Every example of spec section 7 runs as ``python examples/NN_name.py`` and exits 0.

The LLM example runs with every LLM variable removed, so it uses its offline stand-in and never
touches the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMES = [
    "01_simple_chat.py",
    "02_multi_agent.py",
    "03_persistent_keys.py",
    "04_llm_agents.py",
    "06_mcp_tools.py",
    "07_network.py",
]
#: Examples that need an optional extra, with the module that tells whether it is installed.
NEEDS = {"06_mcp_tools.py": "mcp"}
LLM_VARS = [
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_MODEL",
    "AGENTMESH_LLM_BASE_URL",
    "AGENTMESH_LLM_API_KEY",
    "AGENTMESH_LLM_MODEL",
]


def run_example(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LLM_VARS}
    env["no_proxy"] = env["NO_PROXY"] = "*"
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def test_all_examples_exist():
    assert sorted(p.name for p in EXAMPLES.glob("0*.py")) == NAMES


def needs_extra(name: str) -> None:
    module = NEEDS.get(name)
    if module is not None:
        pytest.importorskip(module, reason=f"{name} needs pip install 'agentmesh[{module}]'")


@pytest.mark.parametrize("name", NAMES)
def test_example_exits_0(name, tmp_path):
    needs_extra(name)
    result = run_example(name, cwd=tmp_path)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout.strip()
    assert list(tmp_path.iterdir()) == []  # examples leave nothing behind in the cwd


def test_simple_chat_output():
    out = run_example("01_simple_chat.py").stdout
    assert "[bob] <- alice: Hello, Bob! This is end-to-end encrypted." in out


def test_multi_agent_uses_four_workers():
    out = run_example("02_multi_agent.py").stdout
    assert "4 workers" in out
    for i in range(1, 5):
        assert f"worker-{i}" in out


def test_network_example_runs_agents_in_separate_processes():
    # several runs: a worker closed by its own handler must exit cleanly every time (it
    # once aborted at interpreter exit while its connection was still shutting down)
    for _ in range(3):
        result = run_example("07_network.py")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "online: summariser, translator" in result.stdout
        assert "translator: buh eno" in result.stdout and result.stdout.endswith("done\n")


def test_multi_agent_runs_on_the_network_hub_too():
    result = run_example("02_multi_agent.py", "--network")
    assert result.returncode == 0, result.stderr
    assert "network hub on 127.0.0.1:" in result.stdout
    assert "total: 41 words" in result.stdout and "0 rejected" in result.stdout


def test_mcp_example_lists_calls_and_refuses():
    needs_extra("06_mcp_tools.py")
    result = run_example("06_mcp_tools.py")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "network hub on 127.0.0.1:" in out
    assert "planner sees tool 'word_count'" in out
    assert "planner sees tool 'celsius_to_fahrenheit'" in out
    assert "word_count('agents call agents' tools') = 4" in out
    assert "celsius_to_fahrenheit(21.5) = 70.7" in out
    assert "intruder refused: agent 'intruder' is not allowed to call this MCP server" in out


def test_persistent_keys_survive_runs_with_a_directory(tmp_path):
    first = run_example("03_persistent_keys.py", "--dir", str(tmp_path))
    second = run_example("03_persistent_keys.py", "--dir", str(tmp_path))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr

    def fingerprints(out: str) -> list[str]:
        return [line.split()[1] for line in out.splitlines() if line.startswith(("alice ", "bob "))]

    assert fingerprints(first.stdout)[:2] == fingerprints(second.stdout)[:2]
    assert "sessions restored: ['bob']" in second.stdout


def test_llm_example_offline_stand_in_is_labelled():
    result = run_example("04_llm_agents.py")
    assert result.returncode == 0, result.stderr
    assert "[offline stand-in]" in result.stdout
    assert "No LLM configured" in result.stdout


def test_llm_example_configuration_is_read_from_the_environment(monkeypatch):
    """Import the example and check its config and request, without any network."""
    import importlib.util
    import io
    import json
    import urllib.request

    spec = importlib.util.spec_from_file_location("llm_example", EXAMPLES / "04_llm_agents.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for var in LLM_VARS:
        monkeypatch.delenv(var, raising=False)
    assert mod.llm_config() is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert mod.llm_config() == ("https://api.openai.com/v1", "sk-test", "gpt-4o-mini")
    monkeypatch.setenv("AGENTMESH_LLM_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("AGENTMESH_LLM_MODEL", "tiny")
    assert mod.llm_config() == ("http://127.0.0.1:9/v1", "sk-test", "tiny")
    assert mod.llm_config(offline=True) is None

    seen = {}

    class FakeResponse(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(request, timeout):
        seen["url"] = request.full_url
        seen["auth"] = request.get_header("Authorization")
        seen["body"] = json.loads(request.data)
        answer = {"choices": [{"message": {"content": " 42 "}}]}
        return FakeResponse(json.dumps(answer).encode())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    text = mod.chat_completion(mod.llm_config(), "system prompt", "question?")
    assert text == "42"
    assert seen["url"] == "http://127.0.0.1:9/v1/chat/completions"
    assert seen["auth"] == "Bearer sk-test"
    assert seen["body"]["model"] == "tiny"
    assert seen["body"]["messages"][-1] == {"role": "user", "content": "question?"}
