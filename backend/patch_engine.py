"""The embedded default engine: training-free patch diffusion (the ELS machine) on reference images."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend import els
from backend.engine import single_image
from backend.events import Done, Event, StepEvent
from backend.references import (
    DEFAULT_FOLDER,
    ReferenceSet,
    fit,
    folder_key,
    load_references,
    log_priors,
    match_prompt,
)
from backend.request import Request

# Per-pixel palette of the attribution map, one colour per reference (cycled past its length).
PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
        (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
        (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
        (0, 0, 128), (128, 128, 128),
    ],
    dtype=np.float32,
)  # fmt: skip
CACHE_SIZE = 4


def initial_noise(
    seed: int,
    shape: tuple[int, int, int],
    variation_seed: int | None = None,
    variation_strength: float = 0.0,
) -> torch.Tensor:
    """The run's starting noise (C×H×W, float32, CPU): seeded, slerped toward a variation seed's noise."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if variation_seed is not None and variation_strength > 0:
        other = torch.randn(shape, generator=torch.Generator().manual_seed(variation_seed))
        noise = els.slerp(noise, other, variation_strength)
    return noise


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 3×H×W float32 in [-1, 1]."""
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """3×H×W in [-1, 1] → H×W×3 uint8."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def attribution_map(ref_weights: torch.Tensor | None) -> np.ndarray | None:
    """H×W×2 float32: for each pixel the reference with the largest weight and that weight."""
    if ref_weights is None:
        return None
    weight, index = ref_weights.float().max(dim=0)
    return torch.stack([index.float(), weight], dim=-1).cpu().numpy().astype(np.float32)


def attribution_to_rgb(attribution: np.ndarray) -> np.ndarray:
    """An attribution map as an H×W×3 uint8 image: a palette colour per reference, brightness = weight."""
    index = attribution[..., 0].astype(np.int64) % len(PALETTE)
    weight = np.clip(attribution[..., 1], 0.0, 1.0)[..., None]
    return np.round(PALETTE[index] * weight).astype(np.uint8)


def reference_shares(shares: torch.Tensor, names: list[str]) -> dict[str, float]:
    """Each reference's share of the image (its softmax weight averaged over the pixels) by name."""
    shares = shares.float().cpu().tolist()
    return {name: round(share, 4) for name, share in zip(names, shares, strict=True)}


