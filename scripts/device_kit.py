"""Pack what a GPU machine without network lacks to serve FashionBox, for one carried folder.

    .venv/bin/python scripts/device_kit.py [--python-version 3.12] [--out .devicekit]

The device machine (the ``device`` tool: an H200 with PyTorch on CUDA, numpy 2, no Triton, no
network) gets one archive, ``<out>/site-py<X.Y>.tar.xz``, to unpack into a folder put on
``PYTHONPATH`` (``scripts/gpu_session.sh`` does it):

- the packages this project pins that the machine lacks or has in a version we cannot use, at the
  versions installed here: numpy 1.x (numpy 2 empties python-backend outputs, docs/FIELD_NOTES.md),
  tritonclient (with its ``perf_analyzer``, under ``bin/``), python-rapidjson, hdrhistogram; built
  for the target Python by ``pip install --target --python-version``. Not protobuf: the image's
  onnx needs its newer protobuf, and tritonclient's generated code runs on it (checked with 7.x);
- the embedded Triton of the nvidia-pytriton wheel cut to what serving needs: the ``tritonserver``
  binary, the python backend, the stub for the target Python, and the shared libraries those three
  load (read with ``ldd``), in the wheel's own layout, so ``fashionbox serve`` finds it as it finds
  the installed wheel. The whole wheel (55 MB) and numpy would not fit the 64 MiB a call carries.

Refuses (exit 2) when the archive exceeds ``--max-mib``; writes ``<out>/kit.json`` with the
versions and sizes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PACKAGES = ("numpy", "tritonclient", "python-rapidjson", "hdrhistogram")
"""Distributions carried at the versions installed here (the image has no tritonclient, numpy 2)."""
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def install_packages(target: Path, python_version: str) -> dict[str, str]:
    """``pip install --target`` the pinned distributions as wheels for ``python_version``."""
    pins = {name: importlib.metadata.version(name) for name in PACKAGES}
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
               "--only-binary=:all:", "--target", str(target), "--python-version", python_version,
               "--implementation", "cp"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + [f"{name}=={version}" for name, version in pins.items()], check=True)
    return pins


def linked_libraries(files: list[Path], libs: Path) -> set[Path]:
    """The libraries of ``libs`` that ``files`` load, directly or not (``ldd`` resolves the closure)."""
    found: set[Path] = set()
    env = {"LD_LIBRARY_PATH": str(libs), "PATH": "/usr/bin:/bin"}
    for file in files:
        listing = subprocess.run(["ldd", str(file)], check=True, capture_output=True, text=True, env=env).stdout
        for line in listing.splitlines():
            parts = line.split("=>")
            if len(parts) == 2 and parts[1].split() and parts[1].split()[0].startswith("/"):
                library = Path(parts[1].split()[0]).resolve()  # rpaths resolve through "../.."
                if library.parent == libs.resolve():
                    found.add(library)
    return found


def copy_triton(target: Path, python_version: str) -> str:
    """The embedded Triton, cut to serving, in the wheel's layout under ``target``; returns its version."""
    from fashionbox.server import STUB_NAME, find_triton_distribution

    dist = find_triton_distribution()
    stub = dist.root / "python_backend_stubs" / python_version / STUB_NAME
    if not stub.is_file():
        raise SystemExit(f"nvidia-pytriton {dist.version} has no python backend stub for Python {python_version}")
    root = target / "pytriton" / "tritonserver"
    (root / "bin").mkdir(parents=True)
    # A regular package, not a namespace one: found first from PYTHONPATH even beside an installed wheel.
    (target / "pytriton" / "__init__.py").write_text(
        '"""The tritonserver of nvidia-pytriton cut to serving (scripts/device_kit.py); no pytriton API."""\n')
    shutil.copy2(dist.binary, root / "bin")
    shutil.copytree(dist.root / "backends", root / "backends", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "python_backend_stubs" / python_version).mkdir(parents=True)
    shutil.copy2(stub, root / "python_backend_stubs" / python_version)
    libs = target / dist.libs.name
    libs.mkdir()
    for library in linked_libraries([dist.binary, dist.root / "backends/python/libtriton_python.so", stub],
                                    dist.libs):
        shutil.copy2(library, libs)
    # What importlib.metadata.version("nvidia-pytriton") reads.
    info = target / f"nvidia_pytriton-{dist.version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: nvidia-pytriton\nVersion: {dist.version}\n"
                                   "Summary: the tritonserver of nvidia-pytriton, cut to serving by FashionBox\n")
    return dist.version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12", help="the device's Python (X.Y)")
    parser.add_argument("--out", type=Path, default=ROOT / ".devicekit")
    parser.add_argument("--max-mib", type=float, default=56.0,
                        help="largest archive accepted (a call carries 64 MiB with the working tree)")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    archive = args.out / f"site-py{args.python_version}.tar.xz"
    with tempfile.TemporaryDirectory(prefix="fashionbox-devicekit-") as tmp:
        site = Path(tmp) / "site"
        pins = install_packages(site, args.python_version)
        pins["nvidia-pytriton"] = copy_triton(site, args.python_version)
        for extra in ("perf_client", "dump_hdrh", "f2py", "__pycache__"):  # perf_client: perf_analyzer again
            path = site / "bin" / extra
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        unpacked = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
        with tarfile.open(archive, "w:xz", preset=6) as tar:
            for entry in sorted(site.iterdir()):
                tar.add(entry, arcname=entry.name)
    size_mib = archive.stat().st_size / 2**20
    kit = {"archive": archive.name, "python_version": args.python_version, "packages": pins,
           "archive_mib": round(size_mib, 1), "unpacked_mib": round(unpacked / 2**20, 1),
           "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (args.out / "kit.json").write_text(json.dumps(kit, indent=2) + "\n")
    print(json.dumps(kit, indent=2))
    if size_mib > args.max_mib:
        print(f"the archive is {size_mib:.1f} MiB, over --max-mib {args.max_mib}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
