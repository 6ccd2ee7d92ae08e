"""Prints one of the two commands that open README.md ("demo" or "test").

CI runs the README's test command through this script, so the README and CI cannot drift apart.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def commands() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    if len(blocks) < 2:
        raise SystemExit("README.md must open with two ```bash blocks: the demo and the tests")
    return {"demo": blocks[0].strip(), "test": blocks[1].strip()}


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "test"
    print(commands()[which])
