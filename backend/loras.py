"""LoRAs: found in the person's folders, loaded once into the pipeline as adapters, weighted per request.

diffusers reads the files (kohya's `lora_unet_…`/`lora_te_…` keys and its own `unet.…`/`text_encoder.…` keys)
into peft adapters on the UNet and text encoders. Each file is loaded once per model; a request only sets
which adapters are active and at what strength (`set_adapters`), so moving a LoRA's slider never reloads
anything. Pickle files are refused unless allowed, and then read with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import ModelError
from backend.models import (
    ALLOW_PICKLE_HINT,
    PICKLE_SUFFIXES,
    ModelInfo,
    file_sha256,
    pickle_to_safetensors,
    read_safetensors_keys,
    short_error,
    text_width_label,
)

# Where A1111 and ComfyUI keep LoRAs below a folder a person adds (A1111 keeps LyCORIS files apart).
LORA_SUBFOLDERS = ("models/Lora", "models/loras", "models/LyCORIS")
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
MAX_LOADED = 8  # adapters kept loaded beyond those a request uses, so toggling one back is instant


def discover_loras(model_folders: Sequence[str] = (), lora_folders: Sequence[str] = ()) -> list[ModelInfo]:
    """LoRA files in A1111/ComfyUI installs added as model folders, and in folders added for LoRAs."""
    places = [Path(f).expanduser() / sub for f in model_folders for sub in LORA_SUBFOLDERS]
    places += [Path(f).expanduser() for f in lora_folders]
    found: dict[str, ModelInfo] = {}
    for place in places:
        if not place.is_dir():
            continue
        for path in sorted(place.rglob("*")):
            if (
                path.suffix.lower() in LORA_SUFFIXES
                and path.is_file()
                and len(path.relative_to(place).parts) <= 3
            ):
                pickle = path.suffix.lower() != ".safetensors"
                found.setdefault(str(path), ModelInfo(path.stem, str(path), "file", pickle=pickle))
    return list(found.values())


def resolve_lora(ref: str, model_folders: Sequence[str] = (), lora_folders: Sequence[str] = ()) -> Path:
    """The file a LoRA reference names: a path, or a file name or stem found in the LoRA folders."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    for info in discover_loras(model_folders, lora_folders):
        if ref in (info.name, Path(info.path).name):
            return Path(info.path)
    raise ModelError(
        f"LoRA {ref}: no such file, and no LoRA of that name in models/Lora, models/loras or the LoRA "
        "folders in the settings"
    )


_autov3_cache: dict[tuple[str, int, int], str] = {}
_autov3_lock = threading.Lock()


def autov3_hash(path: Path) -> str:
    """A1111's LoRA hash (Civitai "AutoV3"): SHA-256 of a .safetensors file's tensor data, header skipped.

    Other files get the whole file's SHA-256, as A1111 gives them.
    """
    if path.suffix.lower() != ".safetensors":
        return file_sha256(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _autov3_lock:
        if key in _autov3_cache:
            return _autov3_cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(8 + int.from_bytes(handle.read(8), "little"))
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    with _autov3_lock:
        _autov3_cache[key] = digest.hexdigest()
    return _autov3_cache[key]


@dataclass(frozen=True)
class LoadedLora:
    """One LoRA file loaded as an adapter."""

    adapter: str
    path: Path
    stamp: tuple[int, int]  # size and modification time: a changed file is loaded again


class LoraSet:
    """The LoRA adapters loaded into one pipeline, and which of them are active at what strength."""

    def __init__(self, pipe: Any, allow_pickle: bool = False) -> None:
        self.pipe = pipe
        self.allow_pickle = allow_pickle
        self.loaded: dict[str, LoadedLora] = {}  # by resolved path
        self._counter = 0
        self._active: tuple[tuple[str, float], ...] = ()

    def apply(self, loras: Sequence[tuple[Path, float]]) -> None:
        """Make exactly these LoRAs active at these strengths, loading only files not loaded yet."""
        adapters = [(self._adapter_for(path), strength) for path, strength in loras]
        wanted = tuple((a.adapter, float(s)) for a, s in adapters)
        if wanted == self._active:
            return
        if not wanted:
            self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()
            self.pipe.set_adapters([a for a, _ in wanted], adapter_weights=[s for _, s in wanted])
        self._active = wanted
        self._forget_unused({a for a, _ in wanted})

    def _adapter_for(self, path: Path) -> LoadedLora:
        stat = path.stat()
        key = str(path.resolve())
        loaded = self.loaded.get(key)
        if loaded is not None and loaded.stamp == (stat.st_size, stat.st_mtime_ns):
            return loaded
        if loaded is not None:  # the file changed on disk: load it afresh
            self._delete([loaded.adapter])
        self._counter += 1
        adapter = f"lora{self._counter}"
        self._load(path, adapter)
        self.loaded[key] = LoadedLora(adapter, path, (stat.st_size, stat.st_mtime_ns))
        return self.loaded[key]

    def _load(self, path: Path, adapter: str) -> None:
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            if not self.allow_pickle:
                raise ModelError(
                    f"LoRA {path}: is a pickle file ({suffix}), which can run code when loaded; use a "
                    f".safetensors version or {ALLOW_PICKLE_HINT}"
                )
            with tempfile.TemporaryDirectory() as tmp:
                return self._load(pickle_to_safetensors(path, Path(tmp)), adapter)
        if suffix != ".safetensors":
            raise ModelError(f"LoRA {path}: is not a LoRA file (expected .safetensors)")
        keys = read_safetensors_keys(path)
        self._check_family(path, keys)
        from safetensors.torch import load_file

        state = load_file(str(path))
        try:
            self.pipe.load_lora_weights(state, adapter_name=adapter)
        except Exception as exc:  # diffusers/peft raise many types for a file that does not fit
            self._delete([adapter])
            raise ModelError(f"LoRA {path}: does not fit the loaded model ({short_error(exc)})") from None
        if adapter not in {a for names in self.pipe.get_list_adapters().values() for a in names}:
            raise ModelError(f"LoRA {path}: holds no LoRA weights this model has layers for")
        return None

    def _check_family(self, path: Path, keys: dict[str, tuple[int, ...]]) -> None:
        """A one-line error for a LoRA made for another family (its cross-attention key width tells)."""
        want = int(self.pipe.unet.config.cross_attention_dim)
        for key, shape in keys.items():
            if (
                "attn2" in key
                and "to_k" in key
                and ("lora_down" in key or "lora_A" in key)
                and len(shape) == 2
            ):
                if shape[1] != want:
                    raise ModelError(
                        f"LoRA {path}: is made for {text_width_label(shape[1])} models, but the loaded model "
                        f"is {text_width_label(want)}"
                    )
                return

    def _forget_unused(self, active: set[str]) -> None:
        unused = [k for k, v in self.loaded.items() if v.adapter not in active]
        for key in unused[: max(0, len(unused) - MAX_LOADED)]:
            self._delete([self.loaded.pop(key).adapter])

    def _delete(self, adapters: list[str]) -> None:
        present = {a for names in self.pipe.get_list_adapters().values() for a in names}
        gone = [a for a in adapters if a in present]
        if gone:
            self.pipe.delete_adapters(gone)

    def extras(self, loras: Sequence[tuple[str, Path, float]]) -> list[dict[str, Any]]:
        """What recipes record for each LoRA: the name it was given, file, strength, SHA-256 and AutoV3."""
        return [
            {
                "name": path.stem,
                "ref": ref,
                "path": str(path),
                "strength": strength,
                "sha256": file_sha256(path),
                "autov3": autov3_hash(path),
            }
            for ref, path, strength in loras
        ]