class PatchEngine:
    """Runs requests on the ELS machine; keeps recently used reference sets loaded between requests."""

    def __init__(self, device: str = "cpu", max_keys: int = 8192, **_: Any) -> None:
        self.device = torch.device(device)
        # fp16 halves the work on a GPU; bf16 is too coarse for the small-noise logits.
        self.low_precision = self.device.type == "cuda"
        self.max_keys = max_keys
        self._sets: OrderedDict[tuple, ReferenceSet] = OrderedDict()
        self._fitted: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def references(self, model: str) -> ReferenceSet:
        """The reference set for a request's model field ("" = the shipped defaults), cached by mtimes."""
        folder = Path(model).expanduser() if model else DEFAULT_FOLDER
        key = folder_key(folder)
        if key not in self._sets:
            self._sets[key] = load_references(folder)
            while len(self._sets) > CACHE_SIZE:
                self._sets.popitem(last=False)
        self._sets.move_to_end(key)
        return self._sets[key]

    def _fit(self, refs: ReferenceSet, width: int, height: int) -> torch.Tensor:
        key = (refs.digest, width, height)
        if key not in self._fitted:
            stack = [to_tensor(fit(r.pixels, width, height)) for r in refs.references]
            self._fitted[key] = torch.stack(stack).to(self.device)
            while len(self._fitted) > CACHE_SIZE:
                self._fitted.popitem(last=False)
        return self._fitted[key]

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """Denoise step by step, yielding each step's clean-image estimate, then Done unless cancelled."""
        single_image(request).validate()
        start = time.perf_counter()
        w, h = request.width, request.height

        # 1. References: load (cached), pick by prompt (each word's weight shared among the references it
        # names), fit to the request size; log-priors from those shares and the sliders.
        refs = self.references(request.model)
        selection = match_prompt(refs, request.prompt, request.negative_prompt)
        chosen = list(selection.indices)
        names = [refs.references[i].name for i in chosen]
        images = self._fit(refs, w, h)[chosen]
        weights = log_priors(refs, chosen, request.reference_weights)
        prior = torch.tensor(
            [math.log(s) + wt for s, wt in zip(selection.shares, weights, strict=True)], device=self.device
        )
        # Tiling wraps the references' patches only when the references tile themselves.
        borders = els.borders_for(request.tiling, all(els.tiles(image) for image in images))

        # 2. Starting noise and the times to visit.
        eps = initial_noise(request.seed, (3, h, w), request.variation_seed, request.variation_strength)
        eps = eps.to(self.device)
        init = mask = None
        t_start, n_steps = 1.0, request.steps
        if request.init_image is not None:
            init = to_tensor(request.init_image.pixels).to(self.device)
            t_start = request.strength
            n_steps = els.img2img_steps(request.steps, request.strength)
        if request.mask is not None:
            mask = torch.from_numpy(request.mask.pixels.astype(np.float32) / 255.0).to(self.device)
        times = els.timesteps(n_steps, t_start)
        x = els.noise_to(init, eps, t_start) if init is not None else eps
        keys = torch.Generator().manual_seed(request.seed)

        # 3. Denoise: estimate x0, DDIM to the next time, re-impose the known pixels when inpainting.
        estimate = None
        for step, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True), start=1):
            if cancel.is_set():
                return
            if t <= 0:  # strength 0: nothing to denoise
                even = torch.full((len(chosen),), 1.0 / len(chosen))
                estimate = els.Estimate(x, even[:, None, None].expand(-1, h, w), even)
            else:
                try:
                    shares = None if estimate is None else estimate.shares
                    last = t_next <= 0  # only the final estimate needs per-pixel weights (attribution)
                    estimate = self._estimate(
                        x, images, t, request, borders, prior, keys, shares, last, cancel
                    )
                except els.Cancelled:
                    return
                x = els.ddim_step(x, estimate.x0, t, t_next)
            shown = estimate.x0
            if mask is not None and init is not None:
                x = mask * x + (1 - mask) * els.noise_to(init, eps, t_next)
                shown = mask * shown + (1 - mask) * init
            yield StepEvent(request.request_id, step, n_steps, to_uint8(shown), time.perf_counter() - start)

        # 4. Finish: the last step lands on t = 0, so x is the final estimate; known pixels exactly kept.
        if cancel.is_set() or estimate is None:
            return
        image = to_uint8(x)
        if request.mask is not None and request.init_image is not None:
            m = request.mask.pixels.astype(np.float32)[..., None] / 255.0
            known = request.init_image.pixels
            blended = np.round(m * image + (1 - m) * known).astype(np.uint8)
            image = np.where(m > 0, blended, known)
        yield Done(
            request.request_id,
            image,
            request,
            extras={
                "engine": "patch",
                "references": names,
                "reference_shares": reference_shares(estimate.shares, names),
                "prompt_matches": {word: list(named) for word, named in selection.matches},
                "unmatched_words": list(selection.unmatched),
                "skipped_references": list(refs.skipped),
                "model": refs.folder.name,
                "model_hash": refs.digest,
                "borders": borders,
            },
            attribution=attribution_map(estimate.ref_weights),
            elapsed_s=time.perf_counter() - start,
        )

    def _estimate(
        self,
        x: torch.Tensor,
        images: torch.Tensor,
        t: float,
        request: Request,
        borders: els.Borders,
        prior: torch.Tensor,
        keys: torch.Generator,
        shares: torch.Tensor | None,
        last: bool,
        cancel: threading.Event,
    ) -> els.Estimate:
        """One clean-image estimate at time t, by the mode the locality and the request ask for."""
        a, b = els.alpha_sigma(t)
        k = els.patch_size(t, request.locality, min(request.width, request.height))
        if k is None:
            return els.whole_image(x, images, a, b, borders == "wrap", prior)
        if request.patch_mode == "ls":
            return els.local_score(x, images, a, b, k, request.tiling, prior)
        if request.exact:
            return els.patch_attention(
                x, images, a, b, k, borders, prior,
                low_precision=self.low_precision, should_stop=cancel.is_set,
            )  # fmt: skip
        return els.fast_patch_attention(
            x, images, a, b, k, borders, prior, keys,
            shares=shares, max_keys=self.max_keys, pixel_weights=last, low_precision=self.low_precision,
            should_stop=cancel.is_set,
        )  # fmt: skip
