"""Text conditioning: prompts to embeddings, with A1111's weights `(word:1.2)` and prompt editing per step.

Plain prompts go through the pipeline's own `encode_prompt`, so runs without weights give the pipelines'
images exactly. A prompt with weights is read as A1111 reads it (backend/prompt_syntax.py) and embedded by
compel's `EmbeddingsProvider` (the maintained library InvokeAI uses), which scales each token's embedding
away from the empty prompt's, one provider per text encoder as SDXL needs.
A prompt with `[from:to:when]` becomes a schedule: one conditioning per stretch of steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from backend.latent_controls import Embeds
from backend.prompt_syntax import is_weighted, prompt_schedule, weighted_fragments
from backend.request import Request


class TextEncoder:
    """Prompts → `Embeds` for one pipeline, each text encoded once per run."""

    def __init__(self, pipe: Any, device: torch.device) -> None:
        self.pipe, self.device = pipe, device
        self._providers: list[Any] | None = None
        self._memo: dict[tuple[str, str, bool], tuple[Embeds, Embeds]] = {}

    @property
    def sdxl(self) -> bool:
        """Whether the pipeline has SDXL's two text encoders."""
        return getattr(self.pipe, "text_encoder_2", None) is not None

    def pair(self, prompt: str, negative: str, guided: bool) -> tuple[Embeds, Embeds]:
        """(prompt, negative) conditioning; without guidance the second is the first."""
        key = (prompt, negative, guided)
        if key not in self._memo:
            self._memo[key] = self._pair(prompt, negative, guided)
        return self._memo[key]

    def one(self, text: str) -> Embeds:
        """One text's conditioning (prompt B, concept phrases)."""
        return self.pair(text, "", False)[0]

    def _pair(self, prompt: str, negative: str, guided: bool) -> tuple[Embeds, Embeds]:
        runs, negative_runs = weighted_fragments(prompt), weighted_fragments(negative)
        if is_weighted(runs) or (guided and is_weighted(negative_runs)):
            cond = self._weighted(runs)
            if not guided:
                return cond, cond
            if self.sdxl and not negative and self.pipe.config.force_zeros_for_empty_prompt:
                return cond, Embeds(torch.zeros_like(cond.tokens), torch.zeros_like(cond.pooled))
            return cond, self._weighted(negative_runs)
        # No weights: the pipeline's own encoder, on the text with its escapes (\( \)) resolved.
        plain, plain_negative = "".join(t for t, _ in runs), "".join(t for t, _ in negative_runs)
        return self._pipeline(plain, plain_negative if negative else "", guided)

    def _pipeline(self, prompt: str, negative: str, guided: bool) -> tuple[Embeds, Embeds]:
        with torch.no_grad():
            if self.sdxl:
                # An empty negative is None so that SDXL uses its zero embedding, as the pipeline does.
                pe, ne, pooled, npooled = self.pipe.encode_prompt(
                    prompt=prompt,
                    device=self.device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=guided,
                    negative_prompt=negative or None,
                )
                return Embeds(pe, pooled), Embeds(ne, npooled) if guided else Embeds(pe, pooled)
            pe, ne = self.pipe.encode_prompt(prompt, self.device, 1, guided, negative)
            return Embeds(pe), Embeds(ne) if guided else Embeds(pe)

    def _weighted(self, runs: list[tuple[str, float]]) -> Embeds:
        providers = self._compel()
        texts, weights = [t for t, _ in runs], [w for _, w in runs]
        with torch.no_grad():
            parts = [
                p.get_embeddings_for_weighted_prompt_fragments([texts], [weights], device=self.device)
                for p in providers
            ]
            tokens = torch.cat(parts, dim=-1).to(self.pipe.unet.dtype)
            pooled = None
            if self.sdxl:  # the second encoder's projection of the whole text, as the pipeline pools it
                pooled = providers[-1].get_pooled_embeddings(["".join(texts)], device=self.device)
                pooled = pooled.to(self.pipe.unet.dtype)
        return Embeds(tokens, pooled)

    def _compel(self) -> list[Any]:
        if self._providers is None:
            from compel import EmbeddingsProvider, ReturnedEmbeddingsType

            if self.sdxl:  # SDXL takes both encoders' penultimate layers, without the final norm
                kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
                pairs = [(self.pipe.tokenizer, self.pipe.text_encoder)]
                pairs.append((self.pipe.tokenizer_2, self.pipe.text_encoder_2))
            else:
                kind = ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
                pairs = [(self.pipe.tokenizer, self.pipe.text_encoder)]
            self._providers = [
                EmbeddingsProvider(
                    tokenizer,
                    encoder,
                    returned_embeddings_type=kind,
                    device=str(self.device),
                    dtype_for_device_getter=lambda _device, e=encoder: e.dtype,
                )
                for tokenizer, encoder in pairs
            ]
        return self._providers


@dataclass(frozen=True)
class PromptSchedule:
    """The conditioning of a run (each request's stacked) for each stretch of steps it stays the same."""

    starts: tuple[int, ...]  # the first step index of each stretch, from 0
    cond: tuple[Embeds, ...]
    uncond: tuple[Embeds, ...]

    def at(self, step: int) -> tuple[Embeds, Embeds]:
        """(cond, uncond) at step index `step`."""
        index = max(i for i, start in enumerate(self.starts) if start <= step)
        return self.cond[index], self.uncond[index]


def schedule_for(encoder: TextEncoder, rs: Sequence[Request], steps: int, guided: bool) -> PromptSchedule:
    """Each request's prompt, negative and prompt B at every step where any of them changes, embedded."""
    texts = [
        [
            prompt_schedule(x.prompt, steps),
            prompt_schedule(x.negative_prompt, steps),
            prompt_schedule(x.prompt_b, steps),
        ]
        for x in rs
    ]
    starts = sorted({start for per_request in texts for schedule in per_request for start, _ in schedule})
    conds, unconds = [], []
    for step in starts:
        row_cond, row_uncond = [], []
        for x, (prompt, negative, prompt_b) in zip(rs, texts, strict=True):
            cond, uncond = encoder.pair(_text_at(prompt, step), _text_at(negative, step), guided)
            if x.blend > 0:
                cond = cond.blend(encoder.one(_text_at(prompt_b, step)), x.blend)
            row_cond.append(cond)
            row_uncond.append(uncond)
        conds.append(Embeds.stack(row_cond))
        unconds.append(Embeds.stack(row_uncond))
    return PromptSchedule(tuple(starts), tuple(conds), tuple(unconds))


def _text_at(schedule: list[tuple[int, str]], step: int) -> str:
    return [text for start, text in schedule if start <= step][-1]
