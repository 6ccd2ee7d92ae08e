"""Starting a hub server as a careful user would: inside a ``with`` block (which starts it),
into a store directory that does not exist yet (created, and said so)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agentmesh import Agent, NetworkHubServer


def test_start_inside_a_with_block_is_harmless(tmp_path: Path) -> None:
    with NetworkHubServer(port=0, store_path=str(tmp_path / "hub.sqlite3")) as server:
        server.start(block=False)  # already running: nothing happens
        with pytest.raises(RuntimeError, match="already running in the background"):
            server.start()  # blocking on it cannot be what was meant
        with Agent("a", hub=f"127.0.0.1:{server.port}") as agent:
            assert agent.hub is not None


def test_a_missing_store_directory_is_created_and_logged(tmp_path: Path, caplog) -> None:
    store = tmp_path / "new" / "place" / "hub.sqlite3"
    with (
        caplog.at_level(logging.INFO, logger="agentmesh.hub"),
        NetworkHubServer(port=0, store_path=str(store)),
    ):
        pass
    assert store.exists()
    assert any("created the store's directory" in r.getMessage() for r in caplog.records)
