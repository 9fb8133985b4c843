"""The status bar: messages and errors, step progress, time per step and the device in use."""

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
        """An error, in red, until the next run."""
        self.progress.setVisible(False)
        self.message.setStyleSheet("color: #c0392b; font-weight: bold")
        self.message.setText(f"Error: {text}")

    def show_started(self) -> None:
        """A run began."""
        self.show_message("Generating…")
        self.progress.setValue(0)
        self.progress.setVisible(True)

    def show_progress(self, step: int, total: int, per_step_s: float) -> None:
        """Step `step` of `total` is done, at `per_step_s` seconds a step."""
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(step)
        self.progress.setVisible(True)
        self.timing.setText(
            f"{per_step_s:.1f} s/step" if per_step_s >= 1 else f"{per_step_s * 1000:.0f} ms/step"
        )

    def show_done(self, result: Result) -> None:
        """A run finished and became a layer and a gallery entry (the session says how long it took)."""
        self.progress.setVisible(False)
        self.show_message(
            f"Done: new layer “{_short(result.request.prompt or 'Result')}” and a gallery entry"
        )
        device = result.extras.get("device")
        if device:
            self.device.setText(f"{result.request.engine} engine · device: {device}")

    def show_zoom(self, zoom: float) -> None:
        """The canvas zoom, in percent."""
        self.zoom.setText(f"{zoom * 100:.0f} %")

    def show_engine(self, engine: str) -> None:
        """The device a run of `engine` uses, before any run said so itself."""
        device = self.device_override or ("cpu" if engine == "patch" else "auto")
        self.device.setText(f"{engine} engine · device: {device}")


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
