"""agentmesh.testing.HubProcess, the one launcher of hub processes (tests, benchmarks, crash
campaign): the log file, bounded lines, restarts on the same port, stop by pid."""

from __future__ import annotations

import os
import sys

import pytest

from agentmesh.testing import HubProcess

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def test_log_file_lines_and_restart_on_the_same_port(tmp_path):
    log = tmp_path / "hub.log"
    hub = HubProcess(tmp_path / "hub.db", log_file=log, keep_lines=3, new_session=True)
    assert hub.stop() is None  # never started
    with hub:
        port = hub.port
        assert port > 0 and hub.address == f"127.0.0.1:{port}"
        assert os.getsid(hub.pid) == hub.pid  # its own session: a Ctrl-C does not reach it
        with pytest.raises(RuntimeError, match="already running"):
            hub.start()
        hub.kill()
        assert hub.returncode == -9 and not hub.alive()
        hub.restart()
        assert hub.port == port and hub.starts == 2
        assert len(hub.lines) <= 3
    assert hub.returncode == 0
    text = log.read_text(encoding="utf-8")
    assert text.count("===== start") == 2 and text.count("===== SIGKILL") == 1
    assert text.count(f"agentmesh-hub listening on 127.0.0.1:{port}") == 2
    assert "hub stopped" in text


def test_a_hub_that_cannot_start_is_an_error_with_its_stderr(tmp_path):
    hub = HubProcess(tmp_path / "hub.db", extra_args=["--ping-interval", "0"])
    with pytest.raises(RuntimeError, match="before listening") as info:
        hub.start(timeout=30)
    assert "ping-interval" in str(info.value)
    assert hub.returncode == 2  # a usage error
