"""Find and load Stable Diffusion models offline: diffusers folders, single .safetensors files, hub ids.

A single checkpoint file carries only tensors; the pipeline's configs and tokenizers come from the folders in
`assets/configs/`, so loading one never touches the network. Pickle checkpoints (.ckpt/.pt/.bin) can run code
when unpickled: they are refused unless the person allows them, and even then read with
`torch.load(weights_only=True)`, which builds tensors and refuses any other object.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from backend.device_memory import free_memory
from backend.errors import ModelError
from backend.licences import model_licence

CONFIGS = Path(__file__).resolve().parent.parent / "assets" / "configs"
CONFIG_FOR_FAMILY = {"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl"}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
# Where a person allows pickles: every refusal names the real switches.
ALLOW_PICKLE_HINT = (
    "allow pickle files (in the window: Models → Allow pickle model files; studio-cli: --allow-pickle)"
)
# Where A1111 and ComfyUI keep checkpoints below the folder a person adds.
CHECKPOINT_SUBFOLDERS = ("models/Stable-diffusion", "models/checkpoints")
# Folders of an A1111/ComfyUI install that hold other kinds of weights: never listed as checkpoints.
NOT_CHECKPOINT_FOLDERS = {
    "lora",
    "loras",
    "lycoris",
    "controlnet",
    "vae",
    "vae_approx",
    "embeddings",
    "hypernetworks",
    "upscale_models",
    "esrgan",
    "realesrgan",
    "clip",
    "clip_vision",
}
# Text-encoder width (a UNet's cross-attention width) → the family it belongs to, for messages.
FAMILY_BY_TEXT_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


def text_width_label(width: int) -> str:
    """The family a text width belongs to ("SD 1.x"), or "text width N" for others (tiny test models)."""
    return FAMILY_BY_TEXT_WIDTH.get(width, f"text width {width}")


@dataclass
class LoadedModel:
    """A loaded pipeline with what recipes need to know about it."""

    pipe: Any  # a diffusers StableDiffusion(XL)(Inpaint)Pipeline
    name: str  # what the request named
    source: str  # the file, folder or hub snapshot folder it came from
    family: str  # "sd1", "sd2" or "sdxl"
    licence: str = ""  # what the files say (modelspec.license, the model card's license), "" if nothing

    @property
    def inpaint_unet(self) -> bool:
        """True for 9-channel inpainting UNets (latents + mask + masked-image latents)."""
        return int(self.pipe.unet.config.in_channels) == 9


@dataclass(frozen=True)
class ModelInfo:
    """A model found on this machine."""

    name: str
    path: str
    kind: str  # "folder", "file" or "hub"
    pickle: bool = False
    licence: str = ""  # what the files say, "" if nothing (see model_licence)


def family_of(pipe: Any) -> str:
    """sd1, sd2 or sdxl from the loaded components."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    encoder = getattr(pipe, "text_encoder", None)
    if encoder is not None and int(encoder.config.hidden_size) == 1024:
        return "sd2"
    return "sd1"


def checkpoint_family(keys: set[str], name: str) -> str:
    """sd1, sd2 or sdxl from the tensor names of an original (LDM-format) checkpoint."""
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"  # OpenCLIP text tower
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "sd1"
    raise ModelError(
        f"{name}: has no Stable Diffusion UNet weights (a LoRA, VAE or embedding file is not a checkpoint)"
    )


