"""Preferences kept between runs (QSettings): model folders, pickles, TAESD, device, last request, history."""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QSettings

from backend import strict_json
from backend.errors import StudioError
from backend.request import Request
from studio.document import MAX_CANVAS_PIXELS, UNDO_LIMIT_BYTES
from studio.recipe import request_from_dict, request_to_dict

log = logging.getLogger(__name__)


class Settings:
    """Typed access to the studio's QSettings; `path` gives an INI file instead (tests, portable use)."""

    def __init__(self, path: str | None = None) -> None:
        self.qsettings = (
            QSettings(path, QSettings.Format.IniFormat) if path else QSettings("Studio", "Studio")
        )

    # -- generic values, for the window's own state (geometry, dock layout) ----------------------------
    def value(self, key: str, default: Any = None) -> Any:
        """The stored value for `key`, or `default`."""
        return self.qsettings.value(key, default)

    def set_value(self, key: str, value: Any) -> None:
        """Store a value."""
        self.qsettings.setValue(key, value)

    def sync(self) -> None:
        """Write pending changes to disk now."""
        self.qsettings.sync()

    # -- typed preferences -----------------------------------------------------------------------------
    @property
    def model_folders(self) -> list[str]:
        """Folders the person added to search for models (A1111, ComfyUI, their own)."""
        return self._json("models/folders", [])

    @model_folders.setter
    def model_folders(self, folders: list[str]) -> None:
        self._set_json("models/folders", list(dict.fromkeys(str(f) for f in folders)))

    @property
    def lora_folders(self) -> list[str]:
        """Folders of LoRA files the person added (besides models/Lora and models/loras in model folders)."""
        return self._json("models/lora_folders", [])

    @lora_folders.setter
    def lora_folders(self, folders: list[str]) -> None:
        self._set_json("models/lora_folders", list(dict.fromkeys(str(f) for f in folders)))

    @property
    def taesd_folder(self) -> str:
        """A local TAESD folder for nicer previews ("" = the linear latent→RGB preview)."""
        return str(self.qsettings.value("models/taesd", "") or "")

    @taesd_folder.setter
    def taesd_folder(self, folder: str) -> None:
        self.qsettings.setValue("models/taesd", str(folder))

    @property
    def device(self) -> str:
        """Device override: "" (automatic), "cpu", "cuda", "cuda:1", "mps"."""
        return str(self.qsettings.value("engine/device", "") or "")

    @device.setter
    def device(self, device: str) -> None:
        self.qsettings.setValue("engine/device", str(device))

    @property
    def allow_pickle(self) -> bool:
        """Load pickle model files (.ckpt, .pt, .pth, .bin) with torch's weights-only loader (default off)."""
        return str(self.qsettings.value("models/allow_pickle", "false")).lower() == "true"

    @allow_pickle.setter
    def allow_pickle(self, allow: bool) -> None:
        self.qsettings.setValue("models/allow_pickle", "true" if allow else "false")

    def engine_options(self) -> dict[str, Any]:
        """Keyword options for `backend.engines.Engines`: only what the person set."""
        options: dict[str, Any] = {}
        if self.device:
            options["device"] = self.device
        if self.taesd_folder:
            options["taesd"] = self.taesd_folder
        if self.model_folders:
            options["model_folders"] = tuple(self.model_folders)
        if self.lora_folders:
            options["lora_folders"] = tuple(self.lora_folders)
        if self.allow_pickle:
            options["allow_pickle"] = True
        return options

    @property
    def last_request(self) -> Request | None:
        """The panel's request when the studio last closed (without images), or None."""
        data = self._json("session/last_request", None)
        if data is None:
            return None
        try:
            request, _notes = request_from_dict(data, missing_images=True)
            return request.validate()
        except (StudioError, TypeError, ValueError) as exc:
            log.warning("ignoring the stored last request: %s", exc)
            return None

    @last_request.setter
    def last_request(self, request: Request | None) -> None:
        data = (
            None
            if request is None
            else request_to_dict(request.replace(init_image=None, mask=None, controls=()))
        )
        self._set_json("session/last_request", data)

    @property
    def prompt_history(self) -> list[str]:
        """Recent prompts, newest first."""
        return [p for p in self._json("session/prompt_history", []) if isinstance(p, str)]

    @prompt_history.setter
    def prompt_history(self, prompts: list[str]) -> None:
        self._set_json("session/prompt_history", list(prompts))

    @property
    def max_canvas_pixels(self) -> int:
        """The largest canvas (width × height) opened or created; larger files are refused unread."""
        return self._int("document/max_canvas_pixels", MAX_CANVAS_PIXELS)

    @max_canvas_pixels.setter
    def max_canvas_pixels(self, pixels: int) -> None:
        self.qsettings.setValue("document/max_canvas_pixels", int(pixels))

    @property
    def undo_limit_bytes(self) -> int:
        """How much memory the undo history may hold before its oldest steps are dropped."""
        return self._int("document/undo_limit_bytes", UNDO_LIMIT_BYTES)

    @undo_limit_bytes.setter
    def undo_limit_bytes(self, limit: int) -> None:
        self.qsettings.setValue("document/undo_limit_bytes", int(limit))

    def _int(self, key: str, default: int) -> int:
        try:
            value = int(str(self.qsettings.value(key, default)))
        except (TypeError, ValueError):
            log.warning("ignoring an unreadable setting %s", key)
            return default
        return value if value > 0 else default

    # JSON text keeps types exact across QSettings back ends (INI turns lists of one into strings).
    def _json(self, key: str, default: Any) -> Any:
        text = self.qsettings.value(key, None)
        if not text:
            return default
        try:
            value = strict_json.loads(str(text))
        except (ValueError, RecursionError):
            log.warning("ignoring an unreadable setting %s", key)
            return default
        return value if default is None or isinstance(value, type(default)) else default

    def _set_json(self, key: str, value: Any) -> None:
        try:
            text = strict_json.dumps(value, ensure_ascii=True)
        except ValueError:  # a NaN would make the whole setting unreadable: keep the last good one
            log.warning("not saving the setting %s: it holds a number that is not finite", key)
            return
        self.qsettings.setValue(key, text)
