"""ControlNets: found and loaded offline like checkpoints, checked against the model, run inside the loop.

Weights come from a diffusers folder (config.json + weights) or a single `.safetensors` file, in the original
(A1111 `control_v11p_sd15_canny`) or the diffusers key layout. A single file carries no config: it is built
from the loaded model's UNet config, as `ControlNetModel.from_unet` does, so that nothing is fetched. Pickle
files are refused unless the person allows them, and then read with `weights_only=True`.

`control_residuals` is the ControlNet part of diffusers' ControlNet pipelines' loop, step for step: the same
inputs, the same start/end rule (`control_guidance_start/end`), the residuals of several ControlNets summed
in order, so the engine's image equals the pipeline's.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.errors import ModelError
from backend.models import (
    ALLOW_PICKLE_HINT,
    PICKLE_SUFFIXES,
    ModelInfo,
    hub_snapshots,
    pickle_to_safetensors,
    read_safetensors_keys,
    short_error,
    text_width_label,
    weight_files,
)

# Where A1111 (and its ControlNet extension) and ComfyUI keep ControlNets below a folder a person adds.
CONTROLNET_SUBFOLDERS = (
    "models/ControlNet",
    "models/controlnet",
    "extensions/sd-webui-controlnet/models",
)
_CONTEXT_KEY = re.compile(r"attn2\.to_k\.weight$")


@dataclass
class LoadedControlNet:
    """A ControlNet on the engine's device, with where it came from."""

    net: Any  # diffusers ControlNetModel
    name: str  # what the request named
    source: str  # the file or folder


# --- Discovery ---------------------------------------------------------------------------------------------


def discover_controlnets(
    folders: tuple[str, ...] = (), include_hub: bool = True, hub_cache: str | Path | None = None
) -> list[ModelInfo]:
    """ControlNets in the person's folders (and their A1111/ComfyUI ControlNet folders) and the HF cache."""
    found: dict[str, ModelInfo] = {}
    for folder in folders:
        root = Path(folder).expanduser()
        # In a ControlNet folder every weights file is one; elsewhere only names that say so.
        places = [(root, False), *((root / sub, True) for sub in CONTROLNET_SUBFOLDERS)]
        for place, every_file in places:
            if place.is_dir():
                for info in _scan(place, 2, every_file):
                    found.setdefault(info.path, info)
    if include_hub:
        for info in _scan_hub(hub_cache):
            found.setdefault(info.path, info)
    return list(found.values())


