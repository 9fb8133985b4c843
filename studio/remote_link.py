"""The window's link to a studio server (`studio-serve`): connect, run everything there, come back.

Connecting asks the server for its models and device on a short-lived thread (a slow or absent server
must not freeze the window); once it answers, `Engines.use_remote` sends every run from the next one on to
the server, through the same engine thread, previews, Cancel and Live as a local engine. The address and
token are kept in the settings; the token is never shown again.
"""

from __future__ import annotations

import logging
import threading

from PySide6.QtCore import QObject, Signal, Slot

from backend.engines import Engines
from backend.errors import StudioError
from backend.remote import RemoteEngine, ServerInfo
from studio.settings import Settings

log = logging.getLogger(__name__)


class RemoteLink(QObject):
    """Connects the session's engines to a server and back.

    Signals (on the link's thread, the GUI thread):
      connecting(str)         a connection to this URL began
      connected(ServerInfo)   the server answered: runs go there from now on
      failed(str)             it did not; the message says why (runs stay where they were)
      disconnected()          runs are on this machine again
    """

    connecting = Signal(str)
    connected = Signal(object)
    failed = Signal(str)
    disconnected = Signal()

    _w_answered = Signal(object, object)  # from the probing thread: (RemoteEngine, ServerInfo)
    _w_failed = Signal(str)

    def __init__(self, engines: Engines, settings: Settings | None = None) -> None:
        super().__init__()
        self.engines = engines
        self.settings = settings
        self.info: ServerInfo | None = None
        self.engine: RemoteEngine | None = None
        self._probe: threading.Thread | None = None
        self._w_answered.connect(self._on_answered)
        self._w_failed.connect(self._on_failed)

    @property
    def active(self) -> bool:
        """True while runs go to a server."""
        return self.engine is not None

    @property
    def saved(self) -> tuple[str, str]:
        """The last server's URL and token from the settings ("" when none)."""
        if self.settings is None:
            return "", ""
        return str(self.settings.value("remote/url", "") or ""), str(
            self.settings.value("remote/token", "") or ""
        )

    def connect_to(self, url: str, token: str) -> None:
        """Ask the server at `url` for its models and device; `connected` or `failed` follows."""
        try:
            engine = RemoteEngine(url, token)
        except StudioError as exc:
            self.failed.emit(str(exc))
            return
        self.connecting.emit(engine.url)
        self.wait()
        self._probe = threading.Thread(target=self._ask, args=(engine,), name="studio-remote-probe")
        self._probe.start()

    def disconnect_server(self) -> None:
        """Run on this machine again from the next run on."""
        self.engines.use_remote(None)
        self.engine = self.info = None
        if self.settings is not None:
            self.settings.set_value("remote/active", False)
        self.disconnected.emit()

    def wait(self, timeout: float = 15.0) -> None:
        """Wait for a probe still asking (at shutdown; a probe gives up after its own timeout)."""
        if self._probe is not None:
            self._probe.join(timeout)
            self._probe = None

    def _ask(self, engine: RemoteEngine) -> None:
        try:
            self._w_answered.emit(engine, engine.info())
        except StudioError as exc:
            self._w_failed.emit(str(exc))
        except Exception as exc:  # anything else a broken server causes: say it, keep the window
            log.warning("studio server probe failed", exc_info=exc)
            self._w_failed.emit(f"{engine.url} did not answer like a studio server ({exc})")

    @Slot(object, object)
    def _on_answered(self, engine: RemoteEngine, info: ServerInfo) -> None:
        self.engine, self.info = engine, info
        self.engines.use_remote(engine)
        if self.settings is not None:
            self.settings.set_value("remote/url", engine.url)
            self.settings.set_value("remote/token", engine.token)
            self.settings.set_value("remote/active", True)
        self.connected.emit(info)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        where = f"the server at {self.engine.label}" if self.engine is not None else "this computer"
        self.failed.emit(f"{message}. Runs stay on {where}.")
