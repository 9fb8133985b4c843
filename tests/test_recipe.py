"""Recipes: JSON and A1111 text round trips give equal requests; text from the wild reads."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from backend.errors import RequestError
from backend.grids import Axis, Grid
from backend.images import Picture
from backend.request import Concept, Control, Lora, Request
from backend.upscale_spec import Upscale
from studio.a1111 import (
    parse_a1111,
    request_from_a1111,
    scheduler_from_a1111,
    scheduler_to_a1111,
    to_a1111,
)
from studio.recipe import (
    Ancestor,
    Provenance,
    RecipeError,
    ancestors_of,
    compact_recipe,
    recipe_from_json,
    recipe_to_json,
    request_from_dict,
)

RNG = np.random.default_rng(7)
INIT = Picture(RNG.integers(0, 256, (64, 48, 3), dtype=np.uint8))
MASK = Picture(RNG.integers(0, 256, (64, 48), dtype=np.uint8))

# Every field away from its default, so a field the recipe forgets fails the round trip below.
EVERYTHING = Request(
    engine="diffusers",
    model="/models/sd 1.5, pruned.safetensors",
    prompt="a castle on a hill, golden hour\nsecond line: ünïcode ✓",
    negative_prompt="blurry, low quality\nwatermark",
    seed=2**63 - 1,
    steps=33,
    guidance=6.25,
    width=48,
    height=64,
    scheduler="dpmpp_2m_karras",
    init_image=INIT,
    strength=0.3,
    mask=MASK,
    tiling=True,
    variation_seed=12345,
    variation_strength=0.125,
    prompt_b='a ruin, "old"',
    blend=0.4,
    concepts=(Concept("ornate", "plain", 1.5, 0.25), Concept("day, bright", "night", -2.0)),
    controls=(
        Control("/cn/control_v11p_sd15_canny.safetensors", "canny", INIT, 0.8, 0.1, 0.9),
        Control("lineart-net", "lineart", Picture(INIT.pixels[::-1]), 1.2),
    ),
    loras=(Lora("/loras/add detail, v2.safetensors", 0.75), Lora("style_ink", -1.0)),
    preview="taesd",
    locality=0.8,
    reference_weights=(("brick wall", 2.0), ("sky", -1.5)),
    patch_mode="ls",
    exact=True,
    grid=Grid(Axis("prompt", ("castle", "tower, old")), Axis("concept:2", (-2.0, 1.0))),
    upscale=Upscale(4, "/models/ESRGAN/4x-Ultra, sharp.pth", 512, 32),
    structure=0.25,
    structure_steps=0.6,
    colour_pins=(("#f0c828", "hammered_gold"), ("#ffffff", "sketch")),
)

COMBOS = [
    Request(),
    Request(prompt="cat", seed=1, steps=4, width=32, height=32),
    Request(engine="diffusers", model="org/model", scheduler="euler_a", guidance=0.0),
    Request(init_image=INIT, width=48, height=64, strength=1.0),
    Request(init_image=INIT, mask=MASK, width=48, height=64),
    Request(concepts=(Concept("a", "b", 0.1, 1.0),), reference_weights=(("x", 0.0),)),
    Request(variation_seed=0, variation_strength=1.0, tiling=True),
    Request(engine="diffusers", prompt="", loras=(Lora("ink", 0.5),)),
    Request(engine="diffusers", prompt="a [cat:dog:0.5], (red:1.3)", loras=(Lora("ink"), Lora("b", 2.0))),
    EVERYTHING,
]


def test_everything_request_sets_every_field():
    default = Request()
    same = [
        f.name
        for f in dataclasses.fields(Request)
        if f.compare and getattr(EVERYTHING, f.name) == getattr(default, f.name)
    ]
    assert not same, f"add non-default values for {same} so the recipe round trip covers them"


@pytest.mark.parametrize("request_", COMBOS)
def test_json_round_trip_gives_an_equal_request(request_):
    recipe = recipe_from_json(recipe_to_json(request_, {"model_hash": "ab" * 32}))
    assert recipe.request == request_
    assert recipe.request.request_id != request_.request_id or request_ is recipe.request
    assert recipe.extras == {"model_hash": "ab" * 32}
    assert recipe.notes == ()


def test_json_keeps_images_pixel_exact_and_mask_as_mask():
    back = recipe_from_json(recipe_to_json(EVERYTHING)).request
    assert np.array_equal(back.init_image.pixels, INIT.pixels)
    assert back.mask.is_mask and np.array_equal(back.mask.pixels, MASK.pixels)


def test_json_has_version_and_no_request_id():
    data = json.loads(recipe_to_json(EVERYTHING))
    assert data["format"] == "studio-recipe" and data["version"] == 1
    assert "request_id" not in data["request"]


def test_json_carries_lineage_and_extras():
    link = Ancestor("p1", ("p0",), True, compact_recipe(Request(prompt="first"), {"model_hash": "x"}))
    prov = Provenance("me", ("p1",), painted=True, chain=(link, Ancestor("p0")))
    extras = {"reference_shares": {"a": 0.7, "b": 0.3}, "model_hash": "f" * 64}
    recipe = recipe_from_json(recipe_to_json(Request(), extras, prov))
    assert recipe.provenance == prov
    assert recipe.extras == extras
    assert "png" not in json.dumps(link.recipe)  # compact: images by digest only


def test_compact_recipe_names_images_by_digest():
    compact = compact_recipe(EVERYTHING)
    assert compact["request"]["init_image"] == {"digest": INIT.digest}
    with pytest.raises(RecipeError, match="does not embed"):
        request_from_dict(compact["request"])
    request, _ = request_from_dict(compact["request"], missing_images=True)
    assert request.init_image is None and request.prompt == EVERYTHING.prompt


def test_old_and_new_recipes_read():
    data = json.loads(recipe_to_json(Request(prompt="x", seed=9)))
    del data["request"]["locality"]  # an older studio did not know this field
    data["request"]["future_knob"] = 3  # a newer one knows more
    data["version"] = 2
    recipe = recipe_from_json(json.dumps(data))
    assert recipe.request == Request(prompt="x", seed=9)
    assert any("future_knob" in n for n in recipe.notes) and any("newer" in n for n in recipe.notes)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": "12"}, "seed"),
        ({"seed": True}, "seed"),
        ({"guidance": "high"}, "guidance"),
        ({"tiling": 1}, "tiling"),
        ({"concepts": [{"positive": "a"}]}, "concepts"),
        ({"reference_weights": [["a"]]}, "reference_weights"),
        ({"init_image": {"png": "not base64!"}}, "init_image"),
        ({"init_image": {"png": "aGVsbG8="}}, "image"),  # base64 of something that is not a PNG
        ({"variation_seed": 1.5}, "variation_seed"),
    ],
)
def test_bad_json_values_give_a_clear_error(change, message):
    data = json.loads(recipe_to_json(Request()))
    data["request"].update(change)
    with pytest.raises(Exception, match=message) as info:
        recipe_from_json(json.dumps(data))
    assert isinstance(info.value, RecipeError) or info.type.__name__ == "ImageError"


@pytest.mark.parametrize(
    "text", ["", "{", "[]", '{"format": "other"}', '{"format": "studio-recipe"}', "1" * 5000]
)
def test_not_a_recipe_is_a_recipe_error(text):
    with pytest.raises(RecipeError):
        recipe_from_json(text)


def _text_carryable(request: Request) -> Request:
    # A1111 text carries no images, and a denoising strength only for image to image.
    strength = request.strength if request.init_image is not None else Request().strength
    return request.replace(init_image=None, mask=None, controls=(), strength=strength)


@pytest.mark.parametrize("request_", COMBOS)
def test_a1111_round_trip_gives_an_equal_request(request_):
    back, extras = request_from_a1111(to_a1111(request_, {"model_hash": "0123456789abcdef"}))
    assert back == _text_carryable(request_)
    assert extras["model_hash"] == "0123456789"


def test_a1111_text_looks_like_a1111():
    text = to_a1111(
        Request(
            engine="diffusers",
            model="/m/dreamshaper_8.safetensors",
            prompt="a cat",
            negative_prompt="dog",
            seed=1,
            steps=20,
            guidance=7.0,
            scheduler="dpmpp_2m_karras",
            init_image=INIT,
            width=48,
            height=64,
            strength=0.5,
            variation_seed=3,
            variation_strength=0.25,
        ),
        {"model_hash": "879db523c30d3b9017143d56705015e15a2cb5628762c11d086fed9538abd7fd"},
    )
    lines = text.split("\n")
    assert lines[0] == "a cat" and lines[1] == "Negative prompt: dog"
    assert lines[2].startswith(
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 48x64, "
        "Model hash: 879db523c3, Model: dreamshaper_8, Model path: /m/dreamshaper_8.safetensors, "
        "Denoising strength: 0.5, Variation seed: 3, Variation seed strength: 0.25"
    )


def test_a1111_text_names_loras_and_controlnets_like_a1111():
    extras = {
        "loras": [{"name": "add detail, v2", "autov3": "7c6bad76eb54aa", "sha256": "f" * 64}],
        "controls": [{"name": "control_v11p_sd15_canny", "sha256": "d14c016b" + "0" * 56}],
    }
    text = to_a1111(EVERYTHING, extras)
    first = text.split("\n")[1]  # the prompt's second line carries the tags, before the negative prompt
    assert first.endswith("second line: ünïcode ✓ <lora:add detail, v2:0.75> <lora:style_ink:-1>")
    fields = parse_a1111(text).fields
    assert fields["Lora hashes"] == "add detail, v2: 7c6bad76eb54"
    assert fields["ControlNet 0"] == (
        "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.8, "
        "Guidance Start: 0.1, Guidance End: 0.9"
    )
    assert fields["ControlNet 1"].startswith("Module: lineart_standard, Model: lineart-net, Weight: 1.2")


def test_a1111_quotes_values_with_commas_like_a1111():
    text = to_a1111(Request(prompt_b="red, blue", model="a,b"))
    fields = parse_a1111(text).fields
    assert 'Prompt B: "red, blue"' in text
    assert fields["Prompt B"] == "red, blue" and fields["Model"] == "a,b"


WILD = """masterpiece, best quality, 1girl, (smile:1.2), <lora:add_detail:0.8>,
looking at viewer
Negative prompt: (worst quality:1.4), lowres, EasyNegative, bad-hands-5
Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 2862370573, Size: 512x768, \
Model hash: 7f96a1a9ca, Model: anything-v5-PrtRE, Denoising strength: 0.45, Clip skip: 2, ENSD: 31337, \
ADetailer model: face_yolov8n.pt, ADetailer prompt: "smiling, blue eyes", ADetailer confidence: 0.3, \
Hires upscale: 2, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+ Anime6B, \
Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "EasyNegative: c74b4e810b03, bad-hands-5: aa7651be154c", \
Emphasis: Original, Version: v1.7.0"""


def test_a1111_from_the_wild_reads():
    request, extras = request_from_a1111(WILD)
    # The LoRA tag leaves the prompt (A1111 too takes it out before the text encoder) for the LoRA list.
    assert request.prompt == "masterpiece, best quality, 1girl, (smile:1.2),,\nlooking at viewer"
    assert request.loras == (Lora("add_detail", 0.8),)
    assert request.negative_prompt == "(worst quality:1.4), lowres, EasyNegative, bad-hands-5"
    assert (request.steps, request.seed, request.guidance) == (28, 2862370573, 6.5)
    assert (request.width, request.height, request.strength) == (512, 768, 0.45)
    assert request.scheduler == "dpmpp_2m_karras" and request.engine == "diffusers"
    assert request.model == "anything-v5-PrtRE"
    assert extras == {
        "model_hash": "7f96a1a9ca",
        "model_name": "anything-v5-PrtRE",
        "lora_hashes": {"add_detail": "7c6bad76eb54"},
    }
    fields = parse_a1111(WILD).fields
    assert fields["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert fields["TI hashes"] == "EasyNegative: c74b4e810b03, bad-hands-5: aa7651be154c"
    assert fields["Hires upscale"] == "2"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "just a prompt",
        "prompt\nSteps: 20",
        "Negative prompt: only negative\nSteps: 5, Seed: 3, Sampler: Some New Sampler",
        "x\nSteps: 20, Sampler: Euler, Size: huge, Seed: 1",
        "x\nSteps: many, Sampler: Euler, Seed: 1",
        "x\nSteps: 20, Sampler: Euler, Seed: 1, Concepts: [1, 2",
        '\x00\x01"\n,,,:::\nSteps: "unterminated, Seed: 1, CFG scale: 7',
    ],
)
def test_odd_a1111_text_reads_or_says_why(text):
    try:
        request, _ = request_from_a1111(text)
    except RecipeError as exc:
        assert str(exc).startswith("A1111 parameters:")
    else:
        assert isinstance(request, Request)


def test_unknown_sampler_passes_through():
    request, _ = request_from_a1111("Negative prompt: n\nSteps: 5, Seed: 3, Sampler: Some New Sampler")
    assert request.scheduler == "Some New Sampler" and request.negative_prompt == "n" and request.prompt == ""


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ("euler", ("Euler", None)),
        ("euler_a", ("Euler a", None)),
        ("ddim", ("DDIM", None)),
        ("dpmpp_2m", ("DPM++ 2M", None)),
        ("dpmpp_2m_karras", ("DPM++ 2M", "Karras")),
        ("lcm", ("LCM", None)),
        ("pndm", ("PLMS", None)),
        ("heun", ("Heun", None)),
        ("ddpm", ("DDPM", None)),
    ],
)
def test_scheduler_names_map_both_ways(ours, theirs):
    assert scheduler_to_a1111(ours) == theirs
    assert scheduler_from_a1111(*theirs) == ours


def test_legacy_and_automatic_schedule_types():
    assert scheduler_from_a1111("DPM++ 2M Karras") == "dpmpp_2m_karras"
    assert scheduler_from_a1111("Euler a", "Automatic") == "euler_a"
    assert scheduler_from_a1111("euler", "karras") == "euler_karras"


def test_ancestors_of_gallery_like_results():
    class Result:  # the shape of studio.gallery.Result, without Qt
        def __init__(self, id, parents, painted, request):
            self.id, self.parents, self.painted, self.request, self.extras = (
                id,
                parents,
                painted,
                request,
                {"k": 1},
            )

    chain = ancestors_of([Result("b", ("a",), True, EVERYTHING), Result("a", (), False, Request())])
    assert [(a.id, a.parents, a.painted) for a in chain] == [("b", ("a",), True), ("a", (), False)]
    assert chain[0].recipe == compact_recipe(EVERYTHING, {"k": 1})
    back = recipe_from_json(recipe_to_json(Request(), provenance=Provenance("c", ("b",), chain=chain)))
    assert back.provenance.chain == chain


def test_loras_and_controls_are_validated():
    good = Request(engine="diffusers", width=64, height=64)
    control = Control("cn", "canny", INIT)
    for bad, message in (
        (good.replace(engine="patch", loras=(Lora("x"),)), "LoRAs need the diffusers engine"),
        (good.replace(loras=(Lora("x", 11.0),)), "strength must be between -10 and 10"),
        (good.replace(loras=(Lora("x"), Lora("x", 0.5))), "named twice"),
        (good.replace(loras=(Lora(" "),)), "needs a file or a name"),
        (good.replace(controls=(dataclasses.replace(control, kind="hed"),)), "unknown kind 'hed'"),
        (good.replace(controls=(dataclasses.replace(control, start=0.5, end=0.5),)), "start < end"),
        (good.replace(controls=(dataclasses.replace(control, strength=3.0),)), "between 0 and 2"),
        (good.replace(controls=(dataclasses.replace(control, model=""),)), "no ControlNet model"),
        (good.replace(controls=(control,) * 5), "at most 4 control layers"),
    ):
        with pytest.raises(RequestError, match=message):
            bad.validate()
    good.replace(controls=(control, control), loras=(Lora("x", -2.0), Lora("y"))).validate()


def test_stored_requests_without_images_drop_their_controls():
    data = json.loads(recipe_to_json(EVERYTHING))["request"]
    for control in data["controls"]:
        del control["image"]["png"]
    request, notes = request_from_dict(data, missing_images=True)
    assert request.controls == () and request.loras == EVERYTHING.loras and notes == []
    with pytest.raises(RecipeError, match="names its control image but does not embed it"):
        request_from_dict(data)
