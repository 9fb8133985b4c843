"""The remote protocol without a server: request and event encoding, the client's own checks, what a server
lists and admits, how scaling options map onto Serve's, and the access token kept on disk."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from backend import wire
from backend.errors import RequestError, StudioError
from backend.events import Done, StepEvent
from backend.images import Picture
from backend.remote import RemoteEngine
from backend.request import Control, Lora, Request
from backend.wire import RemoteError


def test_a_request_travels_as_its_recipe_with_images_embedded() -> None:
    rng = np.random.default_rng(0)
    init = Picture(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Picture(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    request = Request(
        prompt="gold ring", seed=9, width=64, height=64, init_image=init, mask=mask, strength=0.4
    )
    body = wire.encode_request(request)
    assert json.loads(body)["format"] == "studio-recipe"
    assert wire.decode_request(body) == request


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{nope", "not valid JSON"),
        (json.dumps({"engine": "patch", "width": 12}).encode(), "width must be a multiple of 8"),
        (json.dumps({"engine": "patch", "flux_capacitor": 1}).encode(), "unknown recipe field"),
        (json.dumps({"engine": "patch", "init_image": {"png": "!!"}}).encode(), "base64 PNG"),
        (b" " * (wire.MAX_BODY_BYTES + 1), "the limit is"),
    ],
)
def test_a_server_refuses_what_a_local_engine_would_refuse(body: bytes, message: str) -> None:
    with pytest.raises(StudioError, match=message):
        wire.decode_request(body)


def test_events_round_trip_previews_small_and_images_exact() -> None:
    rng = np.random.default_rng(1)
    request = Request(width=1024, height=512)
    big = rng.integers(0, 256, (512, 1024, 3), dtype=np.uint8)
    step = wire.decode_event(wire.parse_line(wire.encode_event(StepEvent("x", 2, 9, big, 1.5))), request)
    assert isinstance(step, StepEvent) and (step.step, step.total, step.elapsed_s) == (2, 9, 1.5)
    assert step.request_id == request.request_id
    assert step.preview is not None and step.preview.shape == (384, 768, 3)  # display size, JPEG
    attribution = rng.random((512, 1024, 2), dtype=np.float32)
    done_line = wire.encode_event(Done("x", big, request, {"model": "m"}, attribution, 3.0))
    done = wire.decode_event(wire.parse_line(done_line), request)
    assert isinstance(done, Done) and done.request is request and done.extras == {"model": "m"}
    assert np.array_equal(done.image, big)  # lossless
    assert done.attribution is not None and np.array_equal(done.attribution, attribution)


def test_a_client_refuses_an_image_of_the_wrong_size() -> None:
    line = wire.encode_event(Done("x", np.zeros((8, 8, 3), np.uint8), Request(), {}, None, 0.0))
    with pytest.raises(RemoteError, match="8×8 image for a 512×512 request"):
        wire.decode_event(wire.parse_line(line), Request())
    with pytest.raises(RemoteError, match="not JSON"):
        wire.parse_line(b"<html>")


def test_remote_engine_checks_its_address_token_and_request_before_sending() -> None:
    with pytest.raises(RemoteError, match="not a server address"):
        RemoteEngine("gpu-box:8188", "t" * 20)
    with pytest.raises(RemoteError, match="access token"):
        RemoteEngine("http://gpu-box:8188", " ")
    engine = RemoteEngine("http://127.0.0.1:9/", "t" * 20)  # the discard port: nothing listens
    assert engine.label == "127.0.0.1:9"
    with pytest.raises(RequestError, match="width"):
        list(engine.generate(Request(width=12), threading.Event()))
    with pytest.raises(RemoteError, match="cannot reach the studio server"):
        list(engine.generate(Request(steps=2, width=64, height=64), threading.Event()))


def test_a_server_lists_safetensors_models_and_admits_only_those(
    tiny_sd_folder: Path, tmp_path: Path
) -> None:
    from backend.serve import ServeOptions, catalogue

    (tmp_path / "evil.ckpt").write_bytes(b"pickle")
    refs = tmp_path / "my-refs"
    refs.mkdir()
    models = catalogue((str(tiny_sd_folder.parent), str(tmp_path)), (str(refs),), include_hub=False)
    assert {(m.engine, m.name) for m in models} == {
        ("patch", ""),
        ("patch", "my-refs"),
        ("diffusers", "tiny-sd"),
    }
    options = ServeOptions(token="t" * 20, models=models)
    assert options.admit(Request(engine="diffusers", model="tiny-sd")).path == str(tiny_sd_folder)
    assert options.admit(Request(engine="patch", model="my-refs")).path == str(refs)
    for request in (
        Request(engine="diffusers", model=str(tiny_sd_folder)),
        Request(engine="diffusers", model="evil"),
        Request(engine="patch", model=str(refs)),
    ):
        with pytest.raises(StudioError, match="not served here"):
            options.admit(request)
    image = Picture(np.zeros((512, 512, 3), np.uint8))
    for extra in (
        {"loras": (Lora("/tmp/x.safetensors"),)},
        {"controls": (Control("/tmp/cn", "canny", image),)},
    ):
        with pytest.raises(StudioError, match="ControlNets or LoRAs"):
            options.admit(Request(engine="diffusers", model="tiny-sd", **extra))


def test_scaling_options_become_serves_deployment_options() -> None:
    from backend.serve import Scaling

    fixed = Scaling(replicas=4, gpus_per_replica=0.5).deployment_options()
    assert fixed == {"num_replicas": 4, "ray_actor_options": {"num_cpus": 1.0, "num_gpus": 0.5}}
    auto = Scaling(replicas=None, min_replicas=0, max_replicas=8, gpus_per_replica=1).deployment_options()
    assert auto["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 8, "target_ongoing_requests": 1}
    assert "num_replicas" not in auto
    with pytest.raises(StudioError, match="below"):
        Scaling(min_replicas=3, max_replicas=2).deployment_options()


@pytest.mark.parametrize("option", ["--num-cpus", "--num-gpus", "--gpus-per-replica", "--cpus-per-replica"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_resource_options_refuse_what_is_no_amount(option: str, value: str) -> None:
    from backend.serve_command import _parser

    with pytest.raises(StudioError, match=f"{option}: invalid amount value: '{value}'"):
        _parser().parse_args([option, value])
    assert getattr(_parser().parse_args([option, "0.5"]), option[2:].replace("-", "_")) == 0.5


def test_the_token_is_made_once_kept_private_and_printed_only_then(tmp_path: Path, capsys) -> None:
    from backend.serve_command import _saved_token

    path = tmp_path / "studio" / "serve-token"
    token = _saved_token(path)
    assert len(token) >= 32 and token in capsys.readouterr().err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _saved_token(path) == token
    assert token not in capsys.readouterr().err  # not echoed again
