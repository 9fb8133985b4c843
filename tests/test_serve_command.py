"""`studio-serve` as a person runs it: a first start makes and prints a token, stdout holds one `ready URL`
line, every port it opens is on 127.0.0.1, and SIGTERM stops it with nothing left running.
(tests/test_remote.py stops its server with a terminal's Ctrl+C instead.)"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import psutil
from serve_process import ServerProcess

from backend.remote import RemoteEngine


def test_first_start_prints_a_token_serves_on_loopback_and_sigterm_leaves_nothing(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    server = ServerProcess(["--token-file", str(token_file)], tmp_path / "serve.log", token=None)
    try:
        url = server.wait_ready()
        assert server.ready_line == f"ready http://127.0.0.1:{server.port}\n" and url.endswith(
            str(server.port)
        )
        token = token_file.read_text().strip()
        assert re.search(rf"new access token .*: {re.escape(token)}$", server.log.read_text(), re.M)
        assert RemoteEngine(url, token).info().device == "cpu"

        tree = server.tree()
        listening = {
            (p.name(), c.laddr.ip)
            for p in tree
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for _, ip in listening), listening
        temp_dirs = {
            m.group(0) for p in tree for m in re.finditer(r"/tmp/studio-ray-\w+", " ".join(p.cmdline()))
        }

        assert server.stop(signal.SIGTERM) == 0
        assert server.leftovers() == []
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
        assert temp_dirs and not any(Path(d).exists() for d in temp_dirs)
        assert server.proc.stdout is not None and server.proc.stdout.read() == b""  # one line, nothing more
    finally:
        server.close()
