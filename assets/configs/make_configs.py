"""Rebuild the offline config folders (sd15, sd21, sdxl): configs and tokenizer files, no weights.

Run from the repo root: `python assets/configs/make_configs.py /path/to/bpe_simple_vocab_16e6.txt.gz`.
Architecture numbers come from the published SD 1.5, SD 2.1 and SDXL diffusers configs; each component is
built on the meta device (no memory, no weights) so that its saved config carries every default.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig
from transformers.convert_slow_tokenizer import bytes_to_unicode  # CLIP's byte → character table

HERE = Path(__file__).resolve().parent
SD_BETAS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}

SD15_UNET = {
    "sample_size": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD21_UNET = {
    **SD15_UNET,
    "sample_size": 96,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
}
SDXL_UNET = {
    "sample_size": 128,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
# CLIP's published configs keep the legacy token ids (eos 2): transformers then pools at the argmax id.
CLIP_IDS = {
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
}
CLIP_L = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
OPENCLIP_H = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "hidden_act": "gelu",
    "projection_dim": 512,
}
OPENCLIP_BIGG = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}


def clip_vocab(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """vocab.json and merges.txt contents exactly as open_clip's SimpleTokenizer builds them."""
    with gzip.open(bpe_gz) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(vocab)}, merges


def write_tokenizer(folder: Path, vocab: dict[str, int], merges: list[str], pad: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad,
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def write_text_encoder(folder: Path, arch: dict, cls: str) -> None:
    config = CLIPTextConfig(**CLIP_IDS, **arch)
    config.architectures = [cls]
    config.save_pretrained(folder)


def write_model(folder: Path, model_cls: type, arch: dict) -> None:
    with torch.device("meta"):
        model = model_cls(**arch)
    model.save_config(folder)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def build(bpe_gz: Path) -> None:
    vocab, merges = clip_vocab(bpe_gz)
    sd_index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    for name, unet, text, pad, scheduler in (
        (
            "sd15",
            SD15_UNET,
            CLIP_L,
            "<|endoftext|>",
            PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1),
        ),
        # The published SD 2.1 (768 px) predicts v; its 512-px base predicts epsilon.
        (
            "sd21",
            SD21_UNET,
            OPENCLIP_H,
            "!",
            DDIMScheduler(
                **SD_BETAS,
                clip_sample=False,
                set_alpha_to_one=False,
                steps_offset=1,
                prediction_type="v_prediction",
            ),
        ),
    ):
        root = HERE / name
        shutil.rmtree(root, ignore_errors=True)
        index = dict(sd_index, scheduler=["diffusers", type(scheduler).__name__])
        write_json(root / "model_index.json", index)
        write_model(root / "unet", UNet2DConditionModel, unet)
        write_model(root / "vae", AutoencoderKL, dict(VAE, scaling_factor=0.18215))
        write_text_encoder(root / "text_encoder", text, "CLIPTextModel")
        write_tokenizer(root / "tokenizer", vocab, merges, pad)
        scheduler.save_config(root / "scheduler")

    root = HERE / "sdxl"
    shutil.rmtree(root, ignore_errors=True)
    write_json(
        root / "model_index.json",
        {
            "_class_name": "StableDiffusionXLPipeline",
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "force_zeros_for_empty_prompt": True,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    write_model(root / "unet", UNet2DConditionModel, SDXL_UNET)
    write_model(root / "vae", AutoencoderKL, dict(VAE, sample_size=1024, scaling_factor=0.13025))
    write_text_encoder(root / "text_encoder", CLIP_L, "CLIPTextModel")
    write_text_encoder(root / "text_encoder_2", OPENCLIP_BIGG, "CLIPTextModelWithProjection")
    write_tokenizer(root / "tokenizer", vocab, merges, "<|endoftext|>")
    write_tokenizer(root / "tokenizer_2", vocab, merges, "!")
    EulerDiscreteScheduler(
        **SD_BETAS, steps_offset=1, timestep_spacing="leading", interpolation_type="linear"
    ).save_config(root / "scheduler")


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bpe_simple_vocab_16e6.txt.gz"))
