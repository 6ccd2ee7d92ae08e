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


def literal_block(doc: str) -> str:
    """The first reStructuredText literal block (after a line ending in ``::``) of ``doc``."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("::")) + 1
    block: list[str] = []
    for line in lines[start:]:
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    code = textwrap.dedent("\n".join(block)).strip()
    assert code, "no literal block found"
    return code


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


def test_the_literal_block_is_found_whole():
    code = literal_block("Intro::\n\n    a = 1\n\n    b = a\n\nAfter.\n")
    assert code == "a = 1\n\nb = a"


def test_testing_module_docstring_example_runs():
    code = literal_block(agentmesh.testing.__doc__ or "")
    assert "HostileHub(" in code and "Inbox(" in code
    run(code, "agentmesh.testing docstring")


def test_readme_hostile_hub_example_runs():
    out = run(readme_python_block("HostileHub"), "README hostile hub")
    assert "rejected" in out
