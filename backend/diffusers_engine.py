"""The diffusers engine: Stable Diffusion 1.x/2.x/SDXL, one denoising step at a time, with live previews.

The loop in `_denoise` is diffusers' own pipeline loop written out (set_timesteps, scale_model_input, UNet,
guidance, scheduler.step) so that it can stop within a step, stream a preview of x0 after every step, and
steer the conditioning per step. With the same components, scheduler, seed and settings it gives the
pipeline's image (tests/test_diffusers_parity.py). When a request differs from the previous one only in a
concept acting from a later step, the run resumes from a snapshot at that step (backend/resume.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

from backend.adapters import Adapters
from backend.batching import batch_groups, batch_key, batch_limit, is_out_of_memory, per_request
from backend.conditioning import PromptSchedule, TextEncoder, schedule_for
from backend.controlnets import PreparedControl, control_residuals
from backend.device_memory import free_memory
from backend.devices import describe, pick_device, pick_dtype
from backend.engine import single_image
from backend.errors import ModelError, RequestError, StudioError
from backend.events import Done, Event, StepEvent
from backend.latent_controls import ConceptShift, Embeds, Tiling, conditioning_at, first_step
from backend.models import LoadedModel, ModelInfo, discover, family_of, load_model, model_hash
from backend.previews import Previewer, load_taesd
from backend.request import Request
from backend.resume import RunCache, Snapshot, prefix_key, resume_point
from backend.sampling import (
    classifier_free_guidance,
    clean_estimate,
    current_sigma,
    img2img_timesteps,
    initial_noise,
    latent_mask,
    reimpose_known,
    sdxl_time_ids,
    step_kwargs,
    to_uint8,
    uses_guidance,
)
from backend.schedulers import make_scheduler


@dataclass(frozen=True)
class Prepared:
    """A run's inputs that stay fixed over its steps (kept so that a later request can resume)."""

    timesteps: torch.Tensor
    text: PromptSchedule  # (cond, uncond) per stretch of steps: prompt editing switches between them
    noise: torch.Tensor
    latents: torch.Tensor  # the starting latents
    image_latents: torch.Tensor | None
    mask: torch.Tensor | None
    inpaint_extra: torch.Tensor | None  # 9-channel UNets: mask and masked-image latents
    added: dict[str, Any] | None  # SDXL's size conditioning
    timestep_cond: torch.Tensor | None  # guidance-distilled UNets
    controls: tuple[PreparedControl, ...] = ()  # ControlNets with their images


