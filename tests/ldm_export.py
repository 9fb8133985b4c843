"""Write a tiny SD1.x or SDXL pipeline as one original-layout (LDM) checkpoint file, as A1111 and ComfyUI use.

The inverse of diffusers' single-file conversion (`diffusers.loaders.single_file_utils`), for any
`layers_per_block` and block count, so that tests can load a real single-file checkpoint offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str, table: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{table.get(head, head)}.{tail}"


def unet_to_ldm(unet: Any) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel weights under LDM names (`model.diffusion_model.` prefix)."""
    per = unet.config.layers_per_block + 1
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    out = {}
    for key, value in unet.state_dict().items():
        parts = key.split(".")
        name = None
        for old, new in fixed.items():
            if key.startswith(old + "."):
                name = new + key[len(old) :]
        if parts[0] == "down_blocks":
            b, kind = int(parts[1]), parts[2]
            rest = ".".join(parts[4:])
            if kind == "resnets":
                name = f"input_blocks.{1 + b * per + int(parts[3])}.0.{_resnet(rest, RESNET)}"
            elif kind == "attentions":
                name = f"input_blocks.{1 + b * per + int(parts[3])}.1.{rest}"
            else:  # downsamplers.0.conv.*
                name = f"input_blocks.{(b + 1) * per}.0.op.{parts[-1]}"
        elif parts[0] == "mid_block":
            rest = ".".join(parts[3:])
            if parts[1] == "resnets":
                name = f"middle_block.{2 * int(parts[2])}.{_resnet(rest, RESNET)}"
            else:
                name = f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            b, kind = int(parts[1]), parts[2]
            rest = ".".join(parts[4:])
            if kind == "resnets":
                name = f"output_blocks.{b * per + int(parts[3])}.0.{_resnet(rest, RESNET)}"
            elif kind == "attentions":
                name = f"output_blocks.{b * per + int(parts[3])}.1.{rest}"
            else:  # upsamplers.0.conv.*: after the attention when the block has one
                slot = 2 if hasattr(unet.up_blocks[b], "attentions") else 1
                name = f"output_blocks.{b * per + per - 1}.{slot}.conv.{parts[-1]}"
        if name is None:
            raise KeyError(f"no LDM name for UNet weight {key}")
        out["model.diffusion_model." + name] = value
    return out


def vae_to_ldm(vae: Any) -> dict[str, torch.Tensor]:
    """AutoencoderKL weights under LDM names (`first_stage_model.` prefix), attention as 1×1 convs."""
    n_up = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        parts = key.split(".")
        name = key.replace("conv_norm_out", "norm_out")
        if len(parts) > 2 and parts[1] == "down_blocks":
            i, rest = parts[2], ".".join(parts[5:])
            if parts[3] == "resnets":
                name = f"{parts[0]}.down.{i}.block.{parts[4]}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                name = f"{parts[0]}.down.{i}.downsample.conv.{parts[-1]}"
        elif len(parts) > 2 and parts[1] == "up_blocks":
            i, rest = n_up - 1 - int(parts[2]), ".".join(parts[5:])
            if parts[3] == "resnets":
                name = f"{parts[0]}.up.{i}.block.{parts[4]}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                name = f"{parts[0]}.up.{i}.upsample.conv.{parts[-1]}"
        elif len(parts) > 2 and parts[1] == "mid_block":
            if parts[2] == "resnets":
                rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
                name = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{rest}"
            else:
                inner = ".".join(parts[4:-1])
                name = f"{parts[0]}.mid.attn_1.{VAE_ATTN[inner]}.{parts[-1]}"
                if parts[-1] == "weight" and value.ndim == 2:
                    value = value[:, :, None, None]
        out["first_stage_model." + name] = value
    return out


def clip_to_ldm(encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model under its original names (nested in `text_model.`)."""
    out = {}
    for key, value in encoder.state_dict().items():
        # transformers ≥ 5.6 flattened CLIPTextModel; original checkpoints keep text_model.
        out[prefix + (key if key.startswith("text_model.") else "text_model." + key)] = value
    return out


def open_clip_to_ldm(encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection in OpenCLIP's layout (fused q/k/v, transposed projection), as SDXL stores
    its second text tower."""
    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    out = {
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in state:  # SDXL's tower has a projection; SD 2's text encoder does not
        out["text_projection"] = state.pop("text_projection.weight").T.contiguous()
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    for i in range(encoder.config.num_hidden_layers):
        layer = f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            fused = [state.pop(f"{layer}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(fused)
            for old, new in names.items():
                out[f"transformer.resblocks.{i}.{new}.{kind}"] = state.pop(f"{layer}{old}.{kind}")
    state.pop("embeddings.position_ids", None)
    if state:
        raise KeyError(f"no OpenCLIP name for {sorted(state)}")
    return {prefix + k: v for k, v in out.items()}


def save_ldm_checkpoint(pipe: Any, path: str | Path) -> Path:
    """Save an SD 1.x, 2.x or SDXL pipeline (UNet, VAE, text towers) as one LDM-layout file (.safetensors, or
    a pickle checkpoint for any other suffix, as .ckpt files were)."""
    tensors = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        tensors.update(clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        tensors.update(open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    elif pipe.text_encoder.config.hidden_size == 1024:  # SD 2.x: OpenCLIP ViT-H
        tensors.update(open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model."))
    else:
        tensors.update(clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    path = Path(path)
    if path.suffix.lower() != ".safetensors":  # an A1111-era pickle checkpoint: {"state_dict": tensors}
        torch.save({"state_dict": tensors}, path)
        return path
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path
