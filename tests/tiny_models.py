"""Tiny random-weight Stable Diffusion pipelines for tests: SD1.x- and SDXL-shaped, offline, fast.

Public API (other test modules use these):
- `build_tiny_sd(seed=0, inpaint=False) -> StableDiffusionPipeline` (9-channel UNet when `inpaint`)
- `build_tiny_sdxl(seed=0) -> StableDiffusionXLPipeline`
- `build_tiny_sd2(seed=0) -> StableDiffusionPipeline`: SD 2.x-shaped (1024-wide text tower, v-prediction)
- `build_tiny_lcm(seed=0) -> LatentConsistencyModelPipeline`: a guidance-embedding UNet with the LCM scheduler
- `save_tiny_sd(path, seed=0) -> Path` / `save_tiny_sdxl(path, seed=0) -> Path`: a diffusers folder
- `tiny_tokenizer_folder(path) -> Path`: the byte-level CLIP tokenizer files
- `build_tiny_controlnet(unet, seed=0) -> ControlNetModel`: a ControlNet shaped for that UNet, random weights
  (its zero convolutions too, so that it visibly steers)

The shapes follow the real models (VAE downsamples by 8, CLIP text towers, SDXL's text-time embedding),
scaled down so that a few steps at 64×64 take well under a second on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    EulerDiscreteScheduler,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode  # CLIP's byte → character table

MAX_LENGTH = 77
TEXT_DIM = 32
# SDXL's second text tower is wider than its first, as in the real model (1280 vs 768); single-file loading
# tells the two apart by that width.
TEXT_DIM_2 = 48


def tiny_tokenizer_folder(path: str | Path, pad_token: str = "<|endoftext|>") -> Path:
    """Write a byte-level CLIP tokenizer (514 symbols, no merges) into `path` and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (path / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(vocab)}), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def _tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(tiny_tokenizer_folder(tmp, pad_token))


def _text_config(hidden: int = TEXT_DIM, hidden_act: str = "quick_gelu", **extra: object) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=514,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        hidden_act=hidden_act,
        **extra,
    )


def _vae() -> AutoencoderKL:
    # Four blocks so that the VAE downsamples by 8 like the real one (three explicit-pad Downsample2D).
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )


def _scheduler(prediction_type: str = "epsilon") -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type=prediction_type,
    )


def _sd_unet(in_channels: int = 4, **extra: object) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=16,
        **{"cross_attention_dim": TEXT_DIM, "attention_head_dim": 8, **extra},
    )


def build_tiny_sd(seed: int = 0, inpaint: bool = False) -> StableDiffusionPipeline:
    """A random-weight SD1.x-shaped pipeline in float32 on the CPU (9-channel UNet when `inpaint`)."""
    torch.manual_seed(seed)
    unet = _sd_unet(in_channels=9 if inpaint else 4)
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config()),
        tokenizer=_tokenizer(),
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd2(seed: int = 0) -> StableDiffusionPipeline:
    """A random-weight SD 2.x-shaped pipeline: OpenCLIP-width (1024) text tower with GELU, linear attention
    projections, and a scheduler that predicts v (as SD 2.1 at 768² does)."""
    torch.manual_seed(seed)
    width = 1024  # the width the studio (and single-file loading) recognises SD 2.x by
    unet = _sd_unet(cross_attention_dim=width, attention_head_dim=(2, 4), use_linear_projection=True)
    text = CLIPTextModel(_text_config(width, hidden_act="gelu"))  # OpenCLIP uses exact GELU
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text,
        tokenizer=_tokenizer(pad_token="!"),  # OpenCLIP pads with "!", not the end token
        unet=unet,
        scheduler=_scheduler("v_prediction"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_lcm(seed: int = 0) -> LatentConsistencyModelPipeline:
    """A random-weight latent consistency model: the UNet takes the guidance scale as an embedding
    (`time_cond_proj_dim`), so there is no classifier-free guidance pass; LCM's own scheduler."""
    torch.manual_seed(seed)
    pipe = LatentConsistencyModelPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config()),
        tokenizer=_tokenizer(),
        unet=_sd_unet(time_cond_proj_dim=16),
        scheduler=LCMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """A random-weight SDXL-shaped pipeline (two text towers, text-time conditioning), float32 on the CPU."""
    torch.manual_seed(seed)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=TEXT_DIM + TEXT_DIM_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # six time ids (original size, crop, target size) plus the pooled text embedding
        projection_class_embeddings_input_dim=6 * time_dim + TEXT_DIM_2,
        norm_num_groups=16,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(TEXT_DIM_2, projection_dim=TEXT_DIM_2)),
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=_scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd(path: str | Path, seed: int = 0, inpaint: bool = False) -> Path:
    """Save a tiny SD1.x pipeline as a diffusers folder (safetensors weights) and return the folder."""
    path = Path(path)
    build_tiny_sd(seed, inpaint=inpaint).save_pretrained(path, safe_serialization=True)
    return path


def save_tiny_sdxl(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny SDXL pipeline as a diffusers folder (safetensors weights) and return the folder."""
    path = Path(path)
    build_tiny_sdxl(seed).save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_controlnet(unet: UNet2DConditionModel, seed: int = 0) -> ControlNetModel:
    """A ControlNet for `unet` (as ControlNetModel.from_unet shapes it) with every weight random."""
    net = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return net.eval()


def save_tiny_lora(
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline,
    path: str | Path,
    seed: int = 0,
    kohya: bool = False,
) -> Path:
    """A random LoRA for `pipe`'s UNet and text encoder(s), made with peft, saved as one .safetensors file.

    `kohya` writes kohya-ss keys (`lora_unet_…`, `lora_te_…` with `.alpha`), as A1111 LoRAs have them;
    otherwise diffusers' own `unet.…`/`text_encoder.…` keys. The pipeline itself is left without adapters.
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    parts = {"unet": (pipe.unet, ["to_q", "to_k", "to_v", "to_out.0"])}
    encoders = ["text_encoder", "text_encoder_2"] if hasattr(pipe, "text_encoder_2") else ["text_encoder"]
    for name in encoders:
        parts[name] = (getattr(pipe, name), ["q_proj", "k_proj", "v_proj", "out_proj"])
    state: dict[str, torch.Tensor] = {}
    for prefix, (module, targets) in parts.items():
        # On a copy: the pipeline keeps no adapter. (peft's own injection: transformers' add_adapter wants a
        # newer peft than PyPI has.)
        copy = inject_adapter_in_model(
            LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=targets),
            __import__("copy").deepcopy(module),
        )
        with torch.no_grad():  # peft's random init is large for a tiny model; keep the LoRA a nudge
            for key, value in get_peft_model_state_dict(copy).items():
                # Files in the wild name CLIP's layers as older transformers did: text_model.encoder....
                if prefix != "unet" and not key.startswith("text_model."):
                    key = f"text_model.{key}"
                state[f"{prefix}.{key}"] = value * 0.6
    if kohya:
        state = convert_state_dict_to_kohya(state)
        if len(encoders) == 1:  # SD 1.x kohya files name their one text encoder lora_te
            state = {k.replace("lora_te1_", "lora_te_"): v for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
