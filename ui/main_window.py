"""The studio window: canvas in the middle, docks for prompt, sliders, layers and gallery, a status bar.

Panels edit the session's request model and show its field signals; the window's actions call the run
controller (`session.runs`); generation logic lives in `studio/`.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeyEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QFrame,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QScrollArea,
    QTextEdit,
    QToolBar,
    QWidget,
)

from backend.errors import StudioError
from backend.images import load_picture
from studio.session import Session
from studio.settings import Settings
from ui import exports
from ui.attribution_overlay import AttributionOverlay
from ui.brush_bar import BrushBar
from ui.canvas import CanvasView
from ui.dialogs import ask_canvas_size, confirm, show_error
from ui.engine_picker import EnginePicker, discovered_models
from ui.gallery_panel import GalleryPanel
from ui.image_actions import ImageActions
from ui.layers_panel import LayersPanel
from ui.model_options import ModelOptions
from ui.project_actions import ProjectActions
from ui.prompt_panel import PromptPanel
from ui.shortcuts import NAME_PROPERTY, ShortcutsDialog
from ui.sketch_panel import SketchPanel
from ui.slider_panel import SliderPanel
from ui.status import StatusBar
from ui.workers import Call

PROJECT_SUFFIXES = (".studio", ".ora")

DEFAULT_SIZE = (1360, 860)
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff)"


def is_text_input(widget: QWidget | None) -> bool:
    """True for widgets where a person types (Esc there belongs to the field, not to the run)."""
    if isinstance(widget, QComboBox):
        return widget.isEditable()
    return isinstance(widget, QLineEdit | QPlainTextEdit | QTextEdit | QAbstractSpinBox)


class MainWindow(QMainWindow):
    """The studio's one window, bound to a Session."""

    def __init__(self, session: Session, settings: Settings | None = None) -> None:
        super().__init__()
        self.session = session
        self.settings = settings or Settings()
        self.document = session.document
        self.document.history.limit_bytes = self.settings.undo_limit_bytes
        self.error_box: QMessageBox | None = None
        self.shortcuts_dialog: ShortcutsDialog | None = None
        self.exports: list[Call] = []  # exports being written on worker threads
        self._history_origin: str | None = None  # an opened or restored file: undo cannot reach before it
        self.ask_before_closing = True  # False for `studio --demo`, whose work is its own and unattended
        self.setObjectName("studio-window")
        self.setWindowTitle("Studio")
        self.setAcceptDrops(True)
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)

        self.canvas = CanvasView(self.document)
        self.setCentralWidget(self.canvas)
        self._make_actions()
        self.brush_bar = BrushBar(self.canvas, self)
        self.addToolBar(self.brush_bar)
        self.engine_bar = QToolBar("Engine", self)
        self.addToolBar(self.engine_bar)
        self.engine_bar.setObjectName("engine-bar")
        self.engine_picker = EnginePicker(session)
        self.engine_bar.addWidget(self.engine_picker)
        self.prompt_panel = PromptPanel(session, self.generate_action, self.cancel_action, self.live_action)
        self.slider_panel = SliderPanel(session)
        self.sketch_panel = SketchPanel(session, self.canvas.composite_image)
        self.layers_panel = LayersPanel(self.document)
        self.gallery_panel = GalleryPanel(session)
        self.prompt_panel.size_requested.connect(self.request_size)
        left = Qt.DockWidgetArea.LeftDockWidgetArea
        right = Qt.DockWidgetArea.RightDockWidgetArea
        self.docks = {
            "prompt": self._dock("Prompt", self.prompt_panel, left, scroll=True),
            "sliders": self._dock("Sliders", self.slider_panel, left, scroll=True),
            "sketch": self._dock("Sketch", self.sketch_panel, left, scroll=True),
            "layers": self._dock("Layers", self.layers_panel, right),
            "gallery": self._dock("Gallery", self.gallery_panel, right),
        }
        self.tabifyDockWidget(self.docks["prompt"], self.docks["sliders"])
        self.tabifyDockWidget(self.docks["sliders"], self.docks["sketch"])
        self.docks["prompt"].raise_()
        self.status = StatusBar(self, self.settings.device)
        self.canvas.zoom_changed.connect(self.status.show_zoom)
        self.canvas.notice.connect(self.status.show_message)
        self.status.show_zoom(self.canvas.zoom)
        self.setStatusBar(self.status)
        self._make_menus()
        self.attribution = AttributionOverlay(
            self.canvas, session, self.show_attribution_action, self.status.show_message
        )
        # Working on the mask shows it again: choosing the mask brush, or any mask stroke or undo.
        self.brush_bar.tool_actions["mask"].triggered.connect(lambda: self.show_mask_action.setChecked(True))
        self.document.operation.connect(self._document_operation)
        self._connect_session()
        self.document.changed.connect(self._document_changed)
        self._document_changed()
        self.project_actions = ProjectActions(self, session, self.file_menu)
        self.project_actions.history_started.connect(self._history_started)
        self._restore_layout()
        # Listing models scans folders and the hub cache (seconds on a busy disk): only when the list opens.
        self.engine_picker.discover = self.discover_models

    # -- building ---------------------------------------------------------------------
    def _action(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:  # noqa: ANN001
        action = QAction(text, self)
        if shortcut is not None:
            keys = shortcut if isinstance(shortcut, list) else [shortcut]
            action.setShortcuts([QKeySequence(k) for k in keys])
        if tip:
            action.setToolTip(tip)
            action.setStatusTip(tip)
        # `triggered` passes `checked`; the slots take no argument (new_canvas's would read it as a size).
        action.triggered.connect(lambda _checked=False: slot())
        self.addAction(action)  # shortcuts work wherever the focus is in the window
        return action

    def _make_actions(self) -> None:
        self.generate_action = self._action(
            "Generate", self.generate, ["Ctrl+Return", "Ctrl+Enter"], "Generate an image (Ctrl+Enter)"
        )
        self.cancel_action = self._action("Cancel", self.session.runs.cancel, "Esc", "Stop the run (Esc)")
        # Esc is not a window-wide shortcut: a text field or a popup that takes it keeps it. Only an Esc
        # nobody used reaches keyPressEvent and cancels (the shortcut itself fires on the Cancel button).
        self.cancel_action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.cancel_action.setEnabled(False)
        self.live_action = QAction("Live", self, checkable=True)
        self.live_action.setToolTip(
            "Re-render while you drag sliders or edit fields, without pressing Generate"
        )
        self.live_action.toggled.connect(self.session.runs.set_live)
        self.undo_action = self._action("Undo", self.document.undo, QKeySequence.StandardKey.Undo)
        self.redo_action = self._action("Redo", self.document.redo, ["Ctrl+Shift+Z", "Ctrl+Y"])
        for action, name in ((self.undo_action, "Undo"), (self.redo_action, "Redo")):
            action.setProperty(NAME_PROPERTY, name)  # their text names the step ("Undo Paint")
        self.new_action = self._action("New canvas…", self.new_canvas, QKeySequence.StandardKey.New)
        self.open_action = self._action("Open image as layer…", self.open_image, "Ctrl+I")
        self.export_png_action = self._action("Export PNG with recipe…", self.export_png, "Ctrl+E")
        self.export_ora_action = self._action("Export layers (OpenRaster)…", self.export_ora, "Ctrl+Shift+E")
        self.quit_action = self._action("Quit", self.close, QKeySequence.StandardKey.Quit)
        self.fit_action = self._action("Fit", self.canvas.fit, "F", "Fit the canvas in the window (F)")
        self.actual_action = self._action("100 %", self.canvas.actual_size, "1", "Actual pixels (1)")
        self.zoom_in_action = self._action(
            "Zoom in", lambda: self.canvas.set_zoom(self.canvas.zoom * 1.25), "Ctrl+="
        )
        self.zoom_out_action = self._action(
            "Zoom out", lambda: self.canvas.set_zoom(self.canvas.zoom / 1.25), "Ctrl+-"
        )
        self.fill_action = self._action("Fill layer with colour", self.fill_layer, "Shift+F5")
        self.clear_action = self._action("Clear layer", self.clear_layer, "Delete")
        self.clear_mask_action = self._action("Clear mask", self.document.clear_mask, "Ctrl+Shift+M")
        self.shortcuts_action = self._action("Keyboard shortcuts", self.show_shortcuts, "F1")
        self.show_mask_action = QAction("Show mask", self, checkable=True, checked=True)
        self.show_mask_action.setShortcut(QKeySequence("Shift+M"))
        self.show_mask_action.setToolTip("Show the inpainting mask in red over the canvas (Shift+M)")
        self.show_mask_action.toggled.connect(self.canvas.set_mask_visible)
        self.addAction(self.show_mask_action)
        self.show_attribution_action = QAction("Show attribution", self, checkable=True)
        self.show_attribution_action.setShortcut(QKeySequence("Shift+A"))
        self.show_attribution_action.setToolTip(
            "Colour each pixel of the newest patch-engine result by the reference that fed it (Shift+A)"
        )
        self.addAction(self.show_attribution_action)

    def _dock(
        self, title: str, widget: QWidget, area: Qt.DockWidgetArea, scroll: bool = False
    ) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock-{title.lower()}")
        if scroll:  # long panels (one slider per reference) must not make the window taller than the screen
            area_widget = QScrollArea()
            area_widget.setWidgetResizable(True)
            area_widget.setFrameShape(QFrame.Shape.NoFrame)
            area_widget.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            area_widget.setWidget(widget)
            widget = area_widget
        dock.setWidget(widget)
        dock.installEventFilter(self)  # Esc in the panel once it floats (see eventFilter)
        self.addDockWidget(area, dock)
        return dock

    def _make_menus(self) -> None:
        bar = self.menuBar()
        self.file_menu = bar.addMenu("&File")
        for action in (
            self.new_action,
            self.open_action,
            None,
            self.export_png_action,
            self.export_ora_action,
        ):
            self.file_menu.addAction(action) if action else self.file_menu.addSeparator()
        self.file_menu.addSeparator()
        self.file_menu.addAction(self.quit_action)
        edit = bar.addMenu("&Edit")
        for action in (self.undo_action, self.redo_action, None, self.fill_action, self.clear_action):
            edit.addAction(action) if action else edit.addSeparator()
        edit.addAction(self.clear_mask_action)
        tools = bar.addMenu("&Tools")
        for action in self.brush_bar.tool_actions.values():
            tools.addAction(action)
        tools.addSeparator()
        tools.addAction(self.brush_bar.smaller)
        tools.addAction(self.brush_bar.bigger)
        self.addAction(self.brush_bar.smaller)
        self.addAction(self.brush_bar.bigger)
        view = bar.addMenu("&View")
        for action in (self.fit_action, self.actual_action, self.zoom_in_action, self.zoom_out_action):
            view.addAction(action)
        view.addAction(self.show_mask_action)
        view.addAction(self.show_attribution_action)
        view.addSeparator()
        for dock in self.docks.values():
            view.addAction(dock.toggleViewAction())
        generate = bar.addMenu("&Generate")
        for action in (self.generate_action, self.cancel_action, self.live_action):
            generate.addAction(action)
        self.help_menu = bar.addMenu("&Help")
        self.help_menu.addAction(self.shortcuts_action)
        # Image menu and Generate → Variations grid (ui/image_actions.py)
        self.image_actions = ImageActions(self, self.session, generate, self.help_menu.menuAction())
        # Models menu: folders to look in, pickle files (ui/model_options.py)
        self.model_options = ModelOptions(self, self.session, self.help_menu.menuAction())

    def _connect_session(self) -> None:
        runs, model = self.session.runs, self.session.model
        runs.frame.connect(self._frame)
        runs.progress.connect(self.status.show_progress)
        runs.run_started.connect(self._started)
        runs.result_added.connect(self._result_added)
        runs.run_ended.connect(self._run_ended)
        runs.error.connect(self.show_error)
        runs.status.connect(self.status.show_message)
        runs.running_changed.connect(self._busy_changed)
        runs.live_changed.connect(self.live_action.setChecked)
        model.notice.connect(self.status.show_message)
        model.field("engine").connect(self.status.show_engine)
        self.status.show_engine(model.request.engine)
        remote = self.session.remote
        if remote is not None:
            remote.connecting.connect(self._remote_connecting)
            remote.connected.connect(self._remote_connected)
            remote.disconnected.connect(self._remote_disconnected)
            remote.failed.connect(self.show_error)
            url, token = remote.saved
            if url and token and str(self.settings.value("remote/active", "")).lower() == "true":
                remote.connect_to(url, token)  # the server in use when the studio last closed

    def _remote_connecting(self, url: str) -> None:
        self.status.show_message(f"Connecting to the studio server at {url}…")

    def _remote_connected(self, info) -> None:  # noqa: ANN001 - a backend.remote.ServerInfo
        link = self.session.remote
        server = link.engine.label if link is not None and link.engine is not None else info.url
        self.status.show_server(server, info.device)
        self.status.show_message(f"Connected: runs go to the studio server at {server} ({info.device})")

    def _remote_disconnected(self) -> None:
        self.status.show_server()
        self.status.show_message("Runs go to this computer's engines again")

    def _restore_layout(self) -> None:
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if geometry is None or not self.restoreGeometry(geometry):
            self.resize(*DEFAULT_SIZE)
        if state is not None:
            self.restoreState(state)
        else:
            self.resizeDocks(
                [self.docks["prompt"], self.docks["layers"]], [330, 260], Qt.Orientation.Horizontal
            )
            self.resizeDocks(
                [self.docks["layers"], self.docks["gallery"]], [300, 420], Qt.Orientation.Vertical
            )

    def discover_models(self) -> list[tuple[str, str]]:
        """The models in the folders the settings name (pickle checkpoints when allowed); runs on a worker."""
        return discovered_models(tuple(self.settings.model_folders), self.settings.allow_pickle)

    # -- generation ---------------------------------------------------------------------
    def generate(self) -> None:
        """Run the panels' settings (a fresh seed unless it is locked)."""
        self.session.runs.generate()

    def _frame(self, ev) -> None:  # noqa: ANN001 - a StepEvent of the current run
        if ev.preview is not None:
            self.canvas.set_preview(ev.preview)

    def _started(self, _request) -> None:  # noqa: ANN001
        self.status.show_started()

    def _busy_changed(self, busy: bool) -> None:
        self.cancel_action.setEnabled(busy)
        if not busy:
            self.canvas.clear_preview()
            self.status.show_idle()

    def _result_added(self, result) -> None:  # noqa: ANN001
        self.canvas.clear_preview()
        self.status.show_done(result)
        if result.request.mask is not None and not self.session.runs.live_enabled:
            self.show_mask_action.setChecked(False)  # the red would cover the repainted area

    def _document_operation(self, _what: str, command) -> None:  # noqa: ANN001 - a document Command
        if command.kind == "mask":
            self.show_mask_action.setChecked(True)

    def _run_ended(self, how: str) -> None:
        self.canvas.clear_preview()
        if how != "done":
            self.status.clear_timing()
        if how == "cancelled":
            self.status.show_message("Cancelled: nothing was added")

    def show_error(self, message: str) -> None:
        """Show an error in the status bar and a dialog that says what to do; nothing else changes."""
        self.canvas.clear_preview()
        self.status.show_error(message)
        if self.error_box is not None:
            self.error_box.close()
        self.error_box = show_error(self, "Studio", message)

    def show_shortcuts(self) -> ShortcutsDialog:
        """Help → Keyboard shortcuts: every action's keys, read from the actions themselves."""
        if self.shortcuts_dialog is not None:
            self.shortcuts_dialog.close()
        self.shortcuts_dialog = ShortcutsDialog(self)
        self.shortcuts_dialog.show()
        return self.shortcuts_dialog

    # -- canvas and files ---------------------------------------------------------------------
    def _document_changed(self, *_: object) -> None:
        doc = self.document
        self.undo_action.setEnabled(doc.can_undo)
        self.redo_action.setEnabled(doc.can_redo)
        if doc.can_undo or self._history_origin is None:
            self.undo_action.setText(f"Undo {doc.undo_label}".strip())
            self.undo_action.setToolTip(self.undo_action.text())
        else:  # greyed out: say why, rather than leave the person guessing
            self.undo_action.setText(f"Undo (history starts at {self._history_origin})")
            self.undo_action.setToolTip(
                "Project and recovery files keep the picture, not its undo steps: changes made before "
                "it was opened cannot be undone"
            )
        self.redo_action.setText(f"Redo {doc.redo_label}".strip())

    def _history_started(self, origin: str) -> None:
        self._history_origin = origin
        self._document_changed()

    def new_canvas(self, size: tuple[int, int] | None = None) -> None:
        """Start an empty canvas (asks for the size when none is given)."""
        doc = self.document
        size = size or ask_canvas_size(self, doc.width, doc.height)
        if size is None:
            return
        if not doc.is_clean and not confirm(
            self, "New canvas", "Clear the canvas? Its undo history goes too."
        ):
            return
        self._history_origin = None  # a new canvas: nothing before it to undo, nothing to explain
        doc.reset(*size)  # the run controller gives the request model the new size

    def request_size(self, width: int, height: int) -> None:
        """The prompt panel's size: a new canvas of that size (asks first when there is work to lose)."""
        if (width, height) != (self.document.width, self.document.height):
            self.new_canvas((width, height))

    def open_image(self) -> None:
        """Choose an image file and add it as a layer."""
        path, _ = QFileDialog.getOpenFileName(self, "Open image as layer", "", IMAGE_FILTER)
        if path:
            self.add_image_layer(path)

    def add_image_layer(self, path: str) -> bool:
        """Add the image at `path` as a new layer fitted to the canvas; errors go to the error dialog."""
        try:
            picture = load_picture(path)
        except StudioError as exc:
            self.show_error(str(exc))
            return False
        self.document.add_layer(Path(path).stem, exports.fit_to_canvas(picture.pixels, self.document))
        self.status.show_message(f"Opened {Path(path).name} as a layer")
        return True

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        """Esc that no widget used: leave a text field (to the canvas), else cancel the run."""
        if not self._escape(event):
            super().keyPressEvent(event)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        """A floating panel is a window of its own: an Esc nobody in it used stops there, not here."""
        if (
            event.type() == QEvent.Type.KeyPress
            and isinstance(watched, QDockWidget)
            and watched.isFloating()
            and isinstance(event, QKeyEvent)
        ):
            return self._escape(event)
        return super().eventFilter(watched, event)

    def _escape(self, event: QKeyEvent) -> bool:
        """Handle a plain Esc nobody used; True when it was one."""
        if event.key() != Qt.Key.Key_Escape or event.modifiers() != Qt.KeyboardModifier.NoModifier:
            return False
        if is_text_input(QApplication.focusWidget()):
            if not self.isActiveWindow():  # from a floating panel: back to this window's canvas
                self.activateWindow()
            self.canvas.setFocus(Qt.FocusReason.ShortcutFocusReason)  # given on activation if not now
        elif self.cancel_action.isEnabled():
            self.cancel_action.trigger()
        event.accept()
        return True

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        """Accept dragged files."""
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def open_path(self, path: str) -> bool:
        """Open a project (.studio, .ora) as the document, or add any other image file as a layer."""
        if Path(path).suffix.lower() in PROJECT_SUFFIXES:
            return self.project_actions.open_path(path)
        return self.add_image_layer(path)

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        """Open each dropped file: projects replace the document, images become layers."""
        for url in event.mimeData().urls():
            if url.isLocalFile():
                self.open_path(url.toLocalFile())
        event.acceptProposedAction()

    def fill_layer(self) -> None:
        """Fill the active layer with the brush colour."""
        if self.document.active_id:
            self.document.fill(self.document.active_id, (*self.canvas.brush.color, 255))

    def clear_layer(self) -> None:
        """Make the active layer transparent."""
        if self.document.active_id:
            self.document.clear(self.document.active_id)

    def export_png(self) -> None:
        """Save the visible image as a PNG carrying the recipe of the newest result on the canvas."""
        path, _ = QFileDialog.getSaveFileName(self, "Export PNG", "studio.png", "PNG (*.png)")
        if path:
            self.start_export(path, "png")

    def export_ora(self) -> None:
        """Save every layer as an OpenRaster file (Krita, GIMP and MyPaint open it)."""
        path, _ = QFileDialog.getSaveFileName(self, "Export layers", "studio.ora", "OpenRaster (*.ora)")
        if path:
            self.start_export(path, "ora")

    def start_export(self, path: str, kind: str) -> bool:
        """Export the canvas as it is now ("png" or "ora") on a worker thread; the window stays usable.

        The file is written atomically; the status bar says when it is there (or the error dialog why
        not). True when the export started."""
        take = exports.png_export if kind == "png" else exports.ora_export
        try:
            write = take(path, self.session)
        except StudioError as exc:
            self.show_error(str(exc))
            return False
        call = Call("export", write, daemon=False)  # a quit waits for a file being written
        call.finished.connect(self._exported)
        self.exports.append(call.start())
        self.status.show_message(f"Exporting {Path(path).name}…")
        return True

    def _exported(self, path: str | None, error: BaseException | None) -> None:
        self.exports = [call for call in self.exports if call.running]
        if error is None:
            self.status.show_message(f"Saved {path}")
        elif isinstance(error, StudioError):
            self.show_error(str(error))
        else:
            self.show_error(f"The export failed ({error.__class__.__name__}: {error})")

    # -- closing ---------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        """Ask about unsaved work, remember the layout, and stop the engine thread before closing."""
        projects = self.project_actions if self.ask_before_closing else None
        if projects is not None and not projects.confirm_close():
            event.ignore()
            return
        for call in self.exports:
            call.join()  # an export being written finishes before the window goes
        self.settings.set_value("window/geometry", self.saveGeometry())
        self.settings.set_value("window/state", self.saveState())
        self.settings.sync()
        self.canvas.cancel_stroke()
        self.session.shutdown()  # cancels the run and joins the engine thread: quitting mid-run is prompt
        event.accept()
