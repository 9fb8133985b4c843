"""The remote engine end to end: a real `studio-serve` (Ray Serve on 127.0.0.1) started by this module,
driven through HTTP by `backend.remote.RemoteEngine`, the CLI and the window's session; stopped afterwards
with no process left behind.

One server serves the whole module (Ray and Serve take about half a minute to start on this machine); the
last test stops it the way a terminal's Ctrl+C does, in the middle of a run.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from serve_process import ServerProcess

from backend.errors import RequestError, StudioError
from backend.events import Done, StepEvent
from backend.remote import RemoteEngine
from backend.request import Request
from backend.wire import RemoteError

TOKEN = "test-token-" + "0" * 16


@pytest.fixture(scope="module")
def server(tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """A studio-serve with the tiny SD model and a pickle checkpoint it must not list; stopped afterwards."""
    root = tmp_path_factory.mktemp("serve")
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "evil.ckpt").write_bytes(b"a pickle would run code when loaded")
    args = ["--model-folder", str(tiny_sd_folder.parent), "--model-folder", str(pickled)]
    proc = ServerProcess(args, root / "serve.log", token=TOKEN)
    try:
        proc.wait_ready()
        yield proc
        proc.stop(signal.SIGTERM)
        assert proc.leftovers() == [], "processes left behind by studio-serve"
    finally:
        proc.close()


@pytest.fixture
def remote(server: ServerProcess) -> RemoteEngine:
    return RemoteEngine(server.url, TOKEN)


def patch_request(**changes) -> Request:
    return Request(engine="patch", prompt="brick", seed=3, steps=5, width=64, height=64).replace(**changes)


def run(
    engine, request: Request, cancel: threading.Event | None = None
) -> tuple[list[StepEvent], Done | None]:
    steps: list[StepEvent] = []
    done = None
    for event in engine.generate(request, cancel or threading.Event()):
        if isinstance(event, StepEvent):
            steps.append(event)
        else:
            done = event
    return steps, done


def local_patch(request: Request) -> Done:
    from backend.patch_engine import PatchEngine

    done = run(PatchEngine(), request)[1]
    assert done is not None
    return done


def raw(server: ServerProcess, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_every_call_needs_the_token_and_nothing_runs_without_it(server: ServerProcess) -> None:
    before = json.loads(raw(server, "GET", "/v1/info")[1])["runs"]
    body = json.dumps({"request": {"engine": "patch", "steps": 2}}).encode()
    for token in (None, "wrong-token-" + "1" * 16):
        assert raw(server, "GET", "/v1/info", token=token)[0] == 401
        assert raw(server, "POST", "/v1/runs", body, token=token)[0] == 401
        assert raw(server, "POST", "/v1/runs/x/cancel", token=token)[0] == 401
    assert json.loads(raw(server, "GET", "/v1/info")[1])["runs"] == before
    with pytest.raises(RemoteError, match="refused the access token"):
        run(RemoteEngine(server.url, "wrong-token-" + "1" * 16), patch_request())
    assert raw(server, "GET", "/docs")[0] == 404  # no unauthenticated pages beside the API


def test_server_lists_engines_and_its_models_without_their_paths(
    server: ServerProcess, remote: RemoteEngine, tiny_sd_folder: Path
) -> None:
    info = remote.info()
    assert set(info.engines) == {"patch", "diffusers"}
    listed = {(m["engine"], m["name"]) for m in info.models}
    assert {("patch", ""), ("diffusers", "tiny-sd")} <= listed
    assert ("diffusers", "evil") not in listed  # pickle checkpoints are not served
    assert info.device == "cpu"
    assert str(tiny_sd_folder.parent) not in raw(server, "GET", "/v1/info")[1].decode()


def test_patch_engine_streams_every_step_and_gives_the_local_pixels(remote: RemoteEngine) -> None:
    request = patch_request()
    steps, done = run(remote, request)
    assert [s.step for s in steps] == [1, 2, 3, 4, 5]
    assert all(s.total == 5 and s.preview is not None and s.preview.shape == (64, 64, 3) for s in steps)
    assert all(s.request_id == request.request_id for s in steps)
    assert done is not None and done.request == request
    local = local_patch(request)
    assert np.array_equal(done.image, local.image)
    assert done.extras == local.extras
    assert done.attribution is not None and np.array_equal(done.attribution, local.attribution)


def test_diffusers_model_streams_every_step_and_gives_the_local_pixels(
    remote: RemoteEngine, tiny_sd_folder: Path
) -> None:
    from backend.diffusers_engine import DiffusersEngine

    request = Request(
        engine="diffusers", model="tiny-sd", prompt="a red fox", seed=7, steps=3, width=64, height=64
    )
    steps, done = run(remote, request)
    assert [s.step for s in steps] == [1, 2, 3] and all(s.preview is not None for s in steps)
    assert done is not None
    assert done.extras["model"] == "tiny-sd"  # named as the client named it: no server path in the recipe
    local = run(DiffusersEngine(device="cpu", dtype="fp32"), request.replace(model=str(tiny_sd_folder)))[1]
    assert local is not None and np.array_equal(done.image, local.image)
    assert done.extras["model_hash"] == local.extras["model_hash"]


def test_cancel_stops_the_server_within_one_step(remote: RemoteEngine) -> None:
    request = patch_request(seed=4, steps=40, width=128, height=128)
    cancel = threading.Event()
    seen = []
    for event in remote.generate(request, cancel):
        assert isinstance(event, StepEvent), "a cancelled run yields no Done"
        seen.append(event.step)
        if event.step == 2:
            cancel.set()
    assert seen[-1] <= 3  # the stream closed at once
    status = remote.cancel_run(request.request_id, wait=60)  # answers once the server's engine stopped
    assert status["state"] == "cancelled"
    assert status["steps"] <= 3, f"the server computed {status['steps']} steps after a cancel at step 2"


def test_two_clients_at_once_each_get_their_own_result(server: ServerProcess) -> None:
    requests = [patch_request(seed=11), patch_request(seed=12, prompt="marble")]
    results: dict[int, Done | None] = {}

    def client(n: int) -> None:
        results[n] = run(RemoteEngine(server.url, TOKEN), requests[n])[1]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for n, request in enumerate(requests):
        done = results[n]
        assert done is not None and done.request_id == request.request_id
        assert np.array_equal(done.image, local_patch(request).image)


def test_a_clients_newer_request_supersedes_its_older_one(remote: RemoteEngine) -> None:
    first = patch_request(seed=21, steps=40, width=128, height=128)
    second = patch_request(seed=22)
    started = threading.Event()
    outcome: dict[str, object] = {}

    def older() -> None:
        try:
            for event in remote.generate(first, threading.Event()):
                started.set()
                outcome["last"] = event
        except StudioError as exc:
            outcome["error"] = str(exc)
        finally:
            started.set()

    thread = threading.Thread(target=older)
    thread.start()
    assert started.wait(120)
    done = run(remote, second)[1]  # the same client: the server cancels the older run
    thread.join(60)
    assert done is not None and np.array_equal(done.image, local_patch(second).image)
    assert "superseded" in str(outcome.get("error")), outcome
    assert not isinstance(outcome.get("last"), Done)
    assert remote.status(first.request_id)["state"] == "cancelled"


def test_server_refuses_models_it_does_not_list_and_bad_requests(
    server: ServerProcess, remote: RemoteEngine, tiny_sd_folder: Path
) -> None:
    for model in (str(tiny_sd_folder), "evil", "../../etc"):
        with pytest.raises(RequestError, match="not served here"):
            run(remote, Request(engine="diffusers", model=model, steps=2, width=64, height=64))
    with pytest.raises(RequestError, match="not served here"):
        run(remote, patch_request(model="/etc"))
    # What a client that skips the local checks sends: the server validates it the same way.
    bad = json.dumps(
        {"format": "studio-recipe", "version": 1, "request": {"engine": "patch", "width": 7}}
    ).encode()
    status, body = raw(server, "POST", "/v1/runs", bad)
    assert status == 400 and "width must be a multiple of 8" in json.loads(body)["detail"]
    status, body = raw(server, "POST", "/v1/runs", b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(body)["detail"]
    status, body = raw(server, "POST", "/v1/runs", json.dumps({"request": {}}).encode())
    assert status == 400 and "unknown recipe field 'request'" in json.loads(body)["detail"]
    status, _ = raw(server, "POST", "/v1/runs", b"x" * (49 * 1024 * 1024))
    assert status == 413


def test_cli_remote_gives_the_same_pixels_as_a_local_run(server: ServerProcess, tmp_path: Path) -> None:
    from studio.cli.main import main
    from studio.files.pngmeta import read_png_metadata

    common = [
        "generate",
        "--prompt",
        "brick",
        "--seed",
        "5",
        "--steps",
        "4",
        "--width",
        "64",
        "--height",
        "64",
    ]
    assert main([*common, "--out", str(tmp_path / "local.png"), "-q"]) == 0
    remote_args = ["--remote", server.url, "--token", TOKEN, "--out", str(tmp_path / "remote.png"), "-q"]
    assert main([*common, *remote_args]) == 0
    local, remote = (read_png_metadata(tmp_path / f"{n}.png") for n in ("local", "remote"))
    from PIL import Image

    pixels = [np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("local", "remote")]
    assert np.array_equal(pixels[0], pixels[1])
    assert local.request == remote.request and remote.extras == local.extras


def test_cli_remote_batch_runs_its_cells_on_the_server(server: ServerProcess, tmp_path: Path) -> None:
    """A grid is split into its cells on this side (backend/engines.py); each cell runs on the server."""
    from PIL import Image

    from studio.cli.main import main

    common = [
        "generate",
        "--prompt",
        "brick",
        "--seed",
        "5",
        "--steps",
        "3",
        "--width",
        "32",
        "--height",
        "32",
    ]
    assert main([*common, "--batch", "2", "--out", str(tmp_path / "local.png"), "-q"]) == 0
    remote_args = ["--remote", server.url, "--token", TOKEN, "--out", str(tmp_path / "remote.png"), "-q"]
    assert main([*common, "--batch", "2", *remote_args]) == 0
    for n in (1, 2):
        local, remote = (np.asarray(Image.open(tmp_path / f"{k}-{n}.png")) for k in ("local", "remote"))
        assert np.array_equal(local, remote)


def test_window_runs_on_the_server_chosen_in_the_engine_picker(
    server: ServerProcess, make_window, qtbot, monkeypatch
) -> None:
    from PySide6.QtWidgets import QLineEdit

    from backend.engines import Engines
    from ui.engine_picker import CHOOSE_REMOTE, USE_LOCAL
    from ui.remote_dialog import RemoteDialog

    window = make_window(Engines(device="cpu"), size=64)
    picker, link = window.engine_picker, window.session.remote
    typed = {}

    def connect(dialog: RemoteDialog) -> int:  # the person types the address and token, then Connect
        typed["echo"] = dialog.token.echoMode()
        dialog.url.setText(server.url)
        dialog.token.setText(TOKEN)
        return RemoteDialog.DialogCode.Accepted

    monkeypatch.setattr(RemoteDialog, "exec", connect)
    with qtbot.waitSignal(link.connected, timeout=60_000):
        picker.activated.emit(picker.findData(CHOOSE_REMOTE))
    assert typed["echo"] == QLineEdit.EchoMode.Password
    assert picker.findData("diffusers|tiny-sd") >= 0 and picker.findData("patch|") >= 0
    assert f"on 127.0.0.1:{server.port} · device: cpu" in window.status.device.text()
    shown = [picker.itemText(i) for i in range(picker.count())] + [window.status.message.text()]
    assert not any(TOKEN in text for text in shown)

    window.session.model.set(engine="patch", model="", prompt="brick", steps=4, seed=2)
    with qtbot.waitSignal(window.session.runs.result_added, timeout=120_000) as added:
        window.generate()
    result = added.args[0]
    assert window.canvas.frames_painted >= 1  # the server's previews reached the canvas
    assert np.array_equal(result.image, local_patch(result.request).image)
    layers = len(window.document.layers)
    with qtbot.waitSignal(window.session.runs.run_ended, timeout=120_000) as ended:
        window.session.model.set(steps=60, width=128, height=128)
        window.generate()
        qtbot.waitSignal(window.session.runs.frame, timeout=120_000).wait()
        window.cancel_action.trigger()  # Cancel, as the person presses it
    assert ended.args == ["cancelled"] and len(window.document.layers) == layers
    window.session.model.set(steps=4, width=64, height=64)
    window.session.runs.set_live(True)  # Live: an edit re-renders on the server
    with qtbot.waitSignal(window.session.runs.result_added, timeout=120_000) as live:
        window.session.model.set(seed=3)
    assert live.args[0].request.seed == 3

    again = make_window(Engines(device="cpu"), size=64)  # the next start uses the same server again
    qtbot.waitUntil(lambda: again.session.remote.active, timeout=60_000)
    assert again.engine_picker.findData("diffusers|tiny-sd") >= 0
    with qtbot.waitSignal(link.disconnected):
        picker.activated.emit(picker.findData(USE_LOCAL))
    assert "127.0.0.1" not in window.status.device.text() and picker.findData(CHOOSE_REMOTE) >= 0
    assert link.saved == (server.url, TOKEN)  # remembered for the next time the dialog opens


def test_window_session_on_a_killed_server_reports_it_and_adds_no_layer(
    server: ServerProcess, make_session, qtbot
) -> None:
    """Last: a terminal's Ctrl+C stops the server mid-run; the window says so and keeps its layers."""
    from studio.document import Document

    session = make_session(RemoteEngine(server.url, TOKEN), document=Document(256, 256))
    session.model.set(engine="patch", prompt="brick", steps=60, seed=9)
    layers = len(session.document.layers)
    errors: list[str] = []
    session.runs.error.connect(errors.append)
    results: list[object] = []
    session.runs.result_added.connect(results.append)
    with qtbot.waitSignal(session.runs.frame, timeout=120_000):
        session.runs.generate()
    tree = server.tree()
    assert len(tree) > 3  # studio-serve, Ray's GCS and raylet, the Serve actors
    server.signal_group(signal.SIGINT)  # Ctrl+C in the server's terminal, mid-run
    qtbot.waitUntil(lambda: bool(errors), timeout=120_000)
    assert "lost the connection" in errors[0]
    assert len(session.document.layers) == layers  # nothing half-finished became a layer
    assert results == []
    assert server.proc.wait(120) == 0
    assert server.leftovers() == [], "Ray processes left after Ctrl+C"
