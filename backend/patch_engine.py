"""The embedded default engine: training-free patch diffusion (the ELS machine) on reference images."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from backend import els
from backend import els_pyramid as pyramid
from backend.engine import single_image
from backend.events import Done, Event, StepEvent
from backend.materials import (
    Source,
    painted,
    recoloured,
    room_for_texture,
    shifted_sketch,
    source_priors,
    sources,
)
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
from backend.sketch import StructureGuide, context_vote, feather, guide_steps, soft_mask
from backend.sketch_plan import (
    SKETCH,
    main_colours,
    palettes,
    pinned_references,
    plan_materials,
    structure_size,
)

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


def reference_shares(shares: torch.Tensor, names: list[str]) -> dict[str, float]:
    """Each reference's share of the image (its softmax weight averaged over the pixels) by name."""
    shares = shares.float().cpu().tolist()
    return {name: round(share, 4) for name, share in zip(names, shares, strict=True)}


def per_name(weights: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Weights per image drawn from (first axis) summed per reference name (`owner`: each image's name)."""
    out = weights.new_zeros((n, *weights.shape[1:]))
    return out.index_add_(0, owner, weights)


class SketchSources(NamedTuple):
    """The images a sketch run draws from, their per-pixel log-priors and the reference each stands for."""

    images: torch.Tensor  # S×C×H×W
    prior: torch.Tensor  # S×H×W
    owner: list[int]  # per image: index into the run's reference names (the sketch last)
    key_mask: torch.Tensor | None  # S×H×W: where each image offers keys (inpainting's context)
    where: torch.Tensor  # H×W: where references paint, not the sketch kept as it is
    layout: torch.Tensor  # 3×H×W: the sketch with its painted colours where their materials fit (ILVR's y)


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

    def _sketch_sources(
        self,
        refs: ReferenceSet,
        request: Request,
        chosen: list[int],
        shares: list[float],
        weights: torch.Tensor,
        fitted: torch.Tensor,
    ) -> SketchSources:
        """What an img2img or inpainting run draws from: the references recoloured to the sketch colours
        they paint, and the init image itself (the paper, or inpainting's context), with per-pixel priors.
        """
        assert request.init_image is not None
        pixels = request.init_image.pixels
        h, w = pixels.shape[:2]
        region = None if request.mask is None else request.mask.pixels > 127
        plan = plan_materials(
            main_colours(pixels, region),
            [refs.references[i].name for i in chosen],
            shares,
            [palettes(refs)[i] for i in chosen],
            None,
            request.colour_pins,
        )
        drawn = sources(plan)
        if region is not None and not any(src.name == SKETCH for src in drawn):
            drawn.append(Source(SKETCH, len(chosen), None))  # the surroundings always vote near the edge
        init = to_tensor(pixels).to(self.device)
        # Each painted colour is drawn at the colour nearest it where its best material's texture fits.
        colours = {
            c: room_for_texture(fitted[int(plan.priors[c, :-1].argmax())], plan.colours[c].rgb)
            for c in sorted({src.colour for src in drawn if src.colour is not None})
        }
        images = []
        for src in drawn:
            if src.index == len(chosen):
                images.append(init)
            elif src.colour is None:
                images.append(fitted[src.index])
            else:
                images.append(recoloured(fitted[src.index], colours[src.colour]))
        slider = torch.cat([weights, weights.new_zeros(1)])  # the sketch has no slider
        prior = source_priors(pixels, plan, drawn, self.device)
        prior += slider[[src.index for src in drawn]][:, None, None]
        key_mask = None
        if region is not None and request.mask is not None:
            # Inpainting: the surroundings offer only the pixels kept as they are, and vote near the edge.
            context = [k for k, src in enumerate(drawn) if src.name == SKETCH]
            mask = torch.from_numpy(request.mask.pixels.astype(np.float32) / 255.0).to(self.device)
            width = feather(min(h, w))
            key_mask = torch.ones(len(drawn), h, w, dtype=torch.bool, device=self.device)
            key_mask[context] = soft_mask(mask, width) == 0
            prior[context] = torch.logaddexp(prior[context], context_vote(mask, width))
        where = torch.from_numpy(painted(pixels, plan)).float().to(self.device)
        layout = shifted_sketch(pixels, plan, colours).to(self.device)
        owner = [src.index for src in drawn]
        return SketchSources(torch.stack(images), prior, owner, key_mask, where, layout)

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """Denoise step by step, yielding each step's clean-image estimate, then Done unless cancelled."""
        single_image(request).validate()
        start = time.perf_counter()
        w, h = request.width, request.height

        # 1. References: load (cached), pick by prompt (each word's weight shared among the references it
        # names; a colour pin may add one), fit to the request size.
        refs = self.references(request.model)
        selection = match_prompt(refs, request.prompt, request.negative_prompt)
        chosen, shares = list(selection.indices), list(selection.shares)
        if request.init_image is not None:
            for index in pinned_references(refs, request.colour_pins):
                if index not in chosen:
                    chosen.append(index)
                    shares.append(0.0)  # only for the colours pinned to it
        names = [refs.references[i].name for i in chosen]
        fitted = self._fit(refs, w, h)[chosen]
        weights = torch.tensor(log_priors(refs, chosen, request.reference_weights), device=self.device)
        # Tiling wraps the references' patches only when the references tile themselves.
        borders = els.borders_for(request.tiling, all(els.tiles(image) for image in fitted))

        # 2. Starting noise and the times to visit.
        eps = initial_noise(request.seed, (3, h, w), request.variation_seed, request.variation_strength)
        eps = eps.to(self.device)
        init = mask = key_mask = where = layout = None
        t_start, n_steps = 1.0, request.steps
        if request.mask is not None:  # feathered: the repainted area blends into the kept pixels
            mask = torch.from_numpy(request.mask.pixels.astype(np.float32) / 255.0).to(self.device)
            mask = soft_mask(mask, feather(min(w, h)))
        # Which name each image drawn from stands for (a reference may be drawn in several colours).
        owner = list(range(len(chosen)))
        if request.init_image is None:
            images = fitted
            prior = torch.tensor([math.log(s) for s in shares], device=self.device) + weights
        else:
            # 3. A sketch: its colours choose each pixel's materials, each drawn in its stroke's colour;
            # the init image itself is drawn from too (the paper, or inpainting's context).
            init = to_tensor(request.init_image.pixels).to(self.device)
            t_start = request.strength
            n_steps = els.img2img_steps(request.steps, request.strength)
            sketch = self._sketch_sources(refs, request, chosen, shares, weights, fitted)
            images, prior, owner, key_mask, where, layout = sketch
            names.append(SKETCH)
        by_name = torch.tensor(owner, device=self.device)
        times = els.timesteps(n_steps, t_start)
        keys = torch.Generator().manual_seed(request.seed)
        guide_size = structure_size(request.structure, min(w, h))
        guide_last = guide_steps(request.structure_steps, n_steps)

        # 4. Denoise, coarse to fine (els_pyramid): the high-noise steps run on smaller images, each level
        # with its own copies of the inputs. Each step estimates x0, moves by DDIM to the next time, keeps
        # the init's low frequencies (structure) and re-imposes the known pixels when inpainting; each
        # preview is the estimate at full size.
        estimate = None
        level: pyramid.Level | None = None
        whole = els.patch_size(0.0, request.locality, 32) is None
        step = 0
        for stage in pyramid.plan(times, w, h, whole=whole):
            f = stage.factor
            entered = pyramid.Level.of(stage, images, eps, prior, init, mask, key_mask)
            if level is None or estimate is None:
                x = entered.start(t_start)
            else:
                x = entered.enter(level, x, estimate.x0)
            level = entered
            guide = None  # the init image's layout, kept at every step (ILVR)
            if layout is not None and guide_last > 0:
                guide = StructureGuide.build(
                    pyramid.shrink(layout, f), level.eps, guide_size / f, request.tiling, guide_last,
                    None if where is None else pyramid.shrink(where, f),
                )  # fmt: skip
            side = pyramid.patch_side(stage.width, stage.height)
            for t, t_next in stage.steps():
                step += 1
                if cancel.is_set():
                    return
                if t <= 0:  # strength 0: nothing to denoise
                    even = torch.full((len(owner),), 1.0 / len(owner))
                    estimate = els.Estimate(x, even[:, None, None].expand(-1, *x.shape[1:]), even)
                else:
                    try:
                        drawn = None if estimate is None else estimate.shares
                        last = t_next <= 0  # only the final estimate needs per-pixel weights (attribution)
                        estimate = self._estimate(
                            x, level.images, t, side, request, borders, level.prior, keys, drawn, last,
                            level.key_mask, cancel,
                        )  # fmt: skip
                    except els.Cancelled:
                        return
                    x = els.ddim_step(x, estimate.x0, t, t_next)
                shown = estimate.x0
                if guide is not None and guide.applies(step):
                    x = guide.impose(x, t_next)
                    shown = guide.show(shown)
                x = level.keep_known(x, t_next)
                shown = pyramid.grow(shown, f)
                if mask is not None and init is not None:
                    shown = mask * shown + (1 - mask) * init
                yield StepEvent(
                    request.request_id, step, n_steps, to_uint8(shown), time.perf_counter() - start
                )

        # 5. Finish: the last step lands on t = 0, so x is the final estimate; known pixels exactly kept.
        if cancel.is_set() or estimate is None:
            return
        image = to_uint8(x)
        if mask is not None and request.init_image is not None:
            m = mask.cpu().numpy()[..., None]
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
                "reference_shares": reference_shares(per_name(estimate.shares, by_name, len(names)), names),
                "prompt_matches": {word: list(named) for word, named in selection.matches},
                "unmatched_words": list(selection.unmatched),
                "skipped_references": list(refs.skipped),
                "model": refs.folder.name,
                "model_hash": refs.digest,
                "borders": borders,
            },
            attribution=attribution_map(
                None if estimate.ref_weights is None else per_name(estimate.ref_weights, by_name, len(names))
            ),
            elapsed_s=time.perf_counter() - start,
        )

    def _estimate(
        self,
        x: torch.Tensor,
        images: torch.Tensor,
        t: float,
        side: int,
        request: Request,
        borders: els.Borders,
        prior: torch.Tensor,
        keys: torch.Generator,
        shares: torch.Tensor | None,
        last: bool,
        key_mask: torch.Tensor | None,
        cancel: threading.Event,
    ) -> els.Estimate:
        """One clean-image estimate at time t, by the mode the locality and the request ask for."""
        a, b = els.alpha_sigma(t)
        k = els.patch_size(t, request.locality, side)
        if k is None:
            return els.whole_image(x, images, a, b, borders == "wrap", prior)
        if request.patch_mode == "ls":
            if key_mask is not None:  # LS compares each pixel with the same position only
                prior = prior.masked_fill(~key_mask, els.EXCLUDED)
            return els.local_score(x, images, a, b, k, request.tiling, prior)
        if request.exact:
            return els.patch_attention(
                x, images, a, b, k, borders, prior,
                low_precision=self.low_precision, key_mask=key_mask, should_stop=cancel.is_set,
            )  # fmt: skip
        return els.fast_patch_attention(
            x, images, a, b, k, borders, prior, keys,
            shares=shares, max_keys=els.key_budget(x[0].numel(), self.max_keys), pixel_weights=last,
            low_precision=self.low_precision, key_mask=key_mask, should_stop=cancel.is_set,
        )  # fmt: skip
