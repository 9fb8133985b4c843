"""The math of one denoising run as small pure functions, the way k-diffusion writes its samplers.

The engine's loop (backend/diffusers_engine.py) calls these in order; each one matches what diffusers'
own pipelines do at the same point, so that the loop gives the pipelines' images bit for bit.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from backend.latent_controls import slerp


def classifier_free_guidance(
    noise_uncond: torch.Tensor, noise_text: torch.Tensor, scale: float
) -> torch.Tensor:
    """ε = ε_uncond + s·(ε_text − ε_uncond): push the prediction away from the unconditional one."""
    return noise_uncond + scale * (noise_text - noise_uncond)


def uses_guidance(guidance: float, unet_config: Any) -> bool:
    """CFG runs when the scale is above 1, except for guidance-distilled UNets (LCM) that take it as input."""
    return guidance > 1.0 and getattr(unet_config, "time_cond_proj_dim", None) is None


def step_kwargs(scheduler: Any, generator: torch.Generator, eta: float = 0.0) -> dict[str, Any]:
    """The extra arguments this scheduler's `step` accepts (ancestral samplers draw from the generator)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def img2img_timesteps(scheduler: Any, steps: int, strength: float) -> torch.Tensor:
    """The tail of the schedule an init image enters at: `strength` of the steps, starting mid-way.

    Strength 1 runs every step from pure noise; 0.3 skips the first 70 % and starts from a lightly noised
    init. Tells the scheduler where it begins so that its step index matches.
    """
    init_steps = min(int(steps * strength), steps)
    t_start = max(steps - init_steps, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps


def initial_noise(
    shape: tuple[int, ...],
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
    variation_seed: int | None = None,
    variation_strength: float = 0.0,
) -> torch.Tensor:
    """The run's starting noise: the seed's, slerped towards the variation seed's by `variation_strength`."""
    noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    if variation_seed is not None and variation_strength > 0.0:
        other = torch.Generator("cpu").manual_seed(variation_seed)
        noise = slerp(
            variation_strength, noise, randn_tensor(shape, generator=other, device=device, dtype=dtype)
        )
    return noise


def current_sigma(scheduler: Any) -> float | None:
    """σ of the step about to run for k-diffusion-style schedulers (sample = x0 + σ·ε), else None.

    diffusers keeps these σ on the CPU, so reading one never waits for the GPU.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)
    if (
        sigmas is None
        or index is None
        or float(scheduler.init_noise_sigma) <= 1.0
        or sigmas.device.type != "cpu"
    ):
        return None
    return float(sigmas[index])


def estimate_x0(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    prediction_type: str,
    alpha_bar: torch.Tensor | None = None,
    sigma: float | None = None,
) -> torch.Tensor:
    """The clean latents the model's prediction implies at this step (for previews).

    Variance-preserving samples: x_t = √ᾱ·x0 + √(1−ᾱ)·ε. k-diffusion samples: x = x0 + σ·ε.
    """
    if prediction_type == "sample":
        return model_output
    if sigma is not None:
        if prediction_type == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        return sample - sigma * model_output
    if alpha_bar is None:
        raise ValueError("estimate_x0 needs ᾱ or σ")
    alpha_bar = alpha_bar.to(sample.device, sample.dtype)
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * model_output
    return (sample - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()


def clean_estimate(
    step_output: Any,
    scheduler: Any,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    t: torch.Tensor,
    sigma: float | None,
    alphas_cumprod: torch.Tensor | None,
) -> torch.Tensor:
    """x0 from the scheduler's step output when it gives one, else computed from the model output.

    `alphas_cumprod` lives on t's device, so that looking up ᾱ_t needs no copy back to the host.
    """
    for name in ("pred_original_sample", "denoised"):
        value = getattr(step_output, name, None)
        if value is not None:
            return value
    prediction = scheduler.config.prediction_type
    if sigma is not None or alphas_cumprod is None:
        return estimate_x0(sample, model_output, prediction, sigma=sigma if sigma is not None else 0.0)
    return estimate_x0(sample, model_output, prediction, alpha_bar=alphas_cumprod[t.long()])


def latent_mask(
    mask: np.ndarray, latent_hw: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A uint8 mask (255 = repaint) binarised and shrunk to latent size: 1×1×h×w of 0/1."""
    m = torch.from_numpy((mask >= 128).astype(np.float32))[None, None]
    return F.interpolate(m, size=latent_hw).to(device, dtype)  # nearest, as diffusers' inpaint pipelines


def reimpose_known(
    latents: torch.Tensor,
    image_latents: torch.Tensor,
    noise: torch.Tensor,
    mask: torch.Tensor,
    scheduler: Any,
    next_t: torch.Tensor | None,
) -> torch.Tensor:
    """Inpainting with an ordinary UNet: outside the mask, replace the latents by the init image noised to the
    next step's level (clean after the last step), so only the masked region is generated."""
    known = image_latents if next_t is None else scheduler.add_noise(image_latents, noise, next_t.reshape(1))
    return (1 - mask) * known + mask * latents


def sdxl_time_ids(height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's size conditioning: original size, crop top-left, target size (no crop, no resize)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] → uint8, rounding as diffusers' `numpy_to_pil` does."""
    return (image * 255).round().astype(np.uint8)
