"""The "Remote server…" dialog: a studio server's address and access token."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QVBoxLayout, QWidget


class RemoteDialog(QDialog):
    """Asks for a server URL and its token; a remembered token is used without being shown."""

    def __init__(self, url: str = "", saved_token: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Remote server")
        self.saved_token = saved_token
        self.url = QLineEdit(url or "http://127.0.0.1:8188")
        self.url.setPlaceholderText("http://gpu-box:8188 or https://studio.example.org")
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText(
            "the saved token (leave empty to use it)"
            if saved_token
            else "printed by studio-serve at first start"
        )
        form = QFormLayout()
        form.addRow("Server address", self.url)
        form.addRow("Access token", self.token)
        note = QLabel(
            "Runs go to the server's GPU; previews stream back to the canvas. The token is kept in this "
            "studio's settings. Across an untrusted network, put the server behind HTTPS "
            "(see docs/remote.md)."
        )
        note.setWordWrap(True)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Connect")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)
        self.resize(460, self.sizeHint().height())

    def values(self) -> tuple[str, str]:
        """The address and the token typed (or the saved one when the field was left empty)."""
        return self.url.text().strip(), self.token.text().strip() or self.saved_token