class DiffusersEngine:
    """Runs requests on a Stable Diffusion pipeline kept loaded between requests (one thread owns it)."""

    def __init__(
        self,
        device: str | None = None,
        dtype: str | None = None,
        taesd: str | None = None,
        model_folders: tuple[str, ...] = (),
        allow_pickle: bool = False,
        max_batch: int | None = None,
        lora_folders: tuple[str, ...] = (),
        **_: Any,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.taesd_folder = taesd
        self.model_folders = tuple(model_folders)
        self.lora_folders = tuple(lora_folders)
        self.allow_pickle = allow_pickle
        self.max_batch = max_batch  # images per UNet pass in a grid; None: as many as memory seems to allow
        self.model: LoadedModel | None = None
        self._taesd: dict[str, torch.nn.Module] = {}
        self._cache: RunCache | None = None
        self.adapters = Adapters(self.device, self.dtype, allow_pickle)  # ControlNets and LoRAs

    # --- models ------------------------------------------------------------------------------------------

    def use_pipeline(self, pipe: Any, name: str, source: str = "") -> LoadedModel:
        """Run requests naming `name` on this already built pipeline (tests, benchmarks, embedding apps)."""
        self._unload()
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.model = LoadedModel(pipe=pipe, name=name, source=source, family=family_of(pipe))
        return self.model

    def load(self, ref: str) -> LoadedModel:
        """The model `ref`, loading it (and dropping the previous one) unless it is the one loaded."""
        if self.model is not None and self.model.name == ref:
            return self.model
        self._unload()
        self.model = load_model(ref, self.device, self.dtype, self.allow_pickle, self.model_folders)
        return self.model

    def models(self) -> list[ModelInfo]:
        """The models this engine can find: person-added folders (A1111/ComfyUI layouts) and the HF cache."""
        return discover(self.model_folders)

    def _unload(self) -> None:
        self._cache = None
        self.adapters.reset()
        if self.model is not None:
            self.model = None
            free_memory()

    # --- running -----------------------------------------------------------------------------------------

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """Yield a StepEvent per step and, unless cancelled, a Done with the image and recipe extras."""
        return self.generate_batch([request], cancel)

    def generate_batch(self, requests: list[Request], cancel: threading.Event) -> Iterator[Event]:
        """Run several requests, those that can share the UNet's batch together (backend/batching.py).

        Each request gets the StepEvents (under its own request id) and the Done its own run would give, with
        the same image within float rounding; groups run one after another, so Dones may come out of order.
        """
        for request in requests:
            single_image(request).validate()
        for group in batch_groups(requests, self._batch_limit(requests[0]) if len(requests) > 1 else 1):
            if cancel.is_set():
                return
            yield from self._run_group(group, cancel)

    def _run_group(self, rs: list[Request], cancel: threading.Event) -> Iterator[Event]:
        started = time.perf_counter()
        try:
            latents = yield from self._denoise(rs, cancel, started)
            if latents is None or cancel.is_set():
                return  # a cancelled run decodes nothing
            images = [self._decode(r, latents[k : k + 1]) for k, r in enumerate(rs)]
            extras = self._extras(rs[0])
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            free_memory()
            if len(rs) == 1:
                raise self._out_of_memory(rs[0]) from None
            half = len(rs) // 2  # too big a batch for the device: run it in two halves
            yield from self._run_group(rs[:half], cancel)
            if not cancel.is_set():
                yield from self._run_group(rs[half:], cancel)
            return
        if cancel.is_set():
            return
        elapsed = time.perf_counter() - started
        for r, image in zip(rs, images, strict=True):
            yield Done(r.request_id, to_uint8(image), r, dict(extras), None, elapsed)

    def render(self, request: Request) -> np.ndarray:
        """The finished image as floats in [0, 1] (H×W×3), before uint8 rounding: what Done.image rounds."""
        return self.render_batch([request])[0]

    def render_batch(self, requests: list[Request]) -> list[np.ndarray]:
        """`render` for requests that share a batch key, run as one batch (tests compare it to `render`)."""
        for request in requests:
            request.validate()
        if len({batch_key(r) for r in requests}) != 1:
            raise RequestError("these requests cannot run as one batch (see backend/batching.py)")
        run = self._denoise(requests, threading.Event(), time.perf_counter(), previews=False)
        while True:
            try:
                next(run)
            except StopIteration as stop:
                return [self._decode(r, stop.value[k : k + 1]) for k, r in enumerate(requests)]

    def _denoise(
        self, rs: list[Request], cancel: threading.Event, started: float, previews: bool = True
    ) -> Generator[StepEvent, None, torch.Tensor | None]:
        """Denoise a batch of requests that share a batch key (one request: a plain run, which may resume)."""
        r, single = rs[0], len(rs) == 1
        # 1. Model and generators, one per request. Each is drawn from in the pipelines' order: VAE encoding
        #    of an init image, then the starting noise, then ancestral steps.
        model = self.load(r.model)
        pipe = model.pipe
        nets = self.adapters.attach(r, model, self.model_folders, self.lora_folders)
        generators = [torch.Generator("cpu").manual_seed(x.seed) for x in rs]
        guided = uses_guidance(r.guidance, pipe.unet.config)
        tiling = Tiling()
        if r.tiling:
            tiling.apply(self._tiled_modules(model, r))
        try:
            # 2. Inputs: prepared afresh, or carried over with the previous run's snapshot when only a
            #    concept acting from a later step changed (a slider drag need not redo the early steps).
            snapshot = resume_point(self._cache, r) if single else None
            if snapshot is not None and self._cache is not None:
                prepared = self._cache.prepared
                latents, scheduler = snapshot.restore(generators[0])
                start = snapshot.step
                kept = {k: s for k, s in self._cache.snapshots.items() if k <= start}
            else:
                scheduler = make_scheduler(r.scheduler, pipe.scheduler.config)
                prepared = self._prepare(rs, model, scheduler, generators, guided, nets)
                latents, start, kept = prepared.latents, 0, {}
            timesteps = prepared.timesteps
            encoder = TextEncoder(pipe, self.device)
            cache = RunCache(prefix_key(r), r.concepts, prepared, len(timesteps), kept)
            self._cache = cache if single else None  # a batch leaves nothing to resume from

            # 3. Concept directions, each switched on from its first step; snapshots at those steps.
            shifts = [
                ConceptShift(
                    encoder.one(c.positive).minus(encoder.one(c.negative)),
                    per_request([x.concepts[j].weight for x in rs], self.device, pipe.unet.dtype),
                    first_step(c.start, len(timesteps)),
                )
                for j, c in enumerate(r.concepts)
                if any(x.concepts[j].weight != 0.0 for x in rs)
            ]
            snapshot_steps = (
                {first_step(c.start, len(timesteps)) for c in r.concepts} - {0} if single else set()
            )
            extra_step = step_kwargs(scheduler, generators[0] if single else generators)
            guidance = per_request([x.guidance for x in rs], self.device, pipe.unet.dtype, dims=3)
            previewers = [self._previewer(model, x) for x in rs] if previews else []
            alphas = getattr(scheduler, "alphas_cumprod", None)
            shown = any(pv is not None for pv in previewers)
            alphas = alphas.to(self.device) if shown and alphas is not None else None
            p = prepared

            # 4. Denoising loop.
            for i in range(start, len(timesteps)):
                t = timesteps[i]
                if cancel.is_set():
                    return None
                if i in snapshot_steps and i not in cache.snapshots:
                    cache.snapshots[i] = Snapshot.take(i, latents, scheduler, generators[0])
                base, uncond = p.text.at(i)
                c = conditioning_at(base, shifts, i)
                text = torch.cat([uncond.tokens, c.tokens]) if guided else c.tokens
                added = _with_pooled(p.added, uncond, c, guided)
                model_input = torch.cat([latents] * 2) if guided else latents
                model_input = scheduler.scale_model_input(model_input, t)
                residuals = control_residuals(
                    p.controls, model_input, t, text, added, i, len(timesteps), guided
                )
                if p.inpaint_extra is not None:
                    model_input = torch.cat([model_input, p.inpaint_extra], dim=1)
                sigma = current_sigma(scheduler)
                noise_pred = _predict_noise(
                    pipe.unet, model_input, t, text, added, guided, guidance, p.timestep_cond, residuals
                )
                sample = latents
                out = scheduler.step(noise_pred, t, latents, **extra_step, return_dict=True)
                latents = out.prev_sample
                if p.mask is not None and p.inpaint_extra is None:
                    next_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
                    latents = reimpose_known(latents, p.image_latents, p.noise, p.mask, scheduler, next_t)
                x0 = clean_estimate(out, scheduler, sample, noise_pred, t, sigma, alphas) if shown else None
                for k, x in enumerate(rs):
                    frame = None
                    previewer = previewers[k] if previewers else None
                    if previewer is not None and x0 is not None:
                        previewer.push(x0[k : k + 1])
                        frame = previewer.finish() if i + 1 == len(timesteps) else previewer.latest()
                    elapsed = time.perf_counter() - started
                    yield StepEvent(x.request_id, i + 1, len(timesteps), frame, elapsed)
            return None if cancel.is_set() else latents
        finally:
            tiling.remove()  # patches live for one request only

    def _prepare(
        self,
        rs: list[Request],
        model: LoadedModel,
        scheduler: Any,
        generators: list[torch.Generator],
        guided: bool,
        nets: tuple[Any, ...] = (),
    ) -> Prepared:
        """The inputs of a run (of a batch: each request's stacked) that stay fixed over its steps."""
        pipe, device, r = model.pipe, self.device, rs[0]
        # a. Timesteps: all of them, or the tail an init image enters at.
        scheduler.set_timesteps(r.steps, device=device)
        if r.init_image is not None:
            timesteps = img2img_timesteps(scheduler, r.steps, r.strength)
            if len(timesteps) == 0:
                raise RequestError(
                    f"strength {r.strength} with {r.steps} steps leaves no step to run; raise either"
                )
        else:
            timesteps = scheduler.timesteps
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(0)

        # b. Text conditioning: prompt (blended towards prompt B) and negative, per request, for each
        #    stretch of steps that prompt editing gives.
        text = schedule_for(TextEncoder(pipe, device), rs, len(timesteps), guided)

        # c. Latents: noise, or the init image noised to the first timestep; inpainting masks. Each
        #    request draws from its own generator in the single run's order.
        dtype = text.cond[0].tokens.dtype
        shape = (1, 4, r.height // pipe.vae_scale_factor, r.width // pipe.vae_scale_factor)
        posterior = self._encode_image(pipe, r.init_image) if r.init_image is not None else None
        mask = latent_mask(r.mask.pixels, shape[-2:], device, dtype) if r.mask is not None else None
        masked = None
        if mask is not None and posterior is not None and model.inpaint_unet:
            masked = self._encode_image(pipe, r.init_image, r.mask)
        image_parts, noise_parts, extra_parts = [], [], []
        for x, generator in zip(rs, generators, strict=True):
            if posterior is not None:
                image_parts.append(self._sample_latents(pipe, posterior, generator))
            noise_parts.append(
                initial_noise(shape, generator, device, dtype, x.variation_seed, x.variation_strength)
            )
            if masked is not None and mask is not None:
                sampled = self._sample_latents(pipe, masked, generator).to(mask.dtype)
                extra_parts.append(torch.cat([mask, sampled], dim=1))
        image_latents = torch.cat(image_parts) if image_parts else None
        noise = torch.cat(noise_parts)
        if image_latents is None or (r.strength >= 1.0 and r.mask is not None):
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(image_latents, noise, timesteps[:1])
        if image_latents is None:
            mask = None
        inpaint_extra = None
        if extra_parts:  # 9-channel UNets: the mask and the latents of the image with the hole blanked
            extra = torch.cat(extra_parts)
            inpaint_extra = torch.cat([extra] * 2) if guided else extra

        # d. Per-step inputs that do not change: SDXL's size conditioning, LCM's guidance embedding.
        added = self._added_conditioning(r, pipe.unet, len(rs) * (2 if guided else 1), dtype)
        timestep_cond = None
        if pipe.unet.config.time_cond_proj_dim is not None:
            w = torch.tensor([x.guidance - 1 for x in rs])
            timestep_cond = pipe.get_guidance_scale_embedding(w, pipe.unet.config.time_cond_proj_dim)
            timestep_cond = timestep_cond.to(device=device, dtype=dtype)
        # e. Control images, made into what each ControlNet expects.
        controls = self.adapters.prepare_controls(pipe, r, nets, guided, len(rs))
        return Prepared(
            timesteps,
            text,
            noise,
            latents,
            image_latents,
            mask,
            inpaint_extra,
            added,
            timestep_cond,
            controls,
        )

    # --- steps of the loop -------------------------------------------------------------------------------

    def _encode_image(self, pipe: Any, picture: Any, hole: Any = None) -> Any:
        """The VAE posterior of an init image (with the mask's hole blanked to mid-grey when given)."""
        image = pipe.image_processor.preprocess(picture.to_pil())
        if hole is not None:
            image = image * torch.from_numpy(hole.pixels < 128)[None, None]  # 0 in [-1, 1] is mid-grey
        with torch.no_grad():
            return pipe.vae.encode(image.to(self.device, pipe.vae.dtype))

    def _sample_latents(self, pipe: Any, posterior: Any, generator: torch.Generator) -> torch.Tensor:
        """Scaled latents sampled from a posterior with the run's generator, as the pipelines do."""
        latents = retrieve_latents(posterior, generator=generator)
        return (pipe.vae.config.scaling_factor * latents).to(pipe.unet.dtype)

    def _added_conditioning(
        self, r: Request, unet: Any, rows: int, dtype: torch.dtype
    ) -> dict[str, Any] | None:
        """SDXL's micro-conditioning (original size, crop, target size) for `rows` UNet inputs, or None."""
        if getattr(unet.config, "addition_embed_type", None) != "text_time":
            return None
        time_ids = sdxl_time_ids(r.height, r.width, dtype).to(self.device)
        return {"time_ids": time_ids.repeat(rows, 1)}

    def _decode(self, r: Request, latents: torch.Tensor) -> np.ndarray:
        """Final latents → float image in [0, 1]; an inpainting init's kept region restored exactly."""
        assert self.model is not None
        tiling = Tiling()
        if r.tiling:
            tiling.apply(self._tiled_modules(self.model, r))
        try:
            image = decode_latents(self.model.pipe, latents)
        finally:
            tiling.remove()
        if r.mask is not None and r.init_image is not None:
            keep = (r.mask.pixels < 128)[..., None]
            image = np.where(keep, r.init_image.pixels.astype(np.float32) / 255.0, image)
        return image

    def _batch_limit(self, r: Request) -> int:
        if self.max_batch is not None:
            return self.max_batch
        return batch_limit(self.device, r.width, r.height, self.dtype)

    def _tiled_modules(self, model: LoadedModel, r: Request) -> list[torch.nn.Module]:
        modules = [model.pipe.unet, model.pipe.vae, *self.adapters.modules(r)]
        taesd = self._taesd.get(model.family)
        return [*modules, taesd] if taesd is not None else modules

    def _previewer(self, model: LoadedModel, r: Request) -> Previewer | None:
        if r.preview == "none":
            return None
        taesd = None
        if r.preview == "taesd" and self.taesd_folder:
            taesd = self._taesd_for(model.family)
        elif r.preview == "auto" and self.taesd_folder:
            try:
                taesd = self._taesd_for(model.family)
            except ModelError:  # "auto" falls back to latent-RGB; asking for "taesd" shows the problem
                self.taesd_folder = None
        elif r.preview == "taesd":
            raise RequestError(
                "TAESD previews need a TAESD folder in the settings; choose latent_rgb or auto"
            )
        return Previewer(model.family, r.height, r.width, self.device, taesd)

    def _taesd_for(self, family: str) -> torch.nn.Module:
        if family not in self._taesd:
            root = Path(self.taesd_folder or "")
            sub = root / ("taesdxl" if family == "sdxl" else "taesd")
            self._taesd[family] = load_taesd(sub if sub.is_dir() else root, self.device, self.dtype)
        return self._taesd[family]

    def _extras(self, r: Request) -> dict[str, Any]:
        model = self.model
        assert model is not None
        return {
            "model": model.name,
            "model_hash": model_hash(model.source) if model.source else "",
            "model_family": model.family,
            **({"licence": model.licence} if model.licence else {}),
            "device": describe(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.adapters.extras(r),
        }

    def _out_of_memory(self, r: Request) -> StudioError:
        free_memory()
        return ModelError(
            f"ran out of memory on {describe(self.device)} at {r.width}×{r.height}; lower the size or steps, "
            "or close other programs"
        )


def decode_latents(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """Final latents → H×W×3 float image in [0, 1], exactly as the pipelines' `output_type="np"` gives it."""
    vae = pipe.vae
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)  # SDXL's VAE overflows in fp16; it stays upcast from then on
    latents = latents.to(vae.dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    with torch.no_grad():
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std_t / vae.config.scaling_factor + mean_t
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="np")[0]


@torch.no_grad()
def _predict_noise(
    unet: Any,
    model_input: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    added: dict[str, Any] | None,
    guided: bool,
    guidance: float | torch.Tensor,
    timestep_cond: torch.Tensor | None,
    residuals: tuple[list[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """One UNet call (both halves of the guidance batch at once, ControlNet residuals added) and CFG."""
    noise_pred = unet(
        model_input,
        t,
        encoder_hidden_states=text,
        timestep_cond=timestep_cond,
        added_cond_kwargs=added,
        down_block_additional_residuals=residuals[0] if residuals else None,
        mid_block_additional_residual=residuals[1] if residuals else None,
        return_dict=False,
    )[0]
    if not guided:
        return noise_pred
    noise_uncond, noise_text = noise_pred.chunk(2)
    return classifier_free_guidance(noise_uncond, noise_text, guidance)


def _with_pooled(
    added: dict[str, Any] | None, uncond: Embeds, cond: Embeds, guided: bool
) -> dict[str, Any] | None:
    """SDXL's added conditioning with this step's pooled text embedding."""
    if added is None:
        return None
    pooled = torch.cat([uncond.pooled, cond.pooled]) if guided else cond.pooled
    return {"text_embeds": pooled, **added}
