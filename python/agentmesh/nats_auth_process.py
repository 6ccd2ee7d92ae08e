"""``agentmesh nats-auth`` as a child process: for ``agentmesh nats-dev``, the tests and the
benchmarks. Started with the same Python, stopped (or SIGKILLed) by its process id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .cli_nats_auth import READY

__all__ = ["AuthServiceProcess"]


class AuthServiceProcess:
    """One authorization service for ``servers``, its keys in ``keys`` (a directory), its
    output in ``log``; ``options``: more of ``agentmesh nats-auth``'s options."""

    def __init__(
        self,
        servers: Sequence[str],
        keys: str | os.PathLike[str],
        log: str | os.PathLike[str],
        *,
        lifetime: float = 600.0,
        prefix: str = "agentmesh",
        options: Sequence[str] = (),
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "agentmesh.cli",
            "nats-auth",
            "--servers",
            ",".join(servers),
            "--keys",
            str(keys),
            "--lifetime",
            str(lifetime),
            "--prefix",
            prefix,
            *options,
        ]
        self.log = Path(log)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the authorization service was never started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> AuthServiceProcess:
        """Starts it and waits until it serves."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while READY not in self.log.read_text("utf-8", "replace")[offset:]:
            if not self.alive():
                raise RuntimeError(f"agentmesh nats-auth exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"agentmesh nats-auth not ready in {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        return self

    def stop(self, grace: float = 10.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""
