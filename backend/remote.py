"""An Engine that runs requests on a studio server (`studio-serve`, backend/serve.py) over HTTP.

`RemoteEngine(url, token).generate(request, cancel)` sends the request as a recipe and yields the server's
step events and its Done like a local engine, so the window's engine thread, the CLI and the tests use it
unchanged. Cancel closes the stream at once (the engine thread is free again) and tells the server, which
stops its engine within one step. Only the standard library speaks HTTP here: a laptop running the window
needs no Ray.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from backend import strict_json, wire
from backend.errors import RequestError
from backend.events import Done, Event, StepEvent
from backend.request import Request
from backend.wire import RemoteError

CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ServerInfo:
    """What a server says about itself: its engines, the models it lists, its replicas' device."""

    url: str
    engines: tuple[str, ...]
    models: tuple[dict[str, str], ...]  # {"engine", "name", "kind"}
    device: str
    scaling: dict[str, Any]


class RemoteEngine:
    """Runs requests on the studio server at `url` (http:// or https://), sending `token` with every call.

    `client` names this engine to the server: a newer run from the same client cancels the older one there.
    """

    def __init__(self, url: str, token: str, client: str | None = None) -> None:
        parts = urlsplit(url.strip().rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"{url!r} is not a server address; give one like http://gpu-box:8188")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self.token = token.strip()
        if not self.token:
            raise RemoteError(
                "a studio server needs its access token (studio-serve prints it at first start)"
            )
        self.client = client or uuid.uuid4().hex
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path
        # Called with every event line as the server sent it (JSON object), before it is decoded: benchmarks
        # read the server's send time `t` from it.
        self.trace: Callable[[dict[str, Any]], None] | None = None

    @property
    def label(self) -> str:
        """The server as a person would name it: host:port."""
        return f"{self._host}:{self._port}"

    # -- calls -----------------------------------------------------------------------------------------
    def info(self) -> ServerInfo:
        """Ask the server for its engines, models and device."""
        data = self._call("GET", wire.INFO_PATH)
        try:
            return ServerInfo(
                self.url,
                tuple(str(e) for e in data["engines"]),
                tuple({k: str(v) for k, v in m.items()} for m in data["models"]),
                str(data.get("device", "unknown")),
                dict(data.get("scaling") or {}),
            )
        except (KeyError, TypeError, AttributeError):
            raise RemoteError(f"{self.url} did not answer like a studio server") from None

    def status(self, run_id: str) -> dict[str, Any]:
        """A run's state on the server and the steps its engine computed."""
        return self._call("GET", wire.run_path(quote(run_id)))

    def cancel_run(self, run_id: str, wait: float = 10.0) -> dict[str, Any]:
        """Cancel a run on the server; with `wait`, answer once its engine stopped (state and steps)."""
        return self._call(
            "POST", wire.run_path(quote(run_id), "cancel") + f"?wait={wait:g}", timeout=wait + 10
        )

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """Run `request` on the server, yielding its StepEvents and, unless cancelled, its Done."""
        request.validate()  # the same checks as a local engine, before anything is sent
        if request.grid is not None:  # a grid runs here cell by cell, each cell a run on the server
            from backend.grid_run import run_grid

            return run_grid(self, request, cancel)
        return self._run(request, cancel)

    def _run(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        query = f"?client={quote(self.client)}&id={quote(request.request_id)}"
        conn = self._connection(timeout=CONNECT_TIMEOUT)
        over = threading.Event()
        watcher = None
        step = total = 0
        try:
            try:
                conn.request(
                    "POST",
                    self._prefix + wire.RUNS_PATH + query,
                    wire.encode_request(request),
                    self._headers(),
                )
                response = conn.getresponse()
            except OSError as exc:
                raise self._unreachable(exc) from None
            if response.status != 200:
                raise self._refused(response)
            if conn.sock is not None:  # a step may take longer than any timeout; keepalive spots a dead peer
                conn.sock.settimeout(None)
                _keepalive(conn.sock)
            watcher = threading.Thread(
                target=self._watch, args=(conn, request.request_id, cancel, over), name="studio-remote-cancel"
            )
            watcher.start()
            while True:
                try:
                    raw = response.readline(wire.MAX_LINE_BYTES)
                except (OSError, http.client.HTTPException):
                    raw = b""
                if cancel.is_set():
                    return  # cancelled: whatever arrives now belongs to a run nobody wants
                if not raw:
                    where = f" during step {step + 1} of {total}" if total else ""
                    raise RemoteError(
                        f"lost the connection to the studio server at {self.label}{where}; the run was "
                        "abandoned and nothing from it was kept"
                    )
                data = wire.parse_line(raw)
                if self.trace is not None:
                    self.trace(data)
                kind = data["type"]
                if kind in ("step", "done"):
                    event = wire.decode_event(data, request)
                    if isinstance(event, StepEvent):
                        step, total = event.step, event.total
                    yield event
                    if isinstance(event, Done):
                        return
                elif kind == "error":
                    raise RemoteError(f"the server at {self.label}: {data.get('message', 'the run failed')}")
                elif kind == "cancelled":
                    raise RemoteError(
                        f"the server at {self.label} cancelled this run ({data.get('reason', '')})"
                    )
        finally:
            over.set()
            if watcher is not None:
                watcher.join()
            conn.close()

    # -- plumbing --------------------------------------------------------------------------------------
    def _watch(
        self, conn: http.client.HTTPConnection, run_id: str, cancel: threading.Event, over: threading.Event
    ) -> None:
        """Wake the reading thread when `cancel` is set: close the stream and tell the server."""
        while not over.is_set():
            if cancel.wait(0.02):
                if not over.is_set():
                    _shut(conn)
                    with contextlib.suppress(Exception):  # the stream's end cancels it on the server anyway
                        self.cancel_run(run_id, wait=0)
                return

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    def _call(self, method: str, path: str, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
        conn = self._connection(timeout)
        try:
            try:
                conn.request(method, self._prefix + path, headers=self._headers())
                response = conn.getresponse()
                body = response.read()
            except OSError as exc:
                raise self._unreachable(exc) from None
            if response.status != 200:
                raise self._refused(response, body)
            try:
                data = strict_json.loads(body)
            except ValueError:
                raise RemoteError(f"{self.url} did not answer like a studio server") from None
            if not isinstance(data, dict):
                raise RemoteError(f"{self.url} did not answer like a studio server")
            return data
        finally:
            conn.close()

    def _unreachable(self, exc: OSError) -> RemoteError:
        why = exc.strerror or str(exc) or type(exc).__name__
        return RemoteError(
            f"cannot reach the studio server at {self.url}: {why} (is studio-serve running there?)"
        )

    def _refused(self, response: http.client.HTTPResponse, body: bytes | None = None) -> Exception:
        if body is None:
            body = response.read(64 * 1024)
        try:
            detail = str(strict_json.loads(body).get("detail", ""))
        except (ValueError, AttributeError):
            detail = ""
        if response.status == 401:
            return RemoteError(f"the studio server at {self.label} refused the access token")
        if response.status in (400, 413):
            return RequestError(
                f"the server at {self.label} refused the request: {detail or response.reason}"
            )
        return RemoteError(
            f"the studio server at {self.label} answered {response.status}: {detail or response.reason}"
        )


def _shut(conn: http.client.HTTPConnection) -> None:
    """Unblock a thread reading from `conn` (close() alone does not wake a blocked recv)."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _keepalive(sock: socket.socket) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 15)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
