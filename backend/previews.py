"""Preview frames from the clean-image estimate x0: linear latent→RGB factors or TAESD, never the full VAE.

On a CUDA device the frame is copied to pinned host memory asynchronously and handed over once its copy has
finished, so that a preview never makes the denoising loop wait for the GPU.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backend.errors import ModelError

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@cache
def latent_rgb_factors(family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(4×3 factors, 3 bias) mapping scaled latents to RGB in [-1, 1]; SD2 shares SD1's VAE."""
    table = json.loads((ASSETS / "latent_rgb.json").read_text(encoding="utf-8"))
    entry = table["sdxl" if family == "sdxl" else "sd1"]
    return torch.tensor(entry["factors"], dtype=torch.float32), torch.tensor(
        entry["bias"], dtype=torch.float32
    )


def latent_to_rgb(x0: torch.Tensor, family: str) -> torch.Tensor:
    """Scaled latents (1×4×h×w) → RGB (1×3×h×w) in [-1, 1] by the family's linear factors."""
    factors, bias = latent_rgb_factors(family)
    factors = factors.to(x0.device, torch.float32)
    rgb = torch.einsum("bchw,cr->brhw", x0.float(), factors) + bias.to(x0.device).view(1, 3, 1, 1)
    return rgb


def to_frame(rgb: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """RGB in [-1, 1] (1×3×h×w) → an H×W×3 uint8 frame at the image's size, still on the device."""
    if rgb.shape[-2:] != (height, width):
        rgb = F.interpolate(rgb, size=(height, width), mode="bilinear", align_corners=False)
    frame = ((rgb[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frame.permute(1, 2, 0).contiguous()


def load_taesd(folder: str | Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """TAESD (diffusers `AutoencoderTiny`) from a local folder; ModelError when it is not one."""
    from diffusers import AutoencoderTiny

    try:
        return AutoencoderTiny.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True).to(
            device
        )
    except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError for bad folders
        raise ModelError(f"{folder}: not a TAESD (AutoencoderTiny) folder ({exc})") from None


class Previewer:
    """Turns x0 into preview frames for one run; `latest()` gives the newest frame whose copy is done."""

    def __init__(
        self, family: str, height: int, width: int, device: torch.device, taesd: torch.nn.Module | None
    ):
        self.family = family
        self.size = (height, width)
        self.taesd = taesd
        self.cuda = device.type == "cuda"
        self._ready: np.ndarray | None = None
        self._ready_seq = -1
        self._seq = 0
        # Two pinned buffers: one can be in flight while the other is read.
        self._slots: list[tuple[torch.Tensor, torch.cuda.Event]] = []
        self._pending: list[tuple[int, int]] = []  # (slot index, sequence number)

    @torch.no_grad()
    def push(self, x0: torch.Tensor) -> None:
        """Start making the frame for this clean-image estimate."""
        if self.taesd is not None:
            rgb = self.taesd.decode(x0.to(self.taesd.dtype)).sample.float()
        else:
            rgb = latent_to_rgb(x0, self.family)
        frame = to_frame(rgb, *self.size)
        self._seq += 1
        if not self.cuda:
            self._ready, self._ready_seq = frame.cpu().numpy(), self._seq
            return
        self._harvest()
        if not self._slots:
            self._slots = [
                (torch.empty(frame.shape, dtype=torch.uint8, pin_memory=True), torch.cuda.Event())
                for _ in range(2)
            ]
        index = self._seq % 2
        self._pending = [p for p in self._pending if p[0] != index]  # a newer frame replaces that slot's
        buffer, done = self._slots[index]
        buffer.copy_(frame, non_blocking=True)
        done.record()
        self._pending.append((index, self._seq))

    def latest(self) -> np.ndarray | None:
        """The newest finished frame (a copy the caller owns), without waiting for the GPU."""
        if self.cuda:
            self._harvest()
        return self._ready

    def finish(self) -> np.ndarray | None:
        """Wait for the frame in flight (at the end of a run) and return the newest."""
        for index, _ in self._pending:
            self._slots[index][1].synchronize()
        return self.latest()

    def _harvest(self) -> None:
        still = []
        for index, seq in self._pending:
            buffer, done = self._slots[index]
            if done.query():
                if seq > self._ready_seq:
                    self._ready, self._ready_seq = buffer.numpy().copy(), seq
            else:
                still.append((index, seq))
        self._pending = still
