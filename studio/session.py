"""The session: one window's parts, built and shut down together.

    session.model     RequestModel: the panels' values, a signal per field (studio/request_model.py)
    session.runs      RunController: Generate, Cancel, Live, seed policy, lineage, results
                      (studio/run_controller.py, whose docstring traces a slider move to a painted frame)
    session.document  Document: layers, mask, undo
    session.gallery   Gallery: results with recipes and lineage
    session.host      EngineHost: the engine thread
    session.remote    RemoteLink: runs on a studio server instead (studio/remote_link.py), when connected
    session.controls  ControlLayers: layers bound to ControlNets, feeding the model's controls

Panels edit `session.model` and listen to its field signals; actions call `session.runs`; nothing else
connects the two. The session only builds them, restores the last settings and saves them on shutdown.
"""

from __future__ import annotations

from backend.engine import Engine
from backend.engines import Engines
from backend.request import Request
from studio.control_layers import ControlLayers
from studio.document import Document
from studio.engine_host import EngineHost
from studio.gallery import Gallery
from studio.remote_link import RemoteLink
from studio.request_model import HISTORY_SIZE, RequestModel
from studio.run_controller import RunController
from studio.settings import Settings

__all__ = ["HISTORY_SIZE", "Session"]


class Session:
    """The request model, run controller, document, gallery and engine thread of one window."""

    def __init__(
        self,
        engine: Engine | None = None,
        document: Document | None = None,
        gallery: Gallery | None = None,
        settings: Settings | None = None,
        request: Request | None = None,
    ) -> None:
        self.settings = settings
        if engine is None:
            engine = Engines(**(settings.engine_options() if settings else {}))
        self.document = document if document is not None else Document()
        self.gallery = gallery if gallery is not None else Gallery()
        self.host = EngineHost(engine)
        stored = settings.last_request if settings is not None and request is None else None
        base = request or stored or Request()
        self.model = RequestModel(
            base.replace(init_image=None, mask=None, width=self.document.width, height=self.document.height),
            history=settings.prompt_history[:HISTORY_SIZE] if settings else (),
        )
        self.runs = RunController(self.model, self.document, self.gallery, self.host)
        self.controls = ControlLayers(self.model, self.document)
        # Runs go to a studio server when the person connects one (the engine picker's "Remote server…").
        self.remote = RemoteLink(engine, settings) if isinstance(engine, Engines) else None

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Stop the engine thread (cancelling a run) and save preferences; True when it stopped in time."""
        self.runs.close()
        if self.remote is not None:
            self.remote.wait()
        if self.settings is not None:
            self.settings.last_request = self.model.request
            self.settings.prompt_history = self.model.prompt_history
            self.settings.sync()
        return self.host.shutdown(timeout)
