"""What a request adds to the loaded model: its ControlNets and LoRAs, loaded once and kept while used.

The diffusers engine owns one `Adapters`; each run attaches the request's ControlNets (checked against the
model's family) and sets its LoRAs' strengths, then asks for the control images in the form the loop needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from backend.control_images import control_map
from backend.controlnets import (
    LoadedControlNet,
    PreparedControl,
    check_family,
    load_controlnet,
    prepare_control,
)
from backend.device_memory import free_memory
from backend.loras import LoraSet, resolve_lora
from backend.models import LoadedModel, model_hash
from backend.request import Control, Request


class Adapters:
    """The ControlNets the last request used (by name) and the LoRA adapters loaded into the model."""

    def __init__(self, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False) -> None:
        self.device, self.dtype, self.allow_pickle = device, dtype, allow_pickle
        self.controlnets: dict[str, LoadedControlNet] = {}
        self.loras: LoraSet | None = None
        self.lora_files: list[tuple[str, Path, float]] = []  # the last request's (name, file, strength)

    def reset(self) -> None:
        """Forget the LoRA adapters (they lived in a model that is gone); ControlNets are checked on use."""
        self.loras, self.lora_files = None, []

    def attach(
        self,
        r: Request,
        model: LoadedModel,
        model_folders: tuple[str, ...] = (),
        lora_folders: tuple[str, ...] = (),
    ) -> tuple[Any, ...]:
        """Load what `r` needs that is not loaded yet, set its LoRA strengths; its ControlNets in order."""
        nets = self._controlnets_for(r, model, model_folders)
        self._apply_loras(r, model, model_folders, lora_folders)
        return nets

    def _controlnets_for(self, r: Request, model: LoadedModel, folders: tuple[str, ...]) -> tuple[Any, ...]:
        unet_config = model.pipe.unet.config
        names = {c.model for c in r.controls}
        if set(self.controlnets) - names:  # free the ones this request does not use before loading others
            self.controlnets = {k: v for k, v in self.controlnets.items() if k in names}
            free_memory()
        kept: dict[str, LoadedControlNet] = {}
        for c in r.controls:
            loaded = kept.get(c.model) or self.controlnets.get(c.model)
            if loaded is None:
                loaded = load_controlnet(
                    c.model, unet_config, self.device, self.dtype, self.allow_pickle, folders
                )
            else:  # the model may have changed since it was loaded
                config = loaded.net.config
                text_time = getattr(config, "addition_embed_type", None) == "text_time"
                check_family(c.model, int(config.cross_attention_dim), text_time, unet_config)
            kept[c.model] = loaded
        self.controlnets = kept
        return tuple(kept[c.model].net for c in r.controls)

    def _apply_loras(
        self, r: Request, model: LoadedModel, model_folders: tuple[str, ...], lora_folders: tuple[str, ...]
    ) -> None:
        files = [
            (lora.name, resolve_lora(lora.name, model_folders, lora_folders), lora.strength)
            for lora in r.loras
        ]
        if self.loras is None or self.loras.pipe is not model.pipe:
            if not files:
                return
            self.loras = LoraSet(model.pipe, self.allow_pickle)
        self.loras.apply([(path, strength) for _, path, strength in files])
        self.lora_files = files

    def prepare_controls(
        self, pipe: Any, r: Request, nets: tuple[Any, ...], guided: bool, copies: int = 1
    ) -> tuple[PreparedControl, ...]:
        """Each control's image as its ControlNet expects it, `copies` rows for a batch of requests."""
        return tuple(
            self._prepare(pipe, r, c, net, guided, copies) for c, net in zip(r.controls, nets, strict=True)
        )

    def _prepare(
        self, pipe: Any, r: Request, control: Control, net: Any, guided: bool, copies: int
    ) -> PreparedControl:
        from diffusers.image_processor import VaeImageProcessor

        # The processor diffusers' ControlNet pipelines make: resize to the request, no [-1, 1] scaling.
        processor = VaeImageProcessor(
            vae_scale_factor=pipe.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )
        image = control_map(control.kind, control.image, r.width, r.height)
        batch, guess = prepare_control(net, image, processor, r.width, r.height, guided, self.device)
        if copies > 1:  # a batch of requests shares the control image: one copy per row of the UNet's input
            batch = batch.repeat(copies, 1, 1, 1)
        return PreparedControl(net, batch, control.strength, control.start, control.end, guess)

    def modules(self, r: Request) -> list[torch.nn.Module]:
        """The request's ControlNets, for patches such as seamless tiling."""
        return [self.controlnets[c.model].net for c in r.controls if c.model in self.controlnets]

    def extras(self, r: Request) -> dict[str, Any]:
        """The recipe's record of `r`'s ControlNets (name, file, SHA-256) and LoRAs (with AutoV3)."""
        out: dict[str, Any] = {}
        if r.controls:
            out["controls"] = []
            for loaded in (self.controlnets[c.model] for c in r.controls):
                source = Path(loaded.source)
                found = source.exists()
                out["controls"].append(
                    {
                        "name": source.stem if found else loaded.name,
                        "path": loaded.source,
                        "sha256": model_hash(source) if found else "",
                    }
                )
        if self.loras is not None and self.lora_files and r.loras:
            out["loras"] = self.loras.extras(self.lora_files)
        return out
