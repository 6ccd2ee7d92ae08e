"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentmesh import LocalHub
from agentmesh.hub_server import NetworkHubServer
from agentmesh.hubs import NetworkHub
from agentmesh.testing import HubProcess

#: ``make_server(**settings)``: a NetworkHubServer on 127.0.0.1, started in the background
ServerFactory = Callable[..., NetworkHubServer]


@pytest.fixture(params=["local", "network"])
def every_hub(request, tmp_path: Path):
    """The test once on a LocalHub and once on a network hub (a real hub process on
    127.0.0.1, stopped by its process id)."""
    if request.param == "local":
        yield LocalHub()
        return
    with HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start() as proc:
        yield NetworkHub("127.0.0.1", proc.port)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    servers: list[NetworkHubServer] = []

    def factory(**kw: Any) -> NetworkHubServer:
        kw.setdefault("store_path", tmp_path / f"hub{len(servers)}.db")
        srv = NetworkHubServer("127.0.0.1", 0, **kw)
        srv.start(block=False)
        servers.append(srv)
        return srv

    yield factory
    for srv in servers:
        srv.stop()
