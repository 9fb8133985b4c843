"""A real `studio-serve` for tests: started on 127.0.0.1 in its own process group, stopped, and checked for
leftover processes.

Every process the server starts (Ray's GCS, raylet, agents, the Serve replicas) inherits a marker in its
environment, so after a stop the tests can find any that survived, even one that lost its parent.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

MARKER = "STUDIO_SERVE_TEST"
START_TIMEOUT = 300.0  # seconds; Ray and Serve start in about 20 s on a quiet 2-core machine


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command() -> list[str]:
    """The installed `studio-serve` script beside this Python (what the README installs)."""
    script = Path(sys.executable).with_name("studio-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "backend.serve_command"]


class ServerProcess:
    """One `studio-serve` process and everything it starts."""

    def __init__(self, args: list[str], log: Path, token: str | None = "test-token-" + "0" * 16) -> None:
        self.port = free_port()
        self.token = token
        self.url = ""
        self.marker = uuid.uuid4().hex
        self.log = log
        env = dict(os.environ, **{MARKER: self.marker})
        argv = [*serve_command(), "--port", str(self.port), "--num-cpus", "2", "--no-hub", *args]
        if token:
            argv += ["--token", token]
        self._stderr = log.open("wb")
        # Its own process group, like a job in a terminal: Ctrl+C there reaches the whole group.
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._stderr, env=env, start_new_session=True, cwd=log.parent
        )
        self.ready_line = ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        """Read stdout until `ready URL`; the URL."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=1.0):
                    if self.proc.poll() is not None:
                        break
                    continue
                line = self.proc.stdout.readline().decode()
                if not line:
                    break
                if line.startswith("ready "):
                    self.ready_line = line
                    self.url = line.split()[1]
                    return self.url
        self.stop(signal.SIGKILL)
        raise AssertionError(
            f"studio-serve did not get ready:\n{self.log.read_text(errors='replace')[-3000:]}"
        )

    def tree(self) -> list[psutil.Process]:
        """The server and every process below it now."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the server's process group, as a terminal's Ctrl+C does."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> int | None:
        """Send `sig` to the server alone and wait for it to exit; its exit status (None if it hung)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        return self.proc.returncode

    def leftovers(self, wait: float = 10.0) -> list[str]:
        """Processes still running with this server's marker (after `wait` seconds for them to end)."""
        deadline = time.monotonic() + wait
        while True:
            found = _marked(self.marker)
            if not found or time.monotonic() > deadline:
                return [f"{p.pid} {_name(p)}" for p in found]
            time.sleep(0.2)

    def close(self) -> None:
        """Stop the server if it runs and kill anything left of it (after a test has failed)."""
        if self.stop(signal.SIGTERM, timeout=60) is None:
            self.proc.kill()
            self.proc.wait(10)
        for p in _marked(self.marker):
            with contextlib.suppress(psutil.Error):
                p.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    needle = f"{MARKER}={marker}".encode()
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    p = psutil.Process(pid)
                    if p.status() != psutil.STATUS_ZOMBIE:
                        found.append(p)
        except (OSError, psutil.Error):
            continue
    return found


def _name(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:80] or p.name()
    except psutil.Error:
        return "?"
