"""Open one file in a child process under a memory and a time limit, and report what opening it cost.

How the limits are applied. `resource.setrlimit(RLIMIT_AS)` limits *virtual* memory, and the imports alone
(Qt's libraries, numpy and its BLAS, Pillow) map a few hundred MB of it, so a fixed limit would measure
the imports, not the file. So a server process (`python tests/hostile_child.py serve`, started by
`Prober`) imports the loaders once, and for each file forks a child. The child first reads its own
VmSize and VmRSS from /proc/self/status: that is the baseline, everything the imports mapped. It then
sets RLIMIT_AS to baseline + budget and RLIMIT_CPU to the time limit, opens the file as the window does
(read it, build the document, composite it once), and reports the outcome with VmPeak and VmHWM above
the baseline (a forked child starts its own peaks, so they are the file's cost alone) and its wall and
CPU time. Time is limited in CPU seconds, which a busy shared machine does not inflate; a wall-clock
guard (60 s) still kills a child that hangs without using the CPU.

Outcomes: "opened", "refused" (the project's own StudioError), "escaped" (any other exception: a bug),
"memory" (MemoryError: the budget was hit), "time" (killed by SIGXCPU), "crashed" (killed otherwise,
for instance by an allocation failing inside C code).

The rule (issue 9): a refusal costs at most 1 GiB and 10 s; opening costs at most
`opening_budget(...)`, the larger of 1 GiB and 1.5x the uint8 RGBA pixels the file honestly declares
(one canvas for the picture plus every layer at its own size).
"""

from __future__ import annotations

import io
import json
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 1 << 30
REFUSAL_BUDGET = GIB
REFUSAL_CPU_S = 10.0
WALL_GUARD_S = 60.0
KINDS = ("studio", "ora", "image", "png-info", "references")


@dataclass(frozen=True)
class Cost:
    """What opening one file did and cost (memory in bytes above the child's baseline)."""

    outcome: str
    message: str
    vm_peak: int  # peak virtual memory added: what RLIMIT_AS limits
    rss_peak: int  # peak resident memory added: what the machine actually had to hold
    wall_s: float
    cpu_s: float
    baseline_vm: int = 0

    def summary(self) -> str:
        """`peak MB, seconds` for bench/FAULTS.md (resident memory; virtual in brackets)."""
        return f"{self.rss_peak / 2**20:.0f} MB ({self.vm_peak / 2**20:.0f} MB virtual), {self.wall_s:.2f} s"


def opening_budget(declared_bytes: int) -> int:
    """What opening a file may cost: the larger of 1 GiB and 1.5x the pixels it honestly declares."""
    return max(GIB, int(1.5 * declared_bytes))


def declared_bytes(path: str | Path) -> int:
    """uint8 RGBA bytes a .studio or .ora file honestly declares: one canvas plus every layer at its size.

    Reads only the manifest or stack.xml and the 33-byte PNG headers; for files built by the tests.
    """
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        if path.suffix.lower() == ".ora":
            root = ET.fromstring(archive.read("stack.xml"))
            canvas = int(root.get("w", "0")) * int(root.get("h", "0"))
            names = [el.get("src", "") for el in root.iter("layer")]
        else:
            manifest = json.loads(archive.read("manifest.json"))
            canvas = int(manifest["canvas"]["width"]) * int(manifest["canvas"]["height"])
            names = [entry["image"] for entry in manifest["layers"]]
        layers = 0
        for name in names:
            with archive.open(name) as member:
                width, height = struct.unpack(">II", member.read(24)[16:24])
            layers += width * height
    return 4 * (canvas + layers)


# ------------------------------------------------------------------------------------------ test side


class Prober:
    """A server process that opens files in forked, limited children; one per test module."""

    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent,
            env=env,
        )
        assert self._line(120.0) == {"ready": True}

    def open(
        self, path: str | Path, kind: str, budget: int = REFUSAL_BUDGET, cpu_s: float = REFUSAL_CPU_S
    ) -> Cost:
        """Open `path` as `kind` in a fresh child limited to `budget` bytes and `cpu_s` CPU seconds."""
        assert kind in KINDS, kind
        request = {"path": str(path), "kind": kind, "budget": int(budget), "cpu_s": float(cpu_s)}
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        return Cost(**self._line(WALL_GUARD_S + 30.0))

    def _line(self, timeout: float) -> dict:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.close()
            raise AssertionError("the probe server stopped answering")
        return json.loads(line)

    def close(self) -> None:
        """Stop the server (it exits when its input closes)."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()


# ---------------------------------------------------------------------------------------- server side


def _status() -> dict[str, int]:
    """VmPeak, VmSize, VmHWM and VmRSS of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmPeak", "VmSize", "VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out