def read_safetensors_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a .safetensors header; ModelError for a corrupt or truncated file."""
    from safetensors import SafetensorError, safe_open

    try:
        # safetensors says "header too large" for a header cut short; the length prefix tells the two apart.
        with path.open("rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
        if header_size < (100 << 20) and 8 + header_size > path.stat().st_size:
            raise ModelError(f"{path}: is truncated or corrupt: the file ends inside its header")
        with safe_open(str(path), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        text = str(exc)
        if "not fully covered" in text or "incomplete" in text:
            why = "is truncated or corrupt: the header promises more data than the file holds"
        elif "header too large" in text or "header too small" in text or "invalid" in text.lower():
            why = "is not a valid .safetensors file (its header cannot be read)"
        else:
            why = f"cannot be read as .safetensors ({text})"
        raise ModelError(f"{path}: {why}") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None


# --- Loading -----------------------------------------------------------------------------------------------


def load_model(
    ref: str,
    device: torch.device,
    dtype: torch.dtype,
    allow_pickle: bool = False,
    model_folders: tuple[str, ...] = (),
    config: str | Path | None = None,
) -> LoadedModel:
    """Load `ref` (folder, .safetensors file, discovered name or hub id) onto `device` in `dtype`.

    `config` overrides the shipped config folder for single files. Every failure is a ModelError that names
    the file and what is wrong.
    """
    path = _resolve(ref, model_folders)
    try:
        if path is None:
            pipe, source = _load_hub(ref, dtype)
        elif path.is_dir():
            pipe, source = _load_folder(path, dtype, allow_pickle), str(path)
        else:
            pipe, source = _load_file(path, dtype, allow_pickle, config), str(path)
        pipe.to(device)
    except ModelError:
        raise
    except torch.OutOfMemoryError:
        free_memory()
        raise ModelError(
            f"{ref}: does not fit in memory on {device}; close other programs, use fp16, or a smaller model"
        ) from None
    except Exception as exc:  # diffusers/transformers raise many types for a bad model: name it, no traceback
        free_memory()
        raise ModelError(f"{ref}: cannot be loaded ({short_error(exc)})") from None
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(
        pipe=pipe, name=ref, source=source, family=family_of(pipe), licence=model_licence(source)
    )


def _resolve(ref: str, model_folders: tuple[str, ...]) -> Path | None:
    if not ref.strip():
        raise ModelError("no model given: choose a diffusers folder, a .safetensors file or a hub id")
    path = Path(ref).expanduser()
    if path.exists():
        return path
    found = discover(model_folders, include_hub=False)
    for info in found:
        if ref in (info.name, Path(info.path).name):
            return Path(info.path)
    same = [info.name for info in found if Path(info.path).stem == ref or Path(info.path).name == ref]
    if len(same) > 1:
        raise ModelError(f"{ref}: names {len(same)} models ({', '.join(same)}); give the one you mean")
    looks_like_path = ref.startswith((".", "/", "~")) or "\\" in ref or ref.endswith(WEIGHT_SUFFIXES)
    if looks_like_path or ref.count("/") != 1:
        raise ModelError(
            f"{ref}: no such file or folder (give a diffusers folder, a .safetensors file or a hub id)"
        )
    return None  # a hub id


def _load_hub(repo_id: str, dtype: torch.dtype) -> tuple[Any, str]:
    from diffusers import DiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    try:
        # diffusers picks the component files (not the multi-GB single-file copies many repos also hold).
        folder = DiffusionPipeline.download(repo_id, local_files_only=offline, use_safetensors=True)
    except Exception as exc:
        where = (
            "is not in the local Hugging Face cache and the studio is offline"
            if offline
            else "cannot be fetched"
        )
        raise ModelError(f"{repo_id}: {where} ({short_error(exc)})") from None
    extra = _pipeline_extras(Path(folder))
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True, **extra)
    return pipe, str(folder)


def _load_folder(folder: Path, dtype: torch.dtype, allow_pickle: bool) -> Any:
    from diffusers import DiffusionPipeline

    if not (folder / "model_index.json").is_file():
        raise ModelError(f"{folder}: is not a diffusers model folder (it has no model_index.json)")
    weights = weight_files(folder)
    if not weights:
        raise ModelError(f"{folder}: has configs but no weight files")
    if not allow_pickle and not any(w.suffix == ".safetensors" for w in weights):
        raise ModelError(
            f"{folder}: holds only pickle weights (.bin), which can run code when loaded; convert them to "
            f".safetensors or {ALLOW_PICKLE_HINT}"
        )
    for weight in weights:
        if weight.suffix == ".safetensors":
            read_safetensors_keys(weight)  # a clear message for a truncated shard, before diffusers tries
    extra = _pipeline_extras(folder)
    # use_safetensors=True makes diffusers refuse .bin; when allowed it reads them with weights_only=True.
    return DiffusionPipeline.from_pretrained(
        str(folder),
        torch_dtype=dtype,
        local_files_only=True,
        use_safetensors=None if allow_pickle else True,
        **extra,
    )


def _pipeline_extras(folder: Path) -> dict[str, Any]:
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder / 'model_index.json'}: cannot be read ({exc})") from None
    # The safety checker is a second large model the studio does not use.
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}


def _load_file(path: Path, dtype: torch.dtype, allow_pickle: bool, config: str | Path | None) -> Any:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelError(
                f"{path}: is a pickle checkpoint ({suffix}), which can run code when loaded; use a "
                f".safetensors version of the model or {ALLOW_PICKLE_HINT}"
            )
        with tempfile.TemporaryDirectory() as tmp:
            return _load_file(pickle_to_safetensors(path, Path(tmp)), dtype, False, config)
    if suffix != ".safetensors":
        raise ModelError(f"{path}: is not a model file (expected .safetensors)")
    keys = read_safetensors_keys(path)
    family = checkpoint_family(set(keys), str(path))
    conv_in = keys.get("model.diffusion_model.input_blocks.0.0.weight", ())
    inpaint = len(conv_in) == 4 and conv_in[1] == 9
    config_folder = Path(config) if config is not None else CONFIGS / CONFIG_FOR_FAMILY[family]
    with tempfile.TemporaryDirectory() as tmp:
        if inpaint:
            config_folder = _inpaint_config(config_folder, Path(tmp))
        _check_against_config(path, keys, config_folder)
        from diffusers import (
            StableDiffusionInpaintPipeline,
            StableDiffusionPipeline,
            StableDiffusionXLInpaintPipeline,
            StableDiffusionXLPipeline,
        )

        if family == "sdxl":
            cls, extra = (StableDiffusionXLInpaintPipeline if inpaint else StableDiffusionXLPipeline), {}
        else:
            cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
            extra = {"safety_checker": None, "requires_safety_checker": False}
        try:
            return cls.from_single_file(
                str(path), config=str(config_folder), torch_dtype=dtype, local_files_only=True, **extra
            )
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            raise ModelError(
                f"{path}: does not match the {Path(config or config_folder).name} config for a {family} "
                f"model ({short_error(exc)})"
            ) from None


def _inpaint_config(folder: Path, tmp: Path) -> Path:
    """The config folder for a 9-channel inpainting checkpoint: a copy whose UNet takes 9 input channels."""
    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    if unet_config.get("in_channels") == 9:
        return folder
    copy = Path(shutil.copytree(folder, tmp / folder.name))
    unet_config["in_channels"] = 9
    (copy / "unet" / "config.json").write_text(json.dumps(unet_config), encoding="utf-8")
    index = json.loads((copy / "model_index.json").read_text(encoding="utf-8"))
    index["_class_name"] = index["_class_name"].replace("Pipeline", "InpaintPipeline")
    (copy / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return copy


# (tensor in an LDM checkpoint, its axis, config file, config key, index into a list value, what it is)
_SHAPE_CHECKS = (
    ("model.diffusion_model.input_blocks.0.0.weight", 0, "unet", "block_out_channels", 0, "UNet width"),
    ("model.diffusion_model.input_blocks.0.0.weight", 1, "unet", "in_channels", None, "UNet input channels"),
    ("first_stage_model.encoder.conv_in.weight", 0, "vae", "block_out_channels", 0, "VAE width"),
    (
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        1,
        "text_encoder",
        "hidden_size",
        None,
        "text encoder width",
    ),
    (
        "cond_stage_model.model.token_embedding.weight",
        1,
        "text_encoder",
        "hidden_size",
        None,
        "text encoder width",
    ),
    (
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        1,
        "text_encoder",
        "hidden_size",
        None,
        "text encoder width",
    ),
)


def _check_against_config(path: Path, keys: dict[str, tuple[int, ...]], folder: Path) -> None:
    """Compare a few telling tensor shapes with the config before diffusers builds full-size modules."""
    for key, axis, component, name, index, what in _SHAPE_CHECKS:
        if key not in keys:
            continue
        config_file = folder / component / "config.json"
        try:
            want = json.loads(config_file.read_text(encoding="utf-8"))[name]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{config_file}: is not a usable config ({exc})") from None
        want = want[index] if index is not None else want
        got = keys[key][axis]
        if got != want:
            raise ModelError(
                f"{path}: does not match the {folder.name} config: the {what} is {got} in the file "
                f"but {want} in the config"
            )


def pickle_to_safetensors(path: Path, tmp: Path) -> Path:
    """Tensors of a pickle checkpoint, read with weights_only=True (no code runs), written as safetensors."""
    from safetensors.torch import save_file

    state = pickle_state_dict(path)
    while "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    out = tmp / (path.stem + ".safetensors")
    save_file(tensors, str(out))
    return out


def pickle_state_dict(path: Path) -> dict[str, Any]:
    """The dict a pickle checkpoint holds, read with weights_only=True: tensors and plain values are built,
    any other object is refused, so no code in the file runs."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, or an object weights_only refuses to build
        raise ModelError(
            f"{path}: cannot be read safely as a weights-only checkpoint ({short_error(exc)})"
        ) from None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: holds no state dict of tensors")
    return state


