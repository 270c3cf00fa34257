"""``fashionbox-perf-analyzer``: Triton's ``perf_analyzer`` with the libraries it links found.

The binary ships in the ``tritonclient`` wheel (``bin/perf_analyzer``; the ``perf-analyzer`` PyPI package
Model Analyzer pulls in is a placeholder without one). It links ``libb64.so.0d`` and
``libcudart.so.12``, which the nvidia-pytriton wheel carries under mangled names in
``nvidia_pytriton.libs/`` (docs/FIELD_NOTES.md). This command symlinks them under their real names
into a folder of the cache (``~/.cache/fashionbox/perf-analyzer-libs-<version>``, made once,
atomically), puts that folder first on ``LD_LIBRARY_PATH`` and replaces itself with the binary,
every argument passed through::

    fashionbox-perf-analyzer -m fashion -u 127.0.0.1:8001 -i grpc --input-data data.json
    model-analyzer profile ... --perf-analyzer-path=fashionbox-perf-analyzer
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from fashionbox.server.errors import ServerError
from fashionbox.server.triton import default_cache_dir

__all__ = ["LIBRARIES", "binary", "environment", "library_dir", "main"]

LIBRARIES = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}
"""The libraries perf_analyzer links that the system lacks: real name -> mangled prefix in the wheel."""
_BINARY = "perf_analyzer"


def binary() -> Path:
    """The perf_analyzer binary of the installed tritonclient wheel (else the first on ``PATH``)."""
    try:
        files = importlib.metadata.files("tritonclient") or ()
    except importlib.metadata.PackageNotFoundError:
        files = ()
    for file in files:
        if file.name == _BINARY:
            path = Path(str(file.locate())).resolve()
            if path.is_file():
                return path
    # `pip install --target DIR` records the scripts relative to a build prefix: they sit in DIR/bin.
    found = shutil.which(_BINARY)
    if found:
        return Path(found).resolve()
    raise ServerError(f"{_BINARY} is neither in the installed tritonclient wheel nor on PATH: "
                      "pip install 'tritonclient[all]==2.50.0'")


def _wheel_libraries() -> Path:
    try:
        dist = importlib.metadata.distribution("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ServerError("perf_analyzer's libraries come from nvidia-pytriton: pip install fashionbox-server") from exc
    return Path(str(dist.locate_file("nvidia_pytriton.libs")))


def library_dir(cache_dir: Path | None = None) -> Path:
    """A folder holding the libraries perf_analyzer needs under their real names (made once per
    nvidia-pytriton version; a folder another process renamed into place first is as good)."""
    libs = _wheel_libraries()
    version = importlib.metadata.version("nvidia-pytriton")
    target = (cache_dir or default_cache_dir()) / f"perf-analyzer-libs-{version}"
    if all((target / name).exists() for name in LIBRARIES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name, prefix in LIBRARIES.items():
            matches = sorted(libs.glob(prefix + "*"))
            if not matches:
                raise ServerError(f"nvidia-pytriton {version} has no {prefix}* in {libs}")
            (staging / name).symlink_to(matches[0])
        shutil.rmtree(target, ignore_errors=True)  # an incomplete folder from an older wheel layout
        try:
            os.rename(staging, target)
        except OSError:
            if not all((target / name).exists() for name in LIBRARIES):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def environment(environ: Mapping[str, str], cache_dir: Path | None = None) -> dict[str, str]:
    """``environ`` with the library folder first on ``LD_LIBRARY_PATH``."""
    env = dict(environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        dict.fromkeys(filter(None, [str(library_dir(cache_dir)), env.get("LD_LIBRARY_PATH")]))
    )
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Exec perf_analyzer with ``argv``; returns (exit code 2) only when it cannot be run."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        command = [str(binary()), *arguments]
        env = environment(os.environ)
    except (ServerError, OSError) as exc:
        print(f"fashionbox-perf-analyzer: {exc}", file=sys.stderr)
        return 2
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        print(f"fashionbox-perf-analyzer: could not run {command[0]}: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
