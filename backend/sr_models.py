"""Super-resolution models (ESRGAN, Real-ESRGAN, SwinIR, ... files) read by spandrel, run tile by tile.

spandrel's package metadata asks for torchvision, which must not be installed beside the pinned torch, so
the README installs spandrel with `--no-deps` (its real needs, einops among them, are in pyproject). Two of
spandrel's architectures (LaMa, an inpainter, and RestoreFormer, a face restorer; neither upscales) import
torchvision when spandrel is imported. `import_spandrel` lets that import go through with stand-ins that
raise a clear error if one of those two models is ever run, then removes the stand-ins from `sys.modules`
so that no other library believes torchvision is installed. Every upscaler works as spandrel ships it.

Weights load as for checkpoints: .safetensors directly; a pickle (.pth/.pt/.ckpt/.bin) only when the person
allows pickles, and then with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.errors import ModelError
from backend.models import ALLOW_PICKLE_HINT, PICKLE_SUFFIXES, file_sha256, pickle_state_dict, short_error
from backend.tiles import Blender, tile_boxes

SPANDREL_INSTALL = ".venv/bin/pip install --no-deps spandrel==0.4.2"
SR_TILE = 256  # input pixels per tile: bounded memory for any image size
SR_OVERLAP = 16
_TORCHVISION = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


class _NeedsTorchvision:
    """Stands in for a torchvision function or enum that spandrel names at import time."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _NeedsTorchvision(f"{self._name}.{attr}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ModelError(
            f"this model's architecture needs torchvision ({self._name}), which the studio does not install "
            "beside its torch; upscalers (ESRGAN, SwinIR, ...) do not"
        )


class _StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, name: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name in _TORCHVISION:
            return importlib.machinery.ModuleSpec(name, self, is_package=name != _TORCHVISION[-1])
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__getattr__ = lambda attr: _NeedsTorchvision(f"{spec.name}.{attr}")  # type: ignore[method-assign]
        if spec.name != _TORCHVISION[-1]:
            module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


@contextlib.contextmanager
def _torchvision_stand_ins() -> Iterator[None]:
    finder = _StandIn()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in _TORCHVISION:
            spec = getattr(sys.modules.get(name), "__spec__", None)
            if spec is not None and isinstance(spec.loader, _StandIn):
                del sys.modules[name]


def import_spandrel() -> Any:
    """The spandrel module (see the module docstring); ModelError with the install line when missing."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    if importlib.util.find_spec("spandrel") is None:
        raise ModelError(f"upscale models need the spandrel package: {SPANDREL_INSTALL}")
    if importlib.util.find_spec("torchvision") is not None:
        import spandrel

        return spandrel
    with _torchvision_stand_ins():
        import spandrel

    return spandrel


# Where A1111 and ComfyUI keep upscale models below a folder the person adds.
UPSCALER_SUBFOLDERS = ("models/ESRGAN", "models/RealESRGAN", "models/upscale_models")
UPSCALER_SUFFIXES = (".safetensors", ".pth", ".pt")


def discover_upscalers(folders: tuple[str, ...]) -> list[Path]:
    """Upscale model files in the A1111/ComfyUI folders below each of `folders`, by name."""
    found: dict[str, Path] = {}
    for folder in folders:
        for sub in UPSCALER_SUBFOLDERS:
            place = Path(folder).expanduser() / sub
            for entry in sorted(place.glob("*")) if place.is_dir() else []:
                if entry.suffix.lower() in UPSCALER_SUFFIXES and entry.is_file():
                    found.setdefault(entry.stem, entry)
    return list(found.values())


def resolve_upscaler(ref: str, folders: tuple[str, ...]) -> Path:
    """The file `ref` names: a path, or the name of a model in the model folders; ModelError if neither."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    for candidate in discover_upscalers(folders):
        if ref in (candidate.stem, candidate.name):
            return candidate
    raise ModelError(f"upscale model {ref}: no such file (nor a model of that name in the model folders)")


@dataclass
class Upscaler:
    """A loaded super-resolution model and what a recipe says about it."""

    model: Any  # spandrel ImageModelDescriptor
    path: str
    name: str
    sha256: str
    scale: int
    architecture: str

    def extras(self) -> dict[str, Any]:
        """For the recipe: which file, its hash, what it is."""
        return {
            "name": self.name,
            "path": self.path,
            "sha256": self.sha256,
            "scale": self.scale,
            "architecture": self.architecture,
        }


def load_upscaler(path: str | Path, device: torch.device, allow_pickle: bool = False) -> Upscaler:
    """Load a super-resolution model file; ModelError naming the file and the problem."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(f"upscale model {path}: no such file")
    suffix = file.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelError(
                f"upscale model {file}: is a pickle file ({suffix}), which can run code when loaded; use a "
                f".safetensors version or {ALLOW_PICKLE_HINT}"
            )
        state = pickle_state_dict(file)
    elif suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(file))
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"upscale model {file}: cannot be read ({short_error(exc)})") from None
    else:
        raise ModelError(f"upscale model {file}: expected a .safetensors or .pth file")
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader(device=torch.device("cpu")).load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise ModelError(f"upscale model {file}: not a model architecture spandrel knows") from None
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise ModelError(f"upscale model {file}: its weights do not fit its architecture ({exc})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.scale < 2:
        raise ModelError(
            f"upscale model {file}: is a {descriptor.architecture.name} {descriptor.purpose} model, not an "
            "upscaler"
        )
    descriptor.to(device).eval()
    if device.type == "cuda" and descriptor.supports_half:
        descriptor.half()
    return Upscaler(
        descriptor,
        str(file),
        file.stem,
        file_sha256(file),
        int(descriptor.scale),
        descriptor.architecture.name,
    )


def super_resolve(
    upscaler: Upscaler, image: np.ndarray, should_stop: Callable[[], bool] = lambda: False
) -> Generator[int, None, np.ndarray | None]:
    """The image (H×W×3 uint8) through the model once, tile by tile, yielding after each tile; returns the
    H·s × W·s × 3 float image in [0, 1], or None when stopped."""
    s = upscaler.scale
    h, w = image.shape[:2]
    blender = Blender(w * s, h * s, SR_OVERLAP * s)
    parameter = next(upscaler.model.model.parameters())
    for box in tile_boxes(w, h, SR_TILE, SR_OVERLAP):
        if should_stop():
            return None
        tile = image[box.y : box.y + box.h, box.x : box.x + box.w]
        x = torch.from_numpy(np.array(tile)).permute(2, 0, 1)[None].float().div(255.0)
        with torch.no_grad():  # spandrel pads to the model's size needs and crops back
            y = upscaler.model(x.to(parameter.device, parameter.dtype)).float()[0]
        blender.add(box.scaled(s), y.permute(1, 2, 0).cpu().numpy())
        yield 1
    return blender.result()


def sr_tile_count(width: int, height: int) -> int:
    """How many tiles `super_resolve` runs for an image of this size."""
    return len(tile_boxes(width, height, SR_TILE, SR_OVERLAP))
