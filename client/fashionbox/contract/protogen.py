"""Regenerate the typed Python modules of the result schema (``fashionbox/v1/*.proto``).

The generated ``*_pb2.py`` and ``*_pb2.pyi`` files are committed, so that installing the
client needs no protobuf compiler; this module keeps them honest. It runs the compiler bundled
with grpcio-tools (pinned in the ``dev`` extra, because another protoc version writes different
bytes) exactly as::

    cd client && python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. fashionbox/v1/detections.proto

The compiler stays at grpcio-tools 1.62.x (protoc 25, "Protobuf Python Version: 4.25"): its
modules run on every protobuf runtime the client allows, 4.21 up to 6.x and both the upb and the
pure-Python implementation (``scripts/client_compat.sh`` runs them at both ends). protoc 26 and
later write a ``runtime_version`` check into each module, which needs protobuf >= 5.26 and refuses
runtimes older than the compiler; moving to it means raising the client's protobuf floor.

Usage::

    python -m fashionbox.contract.protogen            # rewrite the committed modules in place
    python -m fashionbox.contract.protogen --check    # exit 1 if they differ from a fresh build (CI, tests)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

__all__ = ["PROTO_FILES", "PROTO_ROOT", "ProtogenError", "generate", "main", "stale_files"]

PROTO_ROOT = Path(__file__).resolve().parents[2]
"""The client's folder: the schema's include root and the generated modules' output root."""

PROTO_FILES = ("fashionbox/v1/detections.proto",)
"""Schema files, relative to the include root (which is also the import path protoc records)."""

_INSTALL_HINT = "grpcio-tools is needed to compile the schema: pip install grpcio-tools==1.62.3 (requirements-dev.txt)"


class ProtogenError(RuntimeError):
    """The compiler is missing or rejected the schema; the message says which."""


def _generated_names(proto_file: str) -> tuple[str, str]:
    stem = proto_file.removesuffix(".proto")
    return f"{stem}_pb2.py", f"{stem}_pb2.pyi"


def generate(out_dir: Path, *, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Compile every file of :data:`PROTO_FILES` into ``out_dir``; return the files written.

    ``out_dir`` mirrors the package layout (``out_dir/fashionbox/v1/detections_pb2.py``), so
    passing :data:`PROTO_ROOT` regenerates the committed modules in place.
    """
    try:
        from grpc_tools import protoc
    except ImportError as exc:
        raise ProtogenError(_INSTALL_HINT) from exc
    if not (proto_root / PROTO_FILES[0]).is_file():
        raise ProtogenError(f"no schema under {proto_root}: run from a source checkout of FashionBox")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Well-known types (google/protobuf/*.proto) ship inside grpc_tools; `python -m grpc_tools.protoc`
    # adds them to the include path by itself, protoc.main() does not.
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(proto_root / name) for name in PROTO_FILES),
    ]
    code = protoc.main(args)
    if code != 0:
        raise ProtogenError(f"protoc failed with exit code {code}; its message is on stderr")
    written = [out_dir / generated for name in PROTO_FILES for generated in _generated_names(name)]
    missing = [str(path) for path in written if not path.is_file()]
    if missing:
        raise ProtogenError(f"protoc exited 0 but did not write {missing}")
    return written


def stale_files(*, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Committed generated files that differ from a fresh build (or are missing), byte for byte."""
    with tempfile.TemporaryDirectory(prefix="fashionbox-protogen-") as tmp:
        fresh_root = Path(tmp)
        stale = []
        for fresh in generate(fresh_root, proto_root=proto_root):
            committed = proto_root / fresh.relative_to(fresh_root)
            if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
                stale.append(committed)
        return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fashionbox.contract.protogen",
        description="Regenerate (or with --check, verify) the committed Python modules of the result schema.",
    )
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the committed modules are stale")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_files()
            if stale:
                names = ", ".join(str(path) for path in stale)
                print(f"stale generated files: {names}\nrun: python -m fashionbox.contract.protogen", file=sys.stderr)
                return 1
            print(f"up to date: {len(PROTO_FILES)} schema file(s)")
            return 0
        for path in generate(PROTO_ROOT):
            print(f"wrote {path}")
        return 0
    except ProtogenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
