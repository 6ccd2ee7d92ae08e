"""The event loop every agentmesh network thread runs: uvloop where it is installed.

uvloop (a dependency on CPython outside Windows) makes each loop iteration and socket hop much
cheaper, and those are most of a network round trip's time outside the crypto: a trivial relay
between three processes answers a 300-byte ping in 90-150 µs p50 on uvloop against 155-200 µs
on the standard loop (``benches/loop_floor.py``, 2-core development machine). Setting
``AGENTMESH_EVENT_LOOP=asyncio`` selects the standard loop instead (to rule the loop out when
debugging, and so the test suite keeps the fallback honest).
"""

from __future__ import annotations

import asyncio
import os

ENV_VAR = "AGENTMESH_EVENT_LOOP"


def new_event_loop() -> asyncio.AbstractEventLoop:
    choice = os.environ.get(ENV_VAR, "").strip().lower()
    if choice not in ("", "uvloop", "asyncio"):
        raise ValueError(f"{ENV_VAR} must be 'uvloop' or 'asyncio', not {choice!r}")
    if choice != "asyncio":
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` or ``"asyncio"``: for log lines and benchmark reports."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
