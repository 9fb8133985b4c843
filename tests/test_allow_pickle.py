"""Allowing pickle checkpoints (.ckpt): refused by default, loaded with --allow-pickle or the engines' switch
through torch's weights-only loader, and a pickle that would run code refused even then."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import pytest
from ldm_export import save_ldm_checkpoint
from tiny_models import build_tiny_sd

from backend.engines import Engines
from backend.errors import ModelError
from backend.events import Done
from studio.cli.main import main
from studio.files.pngmeta import read_png_metadata


class CodeInPickle:
    """A pickle that would create a file when unpickled (what a hostile checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def save_hostile_ckpt(path: Path, marker: Path) -> Path:
    """A .ckpt whose unpickling would touch `marker`."""
    path.write_bytes(pickle.dumps({"state_dict": CodeInPickle(marker)}))
    return path


def cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_allow_pickle_loads_a_ckpt_that_is_refused_without_it(tmp_path, capsys, tiny_configs) -> None:
    ckpt = save_ldm_checkpoint(build_tiny_sd(), tmp_path / "a1111-model.ckpt")
    out = tmp_path / "out.png"
    argv = ["generate", "--model", ckpt, "--width", 64, "--height", 64, "--steps", 2, "--out", out, "-q"]
    code, _, err = cli(capsys, *argv)
    assert code == 1 and not out.exists()
    assert "a1111-model.ckpt: is a pickle checkpoint" in err
    assert "--allow-pickle" in err and "Models → Allow pickle model files" in err

    code, _, err = cli(capsys, *argv, "--allow-pickle", "--seed", "3")
    assert code == 0, err
    meta = read_png_metadata(out)
    assert (meta.request.engine, meta.request.model) == ("diffusers", str(ckpt))

    # `models` marks the file and says how to use it.
    code, listing, note = cli(capsys, "models", "--model-folder", tmp_path, "--no-hub")
    assert code == 0
    assert "a1111-model" in listing and "pickle: refused unless allowed" in listing
    assert "generate --allow-pickle" in note and "Models → Allow pickle model files" in note


def test_cli_a_pickle_that_runs_code_stays_refused_when_allowed(tmp_path, capsys) -> None:
    marker = tmp_path / "ran"
    evil = save_hostile_ckpt(tmp_path / "evil.ckpt", marker)
    out = tmp_path / "out.png"
    code, _, err = cli(
        capsys, "generate", "--model", evil, "--allow-pickle", "--steps", "2", "--out", out, "-q"
    )
    assert code == 1 and not out.exists()
    assert "cannot be read safely" in err and "Traceback" not in err
    assert not marker.exists()


def test_engines_switch_takes_effect_from_the_next_run(tmp_path, tiny_configs, tiny_request) -> None:
    """Turning pickles off also stops a pickle model that is already loaded: the engine is made again."""
    ckpt = save_ldm_checkpoint(build_tiny_sd(), tmp_path / "m.ckpt")
    request = tiny_request.replace(model=str(ckpt), steps=2)
    engines = Engines(device="cpu")
    with pytest.raises(ModelError, match="pickle checkpoint"):
        list(engines.generate(request, threading.Event()))
    engines.allow_pickle(True)
    assert isinstance(list(engines.generate(request, threading.Event()))[-1], Done)
    first = engines.get("diffusers")
    assert engines.get("diffusers") is first  # kept loaded while the rule stands
    engines.allow_pickle(False)
    with pytest.raises(ModelError, match="pickle checkpoint"):
        list(engines.generate(request, threading.Event()))
    assert engines.get("diffusers") is not first
