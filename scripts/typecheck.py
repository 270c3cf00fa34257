"""Run ``mypy --strict`` on the library packages as they are laid out when installed.

The source tree maps top-level folders (``client/``, ``converter/``...) into the
``fashionbox`` namespace through ``pyproject.toml``; mypy cannot follow that mapping, so
this script mirrors it with symlinks in a temporary folder and checks the mirror.

    python scripts/typecheck.py            # the whole fashionbox namespace, --strict
    python scripts/typecheck.py client     # one part
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
WHOLE_NAMESPACE = ("fashionbox",)  # -p fashionbox checks every mapped part recursively


def mirror(target: Path) -> Path:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(package_dir.items(), key=lambda item: item[0].count(".")):
        destination = target.joinpath(*package.split("."))
        destination.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).iterdir():
            if source.suffix in (".py", ".pyi") or source.name == "py.typed":
                link = destination / source.name
                if not link.exists():
                    os.symlink(source, link)
    return target / "fashionbox"


def main(argv: list[str]) -> int:
    parts = argv or list(WHOLE_NAMESPACE)
    with tempfile.TemporaryDirectory(prefix="fashionbox-mypy-") as tmp:
        mirror(Path(tmp))
        modules = []
        for part in parts:
            modules += ["-p", "fashionbox" if part == "fashionbox" else f"fashionbox.{part}"]
        command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *modules]
        env = dict(os.environ, MYPYPATH=tmp)
        return subprocess.call(command, cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