def short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text[:300]}"


# --- Hashes ------------------------------------------------------------------------------------------------

_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def weight_files(source: str | Path) -> list[Path]:
    """The weight files of a model file or folder, in a stable order."""
    source = Path(source)
    if source.is_file():
        return [source]
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in WEIGHT_SUFFIXES and p.is_file())


def file_sha256(path: Path) -> str:
    """SHA-256 of one file, cached by path, size and modification time (hashing gigabytes is slow)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    with _hash_lock:
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def model_hash(source: str | Path) -> str:
    """SHA-256 of a checkpoint file (as A1111 shows it), or over a folder's weight files in path order."""
    files = weight_files(source)
    if len(files) == 1 and Path(source).is_file():
        return file_sha256(files[0])
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(source)).replace(os.sep, "/").encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


# --- Discovery ---------------------------------------------------------------------------------------------


def discover(
    model_folders: tuple[str, ...] = (), include_hub: bool = True, hub_cache: str | Path | None = None
) -> list[ModelInfo]:
    """Models in the folders a person added (and their A1111/ComfyUI checkpoint folders) and the HF cache.

    `hub_cache` overrides the Hugging Face cache folder (default: the one huggingface_hub uses).
    """
    found: list[ModelInfo] = []
    seen: set[str] = set()

    def add(info: ModelInfo) -> None:
        if info.path not in seen:
            seen.add(info.path)
            found.append(info)

    for folder in model_folders:
        root = Path(folder).expanduser()
        for place in (root, *(root / sub for sub in CHECKPOINT_SUBFOLDERS)):
            if place.is_dir():
                for info in _scan_folder(place):
                    add(info)
    if include_hub:
        for info in _scan_hub_cache(hub_cache):
            add(info)
    return _unique_names(found)


