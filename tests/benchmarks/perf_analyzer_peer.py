"""Triton's ``perf_analyzer`` as a peer for the harness benchmarks: find it, make it run, parse it.

The binary ships in the ``tritonclient==2.50.0`` wheel (installed as ``bin/perf_analyzer``). It links
``libb64.so.0d`` and ``libcudart.so.12``, which the nvidia-pytriton wheel carries under mangled names
in ``nvidia_pytriton.libs/``; they are symlinked under their real names into a folder put on
``LD_LIBRARY_PATH`` (docs/FIELD_NOTES.md). A BYTES input given as ``{"b64": ...}`` in ``--input-data`` must
encode the serialised element: a 4-byte little-endian length, then the bytes.
"""

from __future__ import annotations

import base64
import csv
import importlib.metadata
import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_NEEDED = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}


def binary() -> Path:
    for file in importlib.metadata.files("tritonclient") or ():
        if file.name == "perf_analyzer":
            path = Path(str(file.locate())).resolve()
            if path.is_file():
                return path
    # `pip install --target DIR` records the scripts relative to a build prefix; they sit in DIR/bin,
    # which the GPU session puts on PATH (scripts/gpu_session.sh).
    found = shutil.which("perf_analyzer")
    if found:
        return Path(found).resolve()
    raise FileNotFoundError("perf_analyzer is neither in the installed tritonclient wheel nor on PATH")


def library_dir(folder: Path) -> Path:
    """A folder with the two libraries perf_analyzer needs, symlinked from the nvidia-pytriton wheel."""
    dist = importlib.metadata.distribution("nvidia-pytriton")
    libs = Path(str(dist.locate_file("nvidia_pytriton.libs")))
    folder.mkdir(parents=True, exist_ok=True)
    for name, prefix in _NEEDED.items():
        matches = sorted(libs.glob(prefix + "*"))
        if not matches:
            raise FileNotFoundError(f"no {prefix}* in {libs}")
        link = folder / name
        if not link.exists():
            link.symlink_to(matches[0])
    return folder


def input_data(path: Path, input_name: str, images: Sequence[bytes]) -> Path:
    data = [
        {input_name: {"b64": base64.b64encode(struct.pack("<I", len(image)) + image).decode("ascii"), "shape": [1]}}
        for image in images
    ]
    path.write_text(json.dumps({"data": data}))
    return path


@dataclass(frozen=True)
class PeerResult:
    concurrency: int
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    command: str
    wall_s: float
    cpu_fraction: float = 0.0
    """perf_analyzer's own CPU seconds per wall second (its client cost)."""
    csv_columns: str = ""


# perf_analyzer's CSV has no average column: the average is the sum of its latency components (us).
_COMPONENTS = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)


def _average_ms(row: dict[str, str]) -> float:
    if "Avg latency" in row:
        return float(row["Avg latency"]) / 1000
    return sum(float(row.get(name) or 0) for name in _COMPONENTS) / 1000


def run(
    url: str,
    model: str,
    input_name: str,
    images: Sequence[bytes],
    *,
    concurrency: int,
    measurement_interval_ms: int = 4000,
    stability_percent: int = 30,
    max_trials: int = 10,
    extra: Sequence[str] = (),
) -> PeerResult:
    import time

    with tempfile.TemporaryDirectory(prefix="fashionbox-pa-") as tmp:
        libs = library_dir(Path(tmp) / "libs")
        data = input_data(Path(tmp) / "data.json", input_name, images)
        out = Path(tmp) / "out.csv"
        command = [
            str(binary()),
            "-m",
            model,
            "-u",
            url,
            "-i",
            "grpc",
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            "--input-data",
            str(data),
            "-s",
            str(stability_percent),
            "--measurement-interval",
            str(measurement_interval_ms),
            "--max-trials",
            str(max_trials),
            "-f",
            str(out),
            *extra,
        ]
        env = dict(
            os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(libs), os.environ.get("LD_LIBRARY_PATH")]))
        )
        t0, before = time.perf_counter(), os.times()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        wall, after = time.perf_counter() - t0, os.times()
        cpu_s = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        if done.returncode != 0:
            raise RuntimeError(
                f"perf_analyzer failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        with out.open(newline="") as f:
            (row,) = list(csv.DictReader(f))
        header = " ".join(row)
    # Recorded without local folders: the binary and temporary files by name only.
    shown = " ".join([Path(command[0]).name] + [Path(c).name if c.startswith(tmp) else c for c in command[1:]])
    return PeerResult(
        concurrency=int(row["Concurrency"]),
        throughput_rps=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1000,
        p90_ms=float(row["p90 latency"]) / 1000,
        p95_ms=float(row["p95 latency"]) / 1000,
        p99_ms=float(row["p99 latency"]) / 1000,
        avg_ms=_average_ms(row),
        command=shown,
        wall_s=wall,
        cpu_fraction=cpu_s / wall,
        csv_columns=header,
    )


def busy_cores(interval_s: float = 1.0) -> float:
    """Cores busy on the whole machine over ``interval_s`` (from /proc/stat), for spotting other work."""
    import time

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values), idle

    total0, idle0 = sample()
    time.sleep(interval_s)
    total1, idle1 = sample()
    cores = os.cpu_count() or 1
    return cores * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def wait_until_quiet(max_busy_cores: float = 0.3, max_wait_s: float = 300.0) -> float:
    """Wait (up to ``max_wait_s``) until the machine is nearly idle; returns the last busy-core reading."""
    import time

    deadline = time.monotonic() + max_wait_s
    busy = busy_cores()
    while busy > max_busy_cores and time.monotonic() < deadline:
        print(f"  machine busy ({busy:.2f} cores used by other work); waiting", flush=True)
        time.sleep(5)
        busy = busy_cores()
    return busy


def jiffies(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime of the process itself


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        for child in children.get(pid, []):
            out.append(child)
            stack.append(child)
    return out


class ForeignLoad:
    """Cores used by processes outside this one's tree during a measurement (another engineer's benchmark).

    Machine-wide busy time from /proc/stat minus this process (and its reaped children, such as
    perf_analyzer) and its live descendants (the server and its python-backend stubs).
    """

    def __init__(self) -> None:
        self._start: tuple[float, int, int, float, dict[int, int]] | None = None

    @staticmethod
    def _machine() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def start(self) -> None:
        import time

        total, idle = self._machine()
        tree = {pid: jiffies(pid) for pid in descendants(os.getpid())}
        self._start = (time.monotonic(), total, idle, self._own_s(), tree)

    def stop(self) -> float:
        import time

        assert self._start is not None
        t0, total0, idle0, own0, tree0 = self._start
        total, idle = self._machine()
        wall = time.monotonic() - t0
        hz = os.sysconf("SC_CLK_TCK")
        cores = os.cpu_count() or 1
        busy_s = (1 - (idle - idle0) / max(total - total0, 1)) * wall * cores
        tree_s = sum(max(jiffies(pid) - tree0.get(pid, 0), 0) for pid in descendants(os.getpid())) / hz
        mine = self._own_s() - own0 + tree_s
        return max(busy_s - mine, 0.0) / max(wall, 1e-9)
