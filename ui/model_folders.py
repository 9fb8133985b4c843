"""Where the window looks for models and what it loads: folders to look in (an A1111 or ComfyUI install,
or a LoRA folder) and whether pickle files are allowed.

Each goes into the settings (kept for the next start) and into the running engines, so that names typed in a
prompt (`<lora:NAME:0.8>`) are found, and pickles loaded or refused, from the next run on.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QWidget

from backend.engines import Engines
from studio.session import Session

# Subfolders that make a folder an install (its checkpoints, LoRAs and ControlNets all get found).
INSTALL_MARKERS = ("models/Stable-diffusion", "models/checkpoints", "models/Lora", "models/loras")


def add_kind(folder: str) -> str:
    """ "model" for an A1111 or ComfyUI install (or any folder with a models/ folder), else "lora"."""
    root = Path(folder)
    install = any((root / marker).is_dir() for marker in INSTALL_MARKERS) or (root / "models").is_dir()
    return "model" if install else "lora"


def add_folder(session: Session, folder: str) -> str:
    """Remember `folder` as a model folder (an install) or a LoRA folder; returns which ("model", "lora")."""
    install = add_kind(folder) == "model"
    settings = session.settings
    if settings is not None:
        if install:
            settings.model_folders = [*settings.model_folders, folder]
        else:
            settings.lora_folders = [*settings.lora_folders, folder]
    engines = session.host.engine
    if isinstance(engines, Engines):
        engines.add_folders(
            model_folders=(folder,) if install else (), lora_folders=() if install else (folder,)
        )
    return "model" if install else "lora"


def pickles_allowed(session: Session) -> bool:
    """Whether the person allowed pickle model files (.ckpt, .pt, .pth, .bin)."""
    return session.settings is not None and session.settings.allow_pickle


def set_pickles_allowed(session: Session, allow: bool) -> None:
    """Allow pickle files or not: kept in the settings, and the running engines follow from the next run."""
    if session.settings is not None:
        session.settings.allow_pickle = allow
    engines = session.host.engine
    if isinstance(engines, Engines):
        engines.allow_pickle(allow)


def file_filter(what: str, session: Session) -> str:
    """A file dialog's filter for `what` ("Model files"): .safetensors, and pickles when they are allowed."""
    return (
        f"{what} (*.safetensors *.ckpt *.pt *.pth *.bin)"
        if pickles_allowed(session)
        else f"{what} (*.safetensors)"
    )


def choose_folder(parent: QWidget, session: Session) -> str | None:
    """Ask for a folder and add it; the folder, or None when the person cancelled."""
    folder = QFileDialog.getExistingDirectory(
        parent, "A folder to look in: an A1111 or ComfyUI install, or LoRAs"
    )
    if not folder:
        return None
    add_folder(session, folder)
    return folder