def _unique_names(found: list[ModelInfo]) -> list[ModelInfo]:
    """Give models that share a name (evil.ckpt beside evil.safetensors) their file name, or their path.

    A list that shows two entries called `evil` does not say which one a name would load.
    """
    stems = Counter(info.name for info in found)
    names = [Path(info.path).name if stems[info.name] > 1 else info.name for info in found]
    files = Counter(names)
    return [
        replace(info, name=info.path if files[name] > 1 else name)
        for info, name in zip(found, names, strict=True)
    ]


def _scan_folder(place: Path, depth: int = 2) -> list[ModelInfo]:
    out: list[ModelInfo] = []
    if (place / "model_index.json").is_file():
        return [ModelInfo(place.name, str(place), "folder", licence=model_licence(place))]
    try:
        entries = sorted(place.iterdir())
    except OSError:
        return out
    for entry in entries:
        if entry.is_file() and entry.suffix.lower() in (".safetensors", ".ckpt"):
            pickle = entry.suffix.lower() != ".safetensors"
            licence = "" if pickle else model_licence(entry)
            out.append(ModelInfo(entry.stem, str(entry), "file", pickle=pickle, licence=licence))
        elif (
            entry.is_dir()
            and depth > 0
            and not entry.name.startswith(".")
            and entry.name.lower() not in NOT_CHECKPOINT_FOLDERS
        ):
            out.extend(_scan_folder(entry, depth - 1))
    return out


def hub_snapshots(hub_cache: str | Path | None, wanted: Callable[[Path], bool]) -> list[tuple[str, Path]]:
    """(repo id, snapshot folder) of each model repo in the HF cache with a revision `wanted` accepts
    (the first such revision), sorted by repo id; [] without a readable cache."""
    from huggingface_hub import scan_cache_dir

    try:
        cache = scan_cache_dir(hub_cache)
    except Exception:  # no cache yet, or an unreadable one: nothing to list
        return []
    found = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        snapshot = next(
            (Path(r.snapshot_path) for r in repo.revisions if wanted(Path(r.snapshot_path))), None
        )
        if snapshot is not None:
            found.append((repo.repo_id, snapshot))
    return found


def _scan_hub_cache(hub_cache: str | Path | None) -> list[ModelInfo]:
    return [
        ModelInfo(repo_id, str(snapshot), "hub", licence=model_licence(str(snapshot)))
        for repo_id, snapshot in hub_snapshots(
            hub_cache, lambda folder: (folder / "model_index.json").is_file()
        )
    ]