def _is_controlnet_folder(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("_class_name") == "ControlNetModel"


def _scan(place: Path, depth: int, every_file: bool) -> list[ModelInfo]:
    if _is_controlnet_folder(place):
        return [ModelInfo(place.name, str(place), "folder")]
    out: list[ModelInfo] = []
    try:
        entries = sorted(place.iterdir())
    except OSError:
        return out
    for entry in entries:
        suffix = entry.suffix.lower()
        if entry.is_file() and suffix in (".safetensors", ".pth", ".ckpt"):
            if every_file or "control" in entry.name.lower():
                out.append(ModelInfo(entry.stem, str(entry), "file", pickle=suffix != ".safetensors"))
        elif entry.is_dir() and depth > 0 and not entry.name.startswith("."):
            out.extend(_scan(entry, depth - 1, every_file))
    return out


def _scan_hub(hub_cache: str | Path | None) -> list[ModelInfo]:
    return [
        ModelInfo(repo_id, str(snapshot), "hub")
        for repo_id, snapshot in hub_snapshots(hub_cache, _is_controlnet_folder)
    ]


# --- Loading -----------------------------------------------------------------------------------------------


def load_controlnet(
    ref: str,
    unet_config: Any,
    device: torch.device,
    dtype: torch.dtype,
    allow_pickle: bool = False,
    folders: tuple[str, ...] = (),
) -> LoadedControlNet:
    """Load the ControlNet `ref` (folder, file, discovered name or hub id) for a model with this UNet.

    A ControlNet made for another family of models raises a one-line ModelError saying which is which.
    """
    path = _resolve(ref, folders)
    try:
        if path is None:
            net, source = _load_hub(ref, unet_config, dtype), ref
        elif path.is_dir():
            net, source = _load_folder(path, unet_config, dtype, allow_pickle), str(path)
        else:
            net, source = _load_file(path, unet_config, dtype, allow_pickle), str(path)
        net.to(device)
    except ModelError:
        raise
    except torch.OutOfMemoryError:
        raise ModelError(f"ControlNet {ref}: does not fit in memory on {device}") from None
    except Exception as exc:  # diffusers raises many types for a bad file: name it, no traceback
        raise ModelError(f"ControlNet {ref}: cannot be loaded ({short_error(exc)})") from None
    net.eval()
    return LoadedControlNet(net, ref, source)


def _resolve(ref: str, folders: tuple[str, ...]) -> Path | None:
    path = Path(ref).expanduser()
    if path.exists():
        return path
    for info in discover_controlnets(folders, include_hub=True):
        if ref in (info.name, Path(info.path).name, Path(info.path).stem):
            return Path(info.path)
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not ref.endswith(PICKLE_SUFFIXES):
        return None  # a hub id not in the cache: only online
    raise ModelError(
        f"ControlNet {ref}: no such file or folder, and no ControlNet of that name in the model folders"
    )


def check_family(name: str, context_width: int, text_time: bool, unet_config: Any) -> None:
    """ModelError unless a ControlNet with this text width (and SDXL's size conditioning) fits the UNet."""
    want = int(unet_config.cross_attention_dim)
    want_text_time = getattr(unet_config, "addition_embed_type", None) == "text_time"
    if context_width != want or text_time != want_text_time:
        theirs, ours = text_width_label(context_width), text_width_label(want)
        raise ModelError(f"ControlNet {name}: is made for {theirs} models, but the loaded model is {ours}")


def _load_hub(repo_id: str, unet_config: Any, dtype: torch.dtype) -> Any:
    from diffusers import ControlNetModel

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    net = ControlNetModel.from_pretrained(
        repo_id, torch_dtype=dtype, local_files_only=offline, use_safetensors=True
    )
    check_family(repo_id, int(net.config.cross_attention_dim), _text_time(net.config), unet_config)
    return net


def _load_folder(folder: Path, unet_config: Any, dtype: torch.dtype, allow_pickle: bool) -> Any:
    from diffusers import ControlNetModel

    if not _is_controlnet_folder(folder):
        raise ModelError(f"ControlNet {folder}: is not a ControlNet folder (its config.json is not one)")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    check_family(str(folder), int(config["cross_attention_dim"]), _text_time(config), unet_config)
    weights = weight_files(folder)
    if not weights:
        raise ModelError(f"ControlNet {folder}: has a config but no weight files")
    if not allow_pickle and not any(w.suffix == ".safetensors" for w in weights):
        raise ModelError(
            f"ControlNet {folder}: holds only pickle weights (.bin), which can run code when loaded; "
            f"convert them to .safetensors or {ALLOW_PICKLE_HINT}"
        )
    return ControlNetModel.from_pretrained(
        str(folder), torch_dtype=dtype, local_files_only=True, use_safetensors=None if allow_pickle else True
    )


def _load_file(path: Path, unet_config: Any, dtype: torch.dtype, allow_pickle: bool) -> Any:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelError(
                f"ControlNet {path}: is a pickle file ({suffix}), which can run code when loaded; use a "
                f".safetensors version or {ALLOW_PICKLE_HINT}"
            )
        with tempfile.TemporaryDirectory() as tmp:
            return _load_file(pickle_to_safetensors(path, Path(tmp)), unet_config, dtype, False)
    if suffix != ".safetensors":
        raise ModelError(f"ControlNet {path}: is not a weights file (expected .safetensors)")
    keys = read_safetensors_keys(path)
    if any("lora_controlnet" in k for k in keys):
        raise ModelError(f"ControlNet {path}: is a Control-LoRA, which the studio does not run")
    if not any("controlnet_cond_embedding" in k or "input_hint_block" in k for k in keys):
        raise ModelError(f"ControlNet {path}: is not a ControlNet (it has no control-image input layers)")
    widths = [shape[1] for k, shape in keys.items() if _CONTEXT_KEY.search(k) and len(shape) == 2]
    if widths:
        text_time = any(k.endswith(("add_embedding.linear_1.weight", "label_emb.0.0.weight")) for k in keys)
        check_family(str(path), widths[0], text_time, unet_config)
    from diffusers import ControlNetModel

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config_from_unet(unet_config)), encoding="utf-8")
        try:
            return ControlNetModel.from_single_file(
                str(path), config=tmp, torch_dtype=dtype, local_files_only=True
            )
        except Exception as exc:
            raise ModelError(
                f"ControlNet {path}: does not match a full-size ControlNet for the loaded model; use its "
                f"diffusers folder (with config.json) instead ({short_error(exc)})"
            ) from None


