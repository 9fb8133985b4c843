"""The model/engine picker: the built-in patch engine, diffusers models found on this machine, a folder
or file the person chooses, or a studio server's models ("Remote server…"). Choosing a model is
`model.set(engine=..., model=...)`; choosing a server is `session.remote.connect_to(url, token)`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSignalBlocker, Slot
from PySide6.QtWidgets import QComboBox, QFileDialog, QWidget

from backend.request import Request
from studio.session import Session
from ui.model_folders import file_filter, pickles_allowed
from ui.remote_dialog import RemoteDialog
from ui.workers import ModelLookup

log = logging.getLogger(__name__)
BUILTIN = "patch|"  # item data: "engine|model" (a str: QVariant round-trips it exactly)
CHOOSE_FOLDER, CHOOSE_FILE, CHOOSE_REFERENCES = "folder", "file", "references"
SEARCHING = "searching"  # the placeholder shown while discovery runs
CHOOSE_REMOTE, USE_LOCAL = "remote", "local"


def discovered_models(
    model_folders: tuple[str, ...] = (), allow_pickle: bool = False
) -> list[tuple[str, str]]:
    """(label, path) of the diffusers models `backend.models` finds here (pickle checkpoints only when
    allowed, marked as such); [] when it cannot look."""
    if importlib.util.find_spec("backend.models") is None:
        return []
    try:
        from backend.models import discover

        # The licence the model's files name, so a person sees what they may do with the pictures.
        return [
            (f"{m.name} ({m.kind}{', pickle' if m.pickle else ''}{_licence(m.licence)})", m.path)
            for m in discover(model_folders)
            if allow_pickle or not m.pickle
        ]
    except Exception as exc:  # discovery is a convenience: a broken cache must not stop the window
        log.warning("model discovery failed: %s", exc)
        return []


def _run(discover: Callable[[], list[tuple[str, str]]]) -> list[tuple[str, str]]:
    return discover()


def _licence(licence: str) -> str:
    return f", licence {licence}" if licence else ""


class EnginePicker(QComboBox):
    """A combo box of engines and models bound to a Session."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setToolTip("Which engine and model generate: the built-in patch engine needs no download")
        self.setMinimumContentsLength(28)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.models: list[tuple[str, str]] = []
        self.discover: Callable[[], list[tuple[str, str]]] | None = None
        self.lookup = ModelLookup("discover", _run, self)  # the look-up, on a worker thread
        self.lookup.ready.connect(self._discovered)
        self.activated.connect(self._chosen)
        session.model.group("engine", "model").connect(self.show_request)
        if session.remote is not None:
            session.remote.connected.connect(self._remote_changed)
            session.remote.disconnected.connect(self._remote_changed)
            session.remote.failed.connect(self._remote_failed)
        self.rebuild()

    def showPopup(self) -> None:  # noqa: N802 - Qt override
        """Open the list; models found on this machine join it when discovery has finished."""
        self.start_discovery()
        super().showPopup()

    def start_discovery(self) -> None:
        """Look for models on a worker thread (once; scanning folders and the hub cache takes a while)."""
        if self.discover is None:
            return
        discover, self.discover = self.discover, None
        self.lookup.again(discover)  # overtakes a look still running
        self.rebuild()

    def rediscover(self, discover: Callable[[], list[tuple[str, str]]]) -> None:
        """Look for models again now (a setting that changes what is listed changed)."""
        self.discover = discover
        self.start_discovery()

    @property
    def searching(self) -> bool:
        """True while discovery runs."""
        return self.lookup.running

    @Slot()
    def _discovered(self) -> None:
        self.rebuild(self.lookup.found or [])

    def rebuild(self, models: list[tuple[str, str]] | None = None) -> None:
        """List the engines (and `models`, when given: discovery is slow, so the window runs it later)."""
        if models is not None:
            self.models = models
        remote = self.session.remote
        with QSignalBlocker(self):
            self.clear()
            if remote is not None and remote.info is not None and remote.engine is not None:
                self._add_server_models(remote.engine.label, remote.info.models)
                self.insertSeparator(self.count())
                self.addItem("Remote server…", CHOOSE_REMOTE)
                self.addItem("Use this computer's engines", USE_LOCAL)
            else:
                self.addItem("Patch engine (built-in, no download)", BUILTIN)
                for label, path in self.models:
                    self.addItem(f"Diffusers: {label}", f"diffusers|{path}")
                if self.searching:
                    self.addItem("Looking for models on this machine…", SEARCHING)
                    self.model().item(self.count() - 1).setEnabled(False)  # type: ignore[attr-defined]
                self.insertSeparator(self.count())
                self.addItem("Diffusers model folder…", CHOOSE_FOLDER)
                self.addItem(f"Diffusers model file ({self._file_kinds()})…", CHOOSE_FILE)
                self.addItem("Patch engine with my reference images…", CHOOSE_REFERENCES)
                if remote is not None:
                    self.addItem("Remote server…", CHOOSE_REMOTE)
        self.show_request(self.session.model.request)

    def _file_kinds(self) -> str:
        return ".safetensors, .ckpt" if pickles_allowed(self.session) else ".safetensors"

    def _add_server_models(self, server: str, models: tuple[dict[str, str], ...]) -> None:
        for m in models:
            if m["engine"] == "patch":
                what = f"Patch engine: {m['name']}" if m["name"] else "Patch engine (built-in)"
            else:
                what = f"Diffusers: {m['name']}"
            self.addItem(f"{server} · {what}", f"{m['engine']}|{m['name']}")
        self.setToolTip(f"Runs go to the studio server at {server}")

    def show_request(self, request: Request) -> None:
        """Select the entry of the session's engine and model (adding it when it is not listed)."""
        key = f"{request.engine}|{request.model}"
        with QSignalBlocker(self):
            index = self.findData(key)
            if index < 0:
                name = request.model.rstrip("/").rsplit("/", 1)[-1] or request.model
                label = f"Patch engine: {name}" if request.engine == "patch" else f"Diffusers: {name}"
                self.insertItem(1, label, key)
                index = 1
            self.setCurrentIndex(index)

    def _chosen(self, index: int) -> None:
        data = self.itemData(index)
        if data == CHOOSE_FOLDER:
            path = QFileDialog.getExistingDirectory(self, "Choose a diffusers model folder")
            data = f"diffusers|{path}" if path else None
        elif data == CHOOSE_FILE:
            path, _ = QFileDialog.getOpenFileName(
                self, "Choose a model file", "", file_filter("Model files", self.session)
            )
            data = f"diffusers|{path}" if path else None
        elif data == CHOOSE_REFERENCES:
            path = QFileDialog.getExistingDirectory(self, "Choose a folder of reference images")
            data = f"patch|{path}" if path else None
        elif data in (CHOOSE_REMOTE, USE_LOCAL):
            self.show_request(self.session.model.request)  # until the server answers, nothing changes
            self._remote(data)
            return
        if data is None or data == SEARCHING:  # a cancelled dialog (or the placeholder): show what is in use
            self.show_request(self.session.model.request)
            return
        engine, model = data.split("|", 1)
        self.session.model.set(engine=engine, model=model)

    # -- a studio server ---------------------------------------------------------------------------------
    def _remote(self, choice: str) -> None:
        link = self.session.remote
        if link is None:
            return
        if choice == USE_LOCAL:
            link.disconnect_server()
            return
        url, token = link.saved
        if link.engine is not None:
            url, token = link.engine.url, link.engine.token
        dialog = RemoteDialog(url, token, self)
        if dialog.exec() == RemoteDialog.DialogCode.Accepted:
            link.connect_to(*dialog.values())

    def _remote_changed(self, _info: object = None) -> None:
        """Connected or back on this machine: list what now runs, and keep a request it can run."""
        link = self.session.remote
        request = self.session.model.request
        if link is not None and link.info is not None:
            served = {(m["engine"], m["name"]) for m in link.info.models}
            if (request.engine, request.model) not in served:
                self.session.model.set(engine="patch", model="")  # the server's built-in references
        elif request.model and not Path(request.model).expanduser().exists():
            self.session.model.set(engine="patch", model="")  # a server's model name means nothing here
        self.setToolTip("Which engine and model generate: the built-in patch engine needs no download")
        self.rebuild()

    def _remote_failed(self, _message: str) -> None:
        self.show_request(self.session.model.request)
