"""The code examples in docstrings and in README.md run as written.

They are not doctests (no ``>>>``), so each is cut out of its text and executed: an example that
calls a function that does not exist, or whose assertions no longer hold, fails here.
"""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from pathlib import Path

import agentmesh.testing

README = Path(__file__).resolve().parents[2] / "README.md"


def literal_blocks(doc: str) -> list[str]:
    """The reStructuredText literal blocks (each after a line ending in ``::``) of ``doc``."""
    lines = doc.splitlines()
    blocks = []
    for start, intro in enumerate(lines):
        if not intro.rstrip().endswith("::"):
            continue
        block: list[str] = []
        for line in lines[start + 1 :]:
            if line.strip() and not line.startswith(" "):
                break
            block.append(line)
        blocks.append(textwrap.dedent("\n".join(block)).strip())
    return blocks


def readme_python_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    matching = [b for b in blocks if containing in b]
    assert len(matching) == 1, f"expected one README python block with {containing!r}"
    return matching[0]


def run(code: str, name: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, name, "exec"), {"__name__": name})
    return out.getvalue()


def test_literal_blocks_are_found_whole():
    doc = "Intro::\n\n    a = 1\n\n    b = a\n\nAfter::\n\n    c = 2\nEnd.\n"
    assert literal_blocks(doc) == ["a = 1\n\nb = a", "c = 2"]


def test_testing_module_docstring_examples_run(tmp_path, monkeypatch):
    blocks = literal_blocks(agentmesh.testing.__doc__ or "")
    assert len(blocks) == 2
    assert "HostileHub(" in blocks[0] and "Inbox(" in blocks[0]
    assert "HubProcess(" in blocks[1]
    monkeypatch.chdir(tmp_path)  # the hub's store is created in the working directory
    for i, code in enumerate(blocks):
        run(code, f"agentmesh.testing docstring, example {i + 1}")


def test_readme_hostile_hub_example_runs():
    out = run(readme_python_block("HostileHub"), "README hostile hub")
    assert "rejected" in out


def test_readme_quick_start_and_request_examples_run():
    quick_start = readme_python_block('alice.send("bob", text="Hello, Bob!')
    out = run(quick_start, "README quick start")
    assert out == "[bob] <- alice: Hello, Bob! This is end-to-end encrypted.\n"
    out = run(quick_start + readme_python_block("alice.request("), "README request and reply")
    assert out.splitlines()[-1] == "SUMMARISE THIS"