def _text_time(config: Any) -> bool:
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    return get("addition_embed_type", None) == "text_time"


# The UNet settings a ControlNet copies (diffusers' ControlNetModel.from_unet).
_FROM_UNET = (
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "addition_embed_type",
    "addition_time_embed_dim",
    "transformer_layers_per_block",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
    "only_cross_attention",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "mid_block_scale_factor",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "attention_head_dim",
    "num_attention_heads",
    "use_linear_projection",
    "class_embed_type",
    "num_class_embeds",
    "upcast_attention",
    "resnet_time_scale_shift",
    "projection_class_embeddings_input_dim",
    "mid_block_type",
)


def config_from_unet(unet_config: Any) -> dict[str, Any]:
    """The config of a full-size ControlNet for a model with this UNet config (4 latent channels in)."""
    config: dict[str, Any] = {"_class_name": "ControlNetModel", "in_channels": 4, "conditioning_channels": 3}
    for key in _FROM_UNET:
        if key in unet_config:
            value = unet_config[key]
            config[key] = list(value) if isinstance(value, tuple) else value
    return config


# --- Running -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedControl:
    """One control ready for the loop: its network, its image batch, and its strength and step range."""

    net: Any
    image: torch.Tensor  # 1×3×H×W in [0, 1], doubled for classifier-free guidance unless `guess`
    strength: float
    start: float
    end: float
    guess: bool  # global-pooling ControlNets (shuffle) see only the conditioned half, as in diffusers


def prepare_control(
    net: Any, image: Any, processor: Any, width: int, height: int, guided: bool, device: torch.device
) -> tuple[torch.Tensor, bool]:
    """(image batch, guess mode) as diffusers' `prepare_image` makes them from a PIL control image."""
    guess = bool(getattr(net.config, "global_pool_conditions", False))
    tensor = processor.preprocess(image, height=height, width=width).to(dtype=torch.float32)
    tensor = tensor.to(device=device, dtype=net.dtype)
    return (torch.cat([tensor] * 2) if guided and not guess else tensor), guess


def active(step: int, steps: int, start: float, end: float) -> bool:
    """Whether a control with this start/end fraction acts at step index `step` (diffusers' keep rule)."""
    return not (step / steps < start or (step + 1) / steps > end)


@torch.no_grad()
def control_residuals(
    controls: tuple[PreparedControl, ...],
    sample: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    added: dict[str, Any] | None,
    step: int,
    steps: int,
    guided: bool,
) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """The UNet's extra residuals from every control acting at this step, summed in order; None if none acts.

    `sample` is the scaled model input (both guidance halves), `text` the text batch the UNet gets. A control
    outside its step range adds exactly zero in the pipeline, so skipping it leaves the image unchanged.
    """
    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    for c in controls:
        if not active(step, steps, c.start, c.end):
            continue
        x, context, extra = sample, text, added
        if c.guess and guided:  # the conditioned half only; the unconditioned half gets zeros
            x, context = sample.chunk(2)[1], text.chunk(2)[1]
            extra = {k: v.chunk(2)[1] for k, v in added.items()} if added is not None else None
        d, m = c.net(
            x,
            t,
            encoder_hidden_states=context,
            controlnet_cond=c.image,
            conditioning_scale=c.strength,
            guess_mode=c.guess,
            added_cond_kwargs=extra,
            return_dict=False,
        )
        if c.guess and guided:
            d = [torch.cat([torch.zeros_like(r), r]) for r in d]
            m = torch.cat([torch.zeros_like(m), m])
        if down is None or mid is None:
            down, mid = list(d), m
        else:
            down = [a + b for a, b in zip(down, d, strict=True)]
            mid = mid + m
    return None if down is None or mid is None else (down, mid)
