"""`studio-serve`: serve the studio's engines over HTTP from a Ray Serve application.

With no arguments it starts a private Ray on this machine, bound to the loopback interface, serves on
http://127.0.0.1:8188 and prints `ready URL` on stdout once it accepts requests. `--address` joins an
existing Ray cluster instead. Ctrl+C or SIGTERM stops the application and, when it started its own Ray,
every Ray process with it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from backend import strict_json, wire
from backend.cli_numbers import amount
from backend.errors import StudioError

PROG = "studio-serve"
DEFAULT_PORT = 8188
SHUTDOWN_WAIT = 30.0  # seconds Serve gets to stop its replicas before Ray is shut down under it


class _Stop(Exception):
    """SIGTERM arrived: unwind like Ctrl+C."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise StudioError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG, description="Serve the studio's engines (patch and diffusers) over HTTP with Ray Serve."
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    p.add_argument(
        "--token", help="the access token clients must send (default: the saved one, made at first start)"
    )
    p.add_argument("--token-file", metavar="PATH", help=f"where the token is kept (default {_token_path()})")
    p.add_argument(
        "--address", help="join this Ray cluster (e.g. auto, or HEAD:6379) instead of starting Ray"
    )
    p.add_argument("--num-cpus", type=amount, help="CPUs the private Ray may use (default: all)")
    p.add_argument("--num-gpus", type=amount, help="GPUs the private Ray may use (default: all it finds)")
    p.add_argument("--replicas", type=int, default=None, help="engine replicas (default 1)")
    p.add_argument("--min-replicas", type=int, help="autoscaling: fewest engine replicas")
    p.add_argument("--max-replicas", type=int, help="autoscaling: most engine replicas")
    p.add_argument(
        "--gpus-per-replica",
        type=amount,
        help="GPUs each replica reserves; 0.5 puts two on a GPU (default 1 with GPUs)",
    )
    p.add_argument(
        "--cpus-per-replica", type=amount, default=1.0, help="CPUs each replica reserves (default 1)"
    )
    p.add_argument(
        "--models-per-replica", type=int, default=2, help="models each replica keeps loaded (default 2)"
    )
    p.add_argument(
        "--model-folder", action="append", default=[], metavar="DIR", help="serve the models in DIR"
    )
    p.add_argument(
        "--references", action="append", default=[], metavar="DIR", help="serve a reference folder"
    )
    p.add_argument("--no-hub", action="store_true", help="do not serve the models in the Hugging Face cache")
    p.add_argument("--device", help="engine device on each replica: cpu, cuda, mps (default: automatic)")
    p.add_argument("--dtype", help="fp16, bf16 or fp32 (default: fp16 on a GPU, fp32 on the CPU)")
    p.add_argument("--taesd", metavar="DIR", help="a local TAESD folder for better previews")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl+C or SIGTERM; exit status 0 after a clean stop, 1 on an error, 2 bad usage."""
    try:
        args = _parser().parse_args(argv)
        return serve_forever(args)
    except KeyboardInterrupt:
        return 0
    except StudioError as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2 if "--help" in str(exc) else 1


def serve_forever(args: argparse.Namespace) -> int:
    """Start Ray (or join it), deploy, print `ready URL`, wait for a signal, then stop what was started."""
    token = args.token or _saved_token(Path(args.token_file) if args.token_file else _token_path())
    if len(token) < 16:
        raise StudioError("the token must be at least 16 characters")
    own_ray = args.address is None
    if own_ray:
        # Ray resolves 127.0.0.1 to the machine's address unless told it is not clustering; read when ray is
        # first imported, this keeps its own ports (GCS, raylet, object manager) on the loopback interface.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ.pop("RAY_ADDRESS", None)
    from backend.serve import Scaling, ServeOptions, catalogue

    models = catalogue(tuple(args.model_folder), tuple(args.references), include_hub=not args.no_hub)
    signal.signal(signal.SIGTERM, _raise_stop)
    # Ray's GCS and raylet share this process group: a terminal's Ctrl+C would reach them too and kill them
    # under the clean-up. They inherit an ignored SIGINT; this process alone answers Ctrl+C and stops them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    temp_dir = tempfile.mkdtemp(prefix="studio-ray-") if own_ray else None
    # stdout carries the one `ready URL` line a script waits for; what Ray relays from its processes goes
    # to stderr with the rest of the log.
    stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        import ray
        from ray import serve

        if own_ray:
            ray.init(
                address="local",
                num_cpus=args.num_cpus,
                num_gpus=args.num_gpus,
                include_dashboard=False,
                object_store_memory=128 * 1024 * 1024,
                _temp_dir=temp_dir,
                configure_logging=False,
                logging_level="warning",
            )
        else:
            ray.init(address=args.address, configure_logging=False, logging_level="warning")
        signal.signal(signal.SIGTERM, _raise_stop)  # ray.init put its own in place (sys.exit(15))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        gpus = args.gpus_per_replica
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        scaling = Scaling(args.replicas, args.min_replicas, args.max_replicas, args.cpus_per_replica, gpus)
        options = ServeOptions(
            token=token,
            models=models,
            device=args.device,
            dtype=args.dtype,
            taesd=args.taesd,
            models_per_replica=args.models_per_replica,
            scaling=scaling.describe(),
        )
        from backend.serve import APP_NAME, build_app

        serve.start(
            http_options={"host": args.host, "port": args.port},
            proxy_location="HeadOnly",
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )
        serve.run(build_app(options, scaling), name=APP_NAME, route_prefix="/", blocking=False)
        url = f"http://{_url_host(args.host)}:{args.port}"
        device = _wait_until_answering(args.host, args.port, token)
        print(
            f"{PROG}: serving {len(models)} models on {device}; stop with Ctrl+C", file=sys.stderr, flush=True
        )
        print(f"ready {url}", file=stdout, flush=True)
        signal.pause() if hasattr(signal, "pause") else _sleep_forever()
        return 0
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop(own_ray)
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        sys.stdout = stdout


def _stop(own_ray: bool) -> None:
    """Remove the application; shut the private Ray down, and end any of its processes still running."""
    ray: Any = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    import psutil  # a dependency of Ray
    from ray import serve

    from backend.serve import APP_NAME

    # The whole tree while the raylet still holds it: the replicas are the raylet's children.
    started = psutil.Process().children(recursive=True) if own_ray else []
    remove = serve.shutdown if own_ray else lambda: serve.delete(APP_NAME)
    worker = threading.Thread(target=_quietly, args=(remove,), name="serve-shutdown", daemon=True)
    worker.start()
    worker.join(SHUTDOWN_WAIT)  # a dead raylet makes Serve retry for minutes: give it a bounded time
    ray.shutdown()
    if started:
        _, alive = psutil.wait_procs(started, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


def _quietly(call: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):
        call()


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def _sleep_forever() -> None:
    while True:
        time.sleep(3600)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _wait_until_answering(host: str, port: int, token: str, timeout: float = 120.0) -> str:
    """Block until the gateway answers /v1/info through the HTTP proxy; the device it reports."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(_url_host(host).strip("[]"), port, timeout=10)
        try:
            conn.request("GET", wire.INFO_PATH, headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            body = response.read()
            if response.status == 200:
                return str(strict_json.loads(body).get("device", "?"))
            last = f"HTTP {response.status}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        finally:
            conn.close()
        time.sleep(0.25)
    raise StudioError(f"the server did not answer on port {port} within {timeout:.0f} s ({last})")


def _token_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "studio" / "serve-token"


def _saved_token(path: Path) -> str:
    """The token kept in `path`; made, saved (owner-only) and printed once when there is none."""
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text(encoding="utf-8").strip()
        if token:
            print(f"{PROG}: clients need the token kept in {path}", file=sys.stderr)
            return token
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    print(f"{PROG}: new access token (shown once, kept in {path}): {token}", file=sys.stderr, flush=True)
    return token


if __name__ == "__main__":
    sys.exit(main())
