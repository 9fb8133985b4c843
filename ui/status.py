"""The status bar: messages and errors, step progress, time per step, the server and device in use."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar, QWidget

from studio.gallery import Result


class StatusBar(QStatusBar):
    """Shows what the engine is doing; errors stay until the next run starts."""

    def __init__(self, parent: QWidget | None = None, device: str = "") -> None:
        super().__init__(parent)
        self.message = QLabel("Ready: write a prompt and press Generate (Ctrl+Enter)")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(180)
        self.progress.setTextVisible(True)
        self.progress.setFormat("step %v / %m")
        self.progress.setVisible(False)
        self.timing = QLabel()
        self.zoom = QLabel()
        self.device = QLabel()
        self.device_override = device
        self.server = ""  # "host:port" of the studio server that runs everything, when one does
        self.server_device = ""
        self._engine = "patch"
        self.addWidget(self.message, 1)
        self.addPermanentWidget(self.progress)
        self.addPermanentWidget(self.timing)
        self.addPermanentWidget(self.zoom)
        self.addPermanentWidget(self.device)

    def show_message(self, text: str) -> None:
        """A plain message."""
        self.message.setStyleSheet("")
        self.message.setText(text)

    def show_error(self, text: str) -> None:
        """An error, in red, until the next message (a run starting or finishing says so)."""
        self.show_idle()
        self.message.setStyleSheet("color: #c0392b; font-weight: bold")
        self.message.setText(f"Error: {text}")

    def show_started(self) -> None:
        """A run began: a busy bar until the engine's first step says how many steps there are."""
        self.show_message("Generating…")
        self.timing.clear()
        self.progress.reset()
        self.progress.setRange(0, 0)  # busy: no number is better than a made-up total
        self.progress.setVisible(True)

    def show_progress(self, step: int, total: int, per_step_s: float) -> None:
        """Step `step` of `total` is done, at `per_step_s` seconds a step."""
        if total < 1:
            return  # no total yet: stay busy
        self.progress.setRange(0, total)
        self.progress.setValue(step)
        self.progress.setVisible(True)
        self.timing.setText(
            f"{per_step_s:.1f} s/step" if per_step_s >= 1 else f"{per_step_s * 1000:.0f} ms/step"
        )

    def show_idle(self) -> None:
        """No run: hide the bar and forget the last run's step (its speed stays until the next run)."""
        self.progress.setVisible(False)
        self.progress.reset()

    def clear_timing(self) -> None:
        """Forget the speed of a run that made nothing (cancelled or failed)."""
        self.timing.clear()

    def show_done(self, result: Result) -> None:
        """A run finished and became a layer and a gallery entry (the session says how long it took)."""
        self.show_idle()
        self.show_message(
            f"Done: new layer “{_short(result.request.prompt or 'Result')}” and a gallery entry"
        )
        device = result.extras.get("device")
        if device and not self.server:
            self.device.setText(f"{result.request.engine} engine · device: {device}")

    def show_zoom(self, zoom: float) -> None:
        """The canvas zoom, in percent."""
        self.zoom.setText(f"{zoom * 100:.0f} %")

    def show_engine(self, engine: str) -> None:
        """The device a run of `engine` uses, before any run said so itself."""
        self._engine = engine
        if self.server:
            self.device.setText(f"{engine} engine on {self.server} · device: {self.server_device}")
            return
        device = self.device_override or ("cpu" if engine == "patch" else "auto")
        self.device.setText(f"{engine} engine · device: {device}")

    def show_server(self, server: str = "", device: str = "") -> None:
        """Runs go to the studio server `server` (host:port) on `device`; "" when they run here."""
        self.server, self.server_device = server, device
        self.show_engine(self._engine)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
