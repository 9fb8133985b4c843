"""The studio's engines served from a Ray Serve application: a gateway and multiplexed engine replicas.

    client ──HTTP──▶ Serve proxy ──▶ Gateway (FastAPI ingress, one replica) ──handle──▶ EngineWorker × N

The **gateway** checks the bearer token on every call, reads and validates each request exactly as the
local engine would (`Request.validate`, the image size and decompression limits), lets a client name only
the models the server lists, keeps newest-wins per client (a client's new run cancels its previous one) and
streams the replica's events back as newline-delimited JSON (backend/wire.py). It holds the table of runs,
so it runs as a single replica; it only forwards bytes.

Each **engine replica** owns one engine thread (torch, the device and the loaded pipelines stay on it, as in
the window's EngineHost) and keeps up to `models_per_replica` models loaded: Serve's model multiplexing
sends a request for model X to a replica that already has X. Replicas, GPUs per replica and autoscaling
bounds are Serve's own deployment options (`build_app`). A cancelled run (by id, by a newer request from the
same client, or by the client hanging up) sets the engine's cancel Event, so it stops within one step.
"""

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import TaskCancelledError

from backend import wire
from backend.device_memory import free_memory
from backend.errors import StudioError, describe_error
from backend.request import ENGINES, Request

log = logging.getLogger(__name__)
APP_NAME = "studio"
GATEWAY = "Gateway"
WORKER = "EngineWorker"
KEPT_RUNS = 256  # finished runs the gateway remembers for status and cancel calls
_RUN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_QUIET = {"log_level": "WARNING", "enable_access_log": False}


def _keep_replica_ports_on_loopback() -> None:
    """In a private loopback Ray, bind each replica's inter-deployment gRPC port to 127.0.0.1 too.

    Serve 2.60 binds it to [::] whatever the node address (ray/serve/_private/replica.py), the one port of a
    private server that would face the network. studio-serve marks a private Ray with the variable below
    before Ray starts; every replica inherits it. In a cluster nothing changes.
    """
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        return
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "_studio_loopback", False):
        return

    def loopback(server: Any, address: str) -> int:
        return bind(server, address.replace("[::]", "127.0.0.1"))

    loopback._studio_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = loopback


_keep_replica_ports_on_loopback()


# ------------------------------------------------------------------------------------------ what is served


@dataclass(frozen=True)
class ServedModel:
    """A model the server lists: clients name it by `engine` and `name`; `path` stays on the server."""

    engine: str
    name: str
    path: str
    kind: str

    @property
    def key(self) -> str:
        """The multiplexed model id: Serve routes runs with the same key to replicas that hold it."""
        return f"{self.engine}|{self.name}"

    def public(self) -> dict[str, str]:
        """What a client sees: no server paths."""
        return {"engine": self.engine, "name": self.name, "kind": self.kind}


@dataclass(frozen=True)
class ServeOptions:
    """What the gateway and every replica need to know (pickled into Ray; keep it small)."""

    token: str
    models: tuple[ServedModel, ...]
    device: str | None = None
    dtype: str | None = None
    taesd: str | None = None
    models_per_replica: int = 2
    preview_side: int = wire.PREVIEW_SIDE
    scaling: dict[str, Any] = field(default_factory=dict)  # shown in /v1/info

    def admit(self, request: Request) -> ServedModel:
        """The listed model a request runs on; StudioError for anything that names files on the server."""
        # ControlNets and LoRAs name weight files; until the server lists them, a client cannot name any.
        if getattr(request, "controls", ()) or getattr(request, "loras", ()):
            raise StudioError("this server does not serve ControlNets or LoRAs; run those on a local engine")
        if request.grid is not None:
            raise StudioError("a grid runs cell by cell: send each cell as its own request")
        return self.find(request.engine, request.model)

    def find(self, engine: str, name: str) -> ServedModel:
        """The listed model a request names; StudioError when the server does not list it."""
        for m in self.models:
            if m.engine == engine and m.name == name:
                return m
        names = ", ".join(repr(m.name or "(built-in references)") for m in self.models if m.engine == engine)
        raise StudioError(
            f"model {name!r} is not served here; this server's {engine} models are: {names or 'none'}"
        )


