"""Fixtures of the hardening tests: the fork server that starts real dcbench processes quickly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


class ForkServer:
    """Client of ``fork_server.py``: start commands, kill them, wait for them."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        server = Path(__file__).with_name("fork_server.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(server)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def start(self, argv, cwd: Path, env: dict, log: Path, kill_in_write: int | None = None) -> int:
        """Start ``dcbench ARGV`` in ``cwd`` with ``env`` added, output to ``log``; its pid."""
        request = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": env, "log": str(log)}
        self.proc.stdin.write(json.dumps({**request, "kill_in_write": kill_in_write}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def wait(self, pid: int) -> int:
        """Wait for ``pid`` to end: its exit code, or ``-SIGNAL`` if it was killed."""
        self.proc.stdin.write(json.dumps({"wait": pid}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert answer["pid"] == pid
        return answer["status"]

    def kill(self, pid: int) -> None:
        """SIGKILL ``pid`` and its process group (its subprocesses)."""
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it had finished

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="session")
def fork_server():
    """A :class:`ForkServer` shared by the tests that kill or race real processes."""
    server = ForkServer()
    yield server
    server.close()
