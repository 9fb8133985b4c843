"""A1111 prompt syntax: prompt editing [from:to:when], weights (word:1.2), <lora:> tags; in the engine they
equal diffusers' pipeline given the same embeddings (compel's for weights, swapped mid-run for editing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compel import Compel, ReturnedEmbeddingsType
from tiny_models import build_tiny_sd, build_tiny_sdxl

from backend.conditioning import TextEncoder
from backend.diffusers_engine import DiffusersEngine
from backend.errors import RequestError
from backend.prompt_syntax import prompt_schedule, split_lora_tags, weighted_fragments
from backend.request import Request
from backend.schedulers import make_scheduler
from studio.a1111 import request_from_a1111, to_a1111

TOLERANCE = 1e-4


@pytest.mark.parametrize(
    ("text", "steps", "expected"),
    [
        ("a [cat:dog:0.5] sleeping", 10, [(0, "a cat sleeping"), (5, "a dog sleeping")]),
        ("a [cat:dog:3]", 10, [(0, "a cat"), (3, "a dog")]),
        ("a cat[, at night:0.25]", 8, [(0, "a cat"), (2, "a cat, at night")]),
        ("a cat[, in fog::2]", 8, [(0, "a cat, in fog"), (2, "a cat")]),
        ("[red|blue] ball", 3, [(0, "red ball"), (1, "blue ball"), (2, "red ball")]),
        ("x [(big:1.2):small:0.5]", 4, [(0, "x (big:1.2)"), (2, "x small")]),
        ("a [cat:dog:0]", 4, [(0, "a dog")]),
        ("a [cat:dog:99]", 4, [(0, "a cat")]),
        ("plain (x:1.3) [y], 10:30", 4, [(0, "plain (x:1.3) [y], 10:30")]),
        ("[a:b:c] and [open", 4, [(0, "[a:b:c] and [open")]),
    ],
)
def test_prompt_editing_follows_a1111(text, steps, expected) -> None:
    assert prompt_schedule(text, steps) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
        ("((cat))", [("cat", pytest.approx(1.21))]),
        ("[cat]", [("cat", pytest.approx(1 / 1.1))]),
        (
            "a (red:1.5) (blue: 0.5 ) fox",
            [("a ", 1.0), ("red", 1.5), (" ", 1.0), ("blue", 0.5), (" fox", 1.0)],
        ),
        ("((red:1.5))", [("red", pytest.approx(1.65))]),
        (r"a \(cat\) \[x\]", [("a (cat) [x]", 1.0)]),
        ("(unclosed", [("unclosed", 1.1)]),
        ("time 10:30", [("time 10:30", 1.0)]),
    ],
)
def test_weights_are_read_as_a1111_reads_them(text, expected) -> None:
    assert weighted_fragments(text) == expected


def test_lora_tags_leave_the_prompt() -> None:
    assert split_lora_tags("a cat <lora:ink:0.8>, <LORA:wc> b") == ("a cat, b", [("ink", 0.8), ("wc", 1.0)])
    assert split_lora_tags("<lora:x:0.5:0.7>") == ("", [("x", 0.5)])  # A1111's separate UNet weight
    with pytest.raises(RequestError, match="should be a number"):
        split_lora_tags("<lora:x:strong>")


def _request(**changes) -> Request:
    return Request(
        engine="diffusers",
        model="tiny",
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        seed=11,
        steps=4,
        guidance=6.0,
        width=64,
        height=64,
    ).replace(**changes)


def _engine(pipe) -> DiffusersEngine:
    engine = DiffusersEngine(device="cpu", dtype="fp32")
    engine.use_pipeline(pipe, "tiny")
    return engine


def _pipeline(pipe, r: Request, **kwargs) -> np.ndarray:
    pipe.scheduler = make_scheduler(r.scheduler, pipe.scheduler.config)
    return pipe(
        num_inference_steps=r.steps,
        guidance_scale=r.guidance,
        generator=torch.Generator("cpu").manual_seed(r.seed),
        output_type="np",
        height=r.height,
        width=r.width,
        **kwargs,
    ).images[0]


def test_prompt_editing_equals_the_pipeline_with_the_prompt_swapped_mid_run() -> None:
    pipe = build_tiny_sd()
    engine = _engine(pipe)
    r = _request(prompt="a [lighthouse:castle:0.5] at dusk", steps=6)
    ours = engine.render(r)
    early, negative = pipe.encode_prompt("a lighthouse at dusk", "cpu", 1, True, "blurry")
    late, _ = pipe.encode_prompt("a castle at dusk", "cpu", 1, True, "blurry")

    def swap(_pipe, step, _t, tensors):  # after step index 2, steps 3.. see the late prompt
        if step == 2:
            tensors["prompt_embeds"] = torch.cat([negative, late])
        return tensors

    theirs = _pipeline(
        pipe,
        r,
        prompt_embeds=early,
        negative_prompt_embeds=negative,
        callback_on_step_end=swap,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    )
    assert np.abs(ours - theirs).max() <= TOLERANCE
    for whole in ("a lighthouse at dusk", "a castle at dusk"):
        assert np.abs(ours - engine.render(r.replace(prompt=whole))).max() > 100 * TOLERANCE
    # A switch at 0 or past the end is the one prompt.
    np.testing.assert_array_equal(
        engine.render(r.replace(prompt="a [lighthouse:castle:0] at dusk")),
        engine.render(r.replace(prompt="a castle at dusk")),
    )


def test_weighted_prompts_equal_the_pipeline_given_compels_embeddings() -> None:
    pipe = build_tiny_sd()
    engine = _engine(pipe)
    r = _request(prompt="a (lighthouse:1.4) at [dusk]", negative_prompt="(blurry:0.6)")
    ours = engine.render(r)
    compel = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)  # compel's own syntax
    theirs = _pipeline(
        pipe,
        r,
        prompt_embeds=compel("a (lighthouse)1.4 at (dusk)0.9090909090909091"),
        negative_prompt_embeds=compel("(blurry)0.6"),
    )
    assert np.abs(ours - theirs).max() <= TOLERANCE
    assert np.abs(ours - engine.render(r.replace(prompt="a lighthouse at dusk"))).max() > 100 * TOLERANCE
    # The text goes into the A1111 parameters and comes back unchanged.
    assert request_from_a1111(to_a1111(r))[0] == r


def test_sdxl_weighted_prompts_equal_the_pipeline_given_compels_embeddings() -> None:
    pipe = build_tiny_sdxl()
    engine = _engine(pipe)
    r = _request(prompt="a (lighthouse:1.4) at dusk", negative_prompt="")
    ours = engine.render(r)
    compel = Compel(
        tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
        text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=[False, True],
    )
    embeds, _ = compel("a (lighthouse)1.4 at dusk")
    # The pooled vector is the plain text's, as A1111 pools it (compel would pool its syntax characters too).
    pooled = pipe.encode_prompt("a lighthouse at dusk", device="cpu", do_classifier_free_guidance=False)[2]
    theirs = _pipeline(pipe, r, prompt_embeds=embeds, pooled_prompt_embeds=pooled)  # empty negative: zeros
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_unit_weights_through_compel_equal_the_pipelines_encoder() -> None:
    """compel's path and the pipeline's encode_prompt agree, so weights only change what they weight."""
    for pipe in (build_tiny_sd(), build_tiny_sdxl()):
        encoder = TextEncoder(pipe, torch.device("cpu"))
        weighted = encoder._weighted([("a lighthouse ", 1.0), ("at dusk", 1.0)])
        plain = encoder.one("a lighthouse at dusk")
        torch.testing.assert_close(weighted.tokens, plain.tokens, atol=1e-5, rtol=0)
        if plain.pooled is not None:
            torch.testing.assert_close(weighted.pooled, plain.pooled, atol=1e-5, rtol=0)