def catalogue(
    model_folders: tuple[str, ...] = (), reference_folders: tuple[str, ...] = (), include_hub: bool = True
) -> tuple[ServedModel, ...]:
    """The models a server lists: the built-in references, reference folders, safetensors diffusers models.

    Pickle checkpoints are not listed (the engines refuse them anyway). Names are unique: the first model
    found under a name keeps it.
    """
    from backend.models import discover
    from backend.references import DEFAULT_FOLDER

    found: dict[tuple[str, str], ServedModel] = {}

    def add(m: ServedModel) -> None:
        found.setdefault((m.engine, m.name), m)

    add(ServedModel("patch", "", str(DEFAULT_FOLDER), "built-in"))
    for folder in reference_folders:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise StudioError(f"reference folder {folder}: no such folder")
        add(ServedModel("patch", path.name, str(path), "references"))
    for info in discover(tuple(model_folders), include_hub=include_hub):
        if not info.pickle:
            add(ServedModel("diffusers", info.name, info.path, info.kind))
    return tuple(found.values())


# ----------------------------------------------------------------------------------------- engine replicas


class _Loaded:
    """One engine holding one served model on a replica (what the multiplexer keeps and evicts)."""

    def __init__(self, model: ServedModel, options: ServeOptions) -> None:
        from backend.engines import Engines

        self.model = model
        engine_options = {"device": options.device or _default_device(), "dtype": options.dtype}
        if options.taesd:
            engine_options["taesd"] = options.taesd
        engine: Any = Engines(**{k: v for k, v in engine_options.items() if v}).get(model.engine)
        if model.engine == "diffusers":
            # Loaded from the server's path but named as clients name it, so recipes carry no server paths.
            engine.load(model.path).name = model.name
        else:
            engine.references(model.path)
        self.engine = engine

    def prepare(self, request: Request) -> Request:
        """The request as this replica's engine takes it (the patch engine reads its folder by path)."""
        if self.model.engine == "patch":
            return dataclasses.replace(request, model=self.model.path)
        return request

    def __del__(self) -> None:  # Serve calls this when it evicts the model: free the device memory now
        self.engine = None
        free_memory()


def _default_device() -> str:
    from backend.devices import pick_device

    return str(pick_device(None))  # Ray hides the GPUs a replica was not given (CUDA_VISIBLE_DEVICES)


# A stopping server cancels its runs after a short grace (Serve waits 20 s by default): the clients get a
# clear error at once instead of a run that stalls.
_STOP_GRACE_S = 2.0


@serve.deployment(
    name=WORKER, max_ongoing_requests=1, graceful_shutdown_timeout_s=_STOP_GRACE_S, logging_config=_QUIET
)
class EngineWorker:
    """An engine replica: one engine thread, multiplexed models, runs streamed as wire lines."""

    def __init__(self, options: ServeOptions) -> None:
        from backend.devices import describe, pick_device

        self.options = options
        self.device = describe(pick_device(options.device or None))
        self.replica = serve.get_replica_context().replica_id.unique_id
        # One thread owns torch and the device; loading and every run happen on it, one at a time.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-engine")
        self._gateway: Any = None

        async def load(key: str) -> _Loaded:
            engine, _, name = key.partition("|")
            model = options.find(engine, name)
            return await asyncio.get_running_loop().run_in_executor(self._thread, _Loaded, model, options)

        self.load = serve.multiplexed(max_num_models_per_replica=options.models_per_replica)(load)

    async def describe(self) -> dict[str, str]:
        """This replica's device and id."""
        return {"device": self.device, "replica": self.replica}

    async def run(self, request: Request, run_id: str) -> AsyncIterator[bytes]:
        """Run one request on the engine thread, yielding its event lines; stop within a step if cancelled."""
        loaded = await self.load(serve.get_multiplexed_model_id())
        yield wire.line("started", device=self.device, replica=self.replica)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        cancel = threading.Event()
        outcome = {"state": "failed", "steps": 0}

        def put(item: bytes | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        job = loop.run_in_executor(self._thread, self._produce, loaded, request, cancel, put, outcome)
        try:
            while (chunk := await queue.get()) is not None:
                yield chunk
        finally:
            cancel.set()
            while not job.done():  # the engine thread stops at its next step boundary
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(job)
            await self._report(run_id, outcome)

    def _produce(
        self,
        loaded: _Loaded,
        request: Request,
        cancel: threading.Event,
        put: Callable[[bytes | None], None],
        outcome: dict[str, Any],
    ) -> None:
        """The engine thread's part of a run: iterate the engine, encode each event, hand it to the loop."""
        from backend.events import Done, StepEvent

        events = None
        try:
            events = loaded.engine.generate(loaded.prepare(request), cancel)
            for event in events:
                if isinstance(event, StepEvent):
                    outcome["steps"] = event.step
                if cancel.is_set():
                    break
                put(wire.encode_event(event, self.options.preview_side))
                if isinstance(event, Done):
                    outcome["state"] = "done"
        except Exception as exc:  # the replica must survive anything a run raises
            if not isinstance(exc, StudioError):
                log.error("generation failed", exc_info=exc)
            put(wire.line("error", message=describe_error(exc)))
            free_memory()
        finally:
            if events is not None and hasattr(events, "close"):
                with contextlib.suppress(Exception):
                    events.close()
            if outcome["state"] != "done" and cancel.is_set():
                outcome["state"] = "cancelled"
            put(None)

    async def _report(self, run_id: str, outcome: dict[str, Any]) -> None:
        try:
            if self._gateway is None:
                self._gateway = serve.get_deployment_handle(GATEWAY, app_name=APP_NAME)
            await self._gateway.run_ended.remote(run_id, outcome["state"], outcome["steps"])
        except Exception:  # the gateway is gone (shutting down): nobody is waiting for the report
            log.debug("could not report the end of run %s", run_id, exc_info=True)


# ---------------------------------------------------------------------------------------------- gateway

http = FastAPI(title="studio", docs_url=None, redoc_url=None, openapi_url=None)


@dataclass
class _Run:
    """One run as the gateway tracks it."""

    id: str
    client: str
    model: str
    response: Any  # the DeploymentResponseGenerator from the engine replica
    started: bool = False
    state: str = "queued"  # queued, running, done, failed, cancelled
    steps: int = 0
    cancel_reason: str = ""
    created: float = field(default_factory=time.time)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, state: str, steps: int | None = None) -> None:
        if not self.ended.is_set():
            self.state = state
            if steps is not None:
                self.steps = steps
            self.ended.set()

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "steps": self.steps, "model": self.model}


