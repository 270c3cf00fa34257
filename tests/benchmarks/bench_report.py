"""What every benchmark writes around its figures: the command that made them, the machine, the time.

    write_report(args.out, __file__, argv, {"summary": summary, "runs": runs})

writes ``{"command": ..., "machine": ..., <fields>, "unix_time": ...}`` as indented JSON, creating
the folder; ``machine()`` is the description of this machine, with extra keys where a benchmark
knows more (a GPU, a library version).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def cpu_model() -> dict[str, Any]:
    """The CPU's model name and the matrix/vector flags runtimes care about (machines of this
    project's kind differ: AMD EPYC, Intel Xeon with AMX), from /proc/cpuinfo where it exists."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu_model": platform.processor() or "unknown"}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
    return {"cpu_model": fields.get("model name", "unknown"), "cpu_flags": [f for f in wanted if f in flags]}


def machine(**extra: Any) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), **cpu_model(), "platform": platform.platform(),
            "python": platform.python_version(), **extra}


def write_report(out: Path, script: str, argv: Sequence[str] | None, fields: dict[str, Any], *,
                 machine_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``fields`` with the command line (``argv``, or this process's when None) to ``out``."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    report = {"command": " ".join([f"tests/benchmarks/{Path(script).name}", *arguments]),
              "machine": machine_info if machine_info is not None else machine(), **fields,
              "unix_time": int(time.time())}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report