def open_as_window(path: str, kind: str) -> str:
    """Open `path` the way the window (or the CLI) does; returns a short description of what opened."""
    import numpy as np

    from studio.document import Document
    from studio.files.project import ProjectData, load_project

    if kind in ("studio", "ora"):
        if kind == "ora":
            from studio.files.ora import import_ora

            width, height, layers = import_ora(path)
            data = ProjectData(width, height, layers, np.zeros((height, width), np.uint8))
        else:
            data = load_project(path)
        document = Document(8, 8)
        data.apply_to(document)
        document.composite()
        notes = "".join(f"; {note}" for note in data.notes)
        return f"{data.width}×{data.height}, {len(data.layers)} layers{notes}"
    if kind == "image":
        from backend.images import load_picture

        picture = load_picture(path)
        return f"{picture.width}×{picture.height}"
    if kind == "png-info":
        from studio.files.pngmeta import read_png_metadata

        meta = read_png_metadata(path)
        return f"{meta.size[0]}×{meta.size[1]}; notes: {'; '.join(meta.notes) or 'none'}"
    from backend.references import load_references

    refs = load_references(path)
    return f"{len(refs.references)} references; skipped: {', '.join(getattr(refs, 'skipped', ())) or 'none'}"


def _child(request: dict, out: int) -> None:
    from backend.errors import StudioError

    base = _status()
    resource.setrlimit(resource.RLIMIT_AS, (base["VmSize"] + request["budget"], resource.RLIM_INFINITY))
    cpu = max(1, round(request["cpu_s"] + resource.getrusage(resource.RUSAGE_SELF).ru_utime))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        outcome, message = "opened", open_as_window(request["path"], request["kind"])
    except StudioError as exc:
        outcome, message = "refused", str(exc)
    except MemoryError as exc:
        outcome, message = "memory", f"MemoryError: {exc}"
    except Exception as exc:  # noqa: BLE001 - what this harness exists to report
        outcome, message = "escaped", f"{exc.__class__.__name__}: {exc}"
    wall, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    peak = _status()
    result = Cost(
        outcome,
        message[:2000],
        max(0, peak["VmPeak"] - base["VmSize"]),
        max(0, peak["VmHWM"] - base["VmRSS"]),
        round(wall, 4),
        round(cpu_s, 4),
        base["VmSize"],
    )
    os.write(out, json.dumps(asdict(result)).encode())


def _run_one(request: dict) -> dict:
    read_end, write_end = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the server loop
        os.close(read_end)
        code = 0
        try:
            _child(request, write_end)
        except BaseException:  # noqa: BLE001 - a child must never fall back into the server's loop
            code = 3
        os._exit(code)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = start + WALL_GUARD_S
    killed = False
    while True:
        left = deadline - time.perf_counter()
        ready, _, _ = select.select([read_end], [], [], max(left, 0))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status, usage = os.wait4(pid, 0)
    if chunks and not killed:
        return json.loads(b"".join(chunks))
    wall = time.perf_counter() - start
    if killed:
        outcome, message = "time", f"still running after {WALL_GUARD_S:.0f} s (wall clock)"
    elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
        outcome, message = "time", f"killed after {request['cpu_s']:.0f} s of CPU time"
    else:
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        outcome, message = "crashed", f"the child died ({how}) without a result"
    rss = max(0, usage.ru_maxrss * 1024 - _status()["VmRSS"])  # the server's RSS is about the baseline
    return asdict(Cost(outcome, message, 0, rss, round(wall, 4), round(usage.ru_utime + usage.ru_stime, 4)))


def serve() -> None:
    """Import the loaders, then answer one JSON request per input line until the input closes."""
    import numpy  # noqa: F401 - imported here so every child's baseline holds it
    import PIL.Image  # noqa: F401

    import backend.references  # noqa: F401
    import studio.files.ora  # noqa: F401
    import studio.files.pngmeta  # noqa: F401
    import studio.files.project  # noqa: F401

    stdout = io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), encoding="utf-8", line_buffering=True)
    print(json.dumps({"ready": True}), file=stdout)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_run_one(json.loads(line))), file=stdout)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        raise SystemExit("usage: hostile_child.py serve")


try:  # a pytest plugin too (tests/conftest.py): one probe server per test module that asks for it
    import pytest

    @pytest.fixture(scope="module")
    def prober():
        """Opens files in forked children under memory and time limits."""
        server = Prober()
        yield server
        server.close()

except ImportError:  # the server side runs without pytest
    pass