@serve.deployment(
    name=GATEWAY,
    num_replicas=1,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0},
    graceful_shutdown_timeout_s=_STOP_GRACE_S,
    logging_config=_QUIET,
)
@serve.ingress(http)
class Gateway:
    """The HTTP face of the server: token, validation, newest-wins per client, streaming."""

    def __init__(self, worker: Any, options: ServeOptions) -> None:
        self.worker = worker
        self.options = options
        self.runs: OrderedDict[str, _Run] = OrderedDict()
        self.latest: dict[str, _Run] = {}  # each client's newest run
        self.accepted = 0
        self.device = ""

    def _authorize(self, request: HttpRequest) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), self.options.token):
            raise HTTPException(
                401,
                "a valid access token is needed (Authorization: Bearer TOKEN)",
                {"WWW-Authenticate": "Bearer"},
            )

    @http.get(wire.INFO_PATH)
    async def info(self, request: HttpRequest) -> dict[str, Any]:
        """Engines, models and the replicas' device."""
        self._authorize(request)
        if not self.device:
            with contextlib.suppress(Exception):
                self.device = (await asyncio.wait_for(self.worker.describe.remote(), 5.0))["device"]
        return {
            "server": "studio",
            "engines": list(ENGINES),
            "models": [m.public() for m in self.options.models],
            "device": self.device or "unknown (every replica is busy)",
            "scaling": self.options.scaling,
            "runs": self.accepted,
        }

    @http.post(wire.RUNS_PATH)
    async def submit(self, request: HttpRequest, client: str = "", id: str = "") -> StreamingResponse:
        """Start a run and stream its events; a client's newer run cancels its older one."""
        self._authorize(request)
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > wire.MAX_BODY_BYTES:
            raise HTTPException(413, f"the request is {size} bytes; the limit is {wire.MAX_BODY_BYTES}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > wire.MAX_BODY_BYTES:
                raise HTTPException(413, f"the request is over the limit of {wire.MAX_BODY_BYTES} bytes")
        try:
            job = wire.decode_request(bytes(body))
            model = self.options.admit(job)
        except StudioError as exc:
            raise HTTPException(400, str(exc)) from None
        run_id = id or uuid.uuid4().hex
        if not _RUN_ID.match(run_id) or not _RUN_ID.match(client or "-"):
            raise HTTPException(400, "run and client ids are 1 to 64 letters, digits, '-' or '_'")
        if run_id in self.runs:
            raise HTTPException(409, f"run {run_id} exists already")
        previous = self.latest.get(client) if client else None
        if previous is not None and not previous.ended.is_set():
            self._cancel(previous, "superseded by a newer request from the same client")
        response = self.worker.options(stream=True, multiplexed_model_id=model.key).run.remote(job, run_id)
        run = _Run(run_id, client, model.name, response)
        self._remember(run)
        if client:
            self.latest[client] = run
        self.accepted += 1
        return StreamingResponse(self._stream(run), media_type="application/x-ndjson")

    async def _stream(self, run: _Run) -> AsyncIterator[bytes]:
        yield wire.line("accepted", id=run.id)
        try:
            async for chunk in run.response:
                if not run.started:
                    run.started, run.state = True, "running"
                    if not self.device and chunk.startswith(b'{"type":"started"'):
                        self.device = wire.parse_line(chunk).get("device", "")
                yield chunk
            run.state = "finishing"
        except (asyncio.CancelledError, TaskCancelledError):
            task = asyncio.current_task()
            if not run.cancel_reason or (task is not None and task.cancelling()):
                raise  # the client hung up: nothing to send; the finally below stops the engine
            yield wire.line("cancelled", reason=run.cancel_reason)
        except Exception as exc:  # the replica died or could not be reached
            log.warning("run %s failed in the replica: %s", run.id, exc)
            run.end("failed")
            yield wire.line(
                "error", message=f"the server lost the engine replica running this ({_short(exc)})"
            )
        finally:
            if not run.ended.is_set():
                if run.state != "finishing":
                    self._cancel(run, run.cancel_reason or "the client disconnected")
                if not run.started:  # cancelled before a replica took it: no replica will report
                    run.end("cancelled")

    def _cancel(self, run: _Run, reason: str) -> None:
        if not run.cancel_reason:
            run.cancel_reason = reason
        run.response.cancel()

    def _remember(self, run: _Run) -> None:
        self.runs[run.id] = run
        while len(self.runs) > KEPT_RUNS:
            oldest = next(iter(self.runs.values()))
            if not oldest.ended.is_set():
                break
            del self.runs[oldest.id]
            if self.latest.get(oldest.client) is oldest:
                del self.latest[oldest.client]

    async def run_ended(self, run_id: str, state: str, steps: int) -> None:
        """Called by the engine replica once its engine thread has stopped: the run's final state."""
        run = self.runs.get(run_id)
        if run is not None:
            run.end(state, steps)

    @http.get(wire.RUNS_PATH + "/{run_id}")
    async def status(self, request: HttpRequest, run_id: str) -> dict[str, Any]:
        """A run's state and the steps its engine computed."""
        self._authorize(request)
        return self._find(run_id).status()

    @http.post(wire.RUNS_PATH + "/{run_id}/cancel")
    async def cancel(self, request: HttpRequest, run_id: str, wait: float = 10.0) -> JSONResponse:
        """Cancel a run; with `wait` > 0, answer once its engine has stopped (or after `wait` seconds)."""
        self._authorize(request)
        run = self._find(run_id)
        if not run.ended.is_set():
            self._cancel(run, "cancelled by the client")
            if wait > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(run.ended.wait(), min(wait, 60.0))
        return JSONResponse(run.status())

    def _find(self, run_id: str) -> _Run:
        run = self.runs.get(run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id} on this server")
        return run


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# -------------------------------------------------------------------------------------------- building


@dataclass(frozen=True)
class Scaling:
    """How many engine replicas and what each one gets; maps onto Serve's deployment options."""

    replicas: int | None = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0

    def deployment_options(self) -> dict[str, Any]:
        """Keyword options for `EngineWorker.options`."""
        actor = {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica}
        if self.min_replicas is not None or self.max_replicas is not None:
            low = self.min_replicas if self.min_replicas is not None else 1
            high = self.max_replicas if self.max_replicas is not None else max(low, 1)
            if high < max(low, 1):
                raise StudioError(f"--max-replicas ({high}) is below --min-replicas ({low})")
            autoscaling = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": 1}
            return {"autoscaling_config": autoscaling, "ray_actor_options": actor}
        return {"num_replicas": self.replicas or 1, "ray_actor_options": actor}

    def describe(self) -> dict[str, Any]:
        """For /v1/info."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def build_app(options: ServeOptions, scaling: Scaling) -> Any:
    """The Serve application: the gateway bound to the engine deployment with the scaling asked for."""
    # Serve's decorators turn the classes into Deployments, which a type checker cannot see.
    worker_deployment: Any = EngineWorker
    gateway_deployment: Any = Gateway
    worker = worker_deployment.options(**scaling.deployment_options()).bind(options)
    return gateway_deployment.bind(worker, options)
