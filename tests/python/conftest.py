"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh import LocalHub
from agentmesh.hubs import NetworkHub
from agentmesh.testing import HubProcess


@pytest.fixture(params=["local", "network"])
def every_hub(request, tmp_path: Path):
    """The test once on a LocalHub and once on a network hub (a real hub process on
    127.0.0.1, stopped by its process id)."""
    if request.param == "local":
        yield LocalHub()
        return
    with HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start() as proc:
        yield NetworkHub("127.0.0.1", proc.port)
