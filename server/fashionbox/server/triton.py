"""Finding Triton (the nvidia-pytriton wheel's, or one installed at ``$FASHIONBOX_TRITON_HOME``) and
preparing its backends folder; what the python-backend stubs need from this interpreter.

The python-backend stub runs in isolated mode on the system's libpython, ignoring ``PYTHONPATH``.
The server therefore sets ``FASHIONBOX_SITE_PACKAGES`` for the child to where this interpreter
imports from (:func:`stub_import_paths`), and every ``model.py`` starts by adding those folders to
the front of ``sys.path``. The folder holding this interpreter's libpython joins
``LD_LIBRARY_PATH`` (:func:`libpython_dir`), for a Python outside the system's library path.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fashionbox.server.errors import ServerStartError
from fashionbox.server.stubs import STUB_NAME

__all__ = [
    "SITE_PACKAGES_ENV",
    "TRITON_HOME_ENV",
    "TritonDistribution",
    "default_cache_dir",
    "find_triton_distribution",
    "libpython_dir",
    "prepare_backend_directory",
    "server_environment",
    "stub_import_paths",
]

logger = logging.getLogger(__name__)

# Read by every model.py; set for the child, never read from our own env.
SITE_PACKAGES_ENV = "FASHIONBOX_SITE_PACKAGES"
# Where an installed Triton lives (NGC image: /opt/tritonserver); unset, the nvidia-pytriton wheel's is run.
TRITON_HOME_ENV = "FASHIONBOX_TRITON_HOME"


@dataclass(frozen=True)
class TritonDistribution:
    """A Triton to run: its files, version, and whether it is an installation with its own backends."""

    root: Path  # <site-packages>/pytriton/tritonserver, or an installed Triton's home (/opt/tritonserver)
    libs: Path  # <site-packages>/nvidia_pytriton.libs, or <home>/lib
    version: str
    installed: bool = False  # a Triton installation: its backends folder is used as it is

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"


def find_triton_distribution() -> TritonDistribution:
    """The Triton at ``$FASHIONBOX_TRITON_HOME`` when set, else the nvidia-pytriton wheel's."""
    home = os.environ.get(TRITON_HOME_ENV)
    if home:
        # An installed Triton, as in NGC's tritonserver image: its own binary, libraries and
        # backends (the python backend with the stub built for that image's Python).
        root = Path(home)
        version_file = root / "TRITON_VERSION"
        dist = TritonDistribution(root=root, libs=root / "lib", installed=True,
                                  version=version_file.read_text().strip() if version_file.is_file() else "unknown")
        if not dist.binary.is_file():
            raise ServerStartError(f"${TRITON_HOME_ENV} is {home}, which has no bin/tritonserver")
        return dist
    # find_spec on a top-level name locates the package without importing it (pytriton's own
    # import pulls in much more than we need).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("the embedded server needs nvidia-pytriton: pip install fashionbox-server")
    package = Path(next(iter(spec.submodule_search_locations)))
    dist = TritonDistribution(
        root=package / "tritonserver",
        libs=package.parent / "nvidia_pytriton.libs",
        version=importlib.metadata.version("nvidia-pytriton"),
    )
    if not dist.binary.is_file():
        raise ServerStartError(f"nvidia-pytriton {dist.version} has no tritonserver binary at {dist.binary}")
    return dist


def stub_import_paths() -> list[str]:
    """Folders the python-backend stubs import from: this interpreter's ``PYTHONPATH``, then its site-packages.

    The stub ignores ``PYTHONPATH``, so a package installed beside the interpreter
    (``pip install --target DIR`` with ``PYTHONPATH=DIR``: numpy 1.x over an image's numpy 2, say)
    would reach this process but not the models without this.
    """
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    installed = sysconfig.get_paths()
    paths += [installed["purelib"], installed["platlib"]]
    return list(dict.fromkeys(os.path.abspath(p) for p in paths))


def server_environment(dist: TritonDistribution, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with what tritonserver and its python-backend stubs need from this interpreter:
    Triton's libraries (and this interpreter's libpython where the system's loader cannot find it) on
    ``LD_LIBRARY_PATH``, and ``FASHIONBOX_SITE_PACKAGES`` for the models' imports. The one place
    ``fashionbox serve`` and ``fashionbox-tritonserver`` get it from."""
    env = dict(environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        dict.fromkeys(filter(None, [str(dist.libs), env.get("LD_LIBRARY_PATH"), libpython_dir()]))
    )
    env[SITE_PACKAGES_ENV] = os.pathsep.join(stub_import_paths())
    return env


def libpython_dir() -> str | None:
    """The folder holding this interpreter's shared libpython, where the system's loader cannot find one."""
    import ctypes.util

    if ctypes.util.find_library(f"python{sys.version_info.major}.{sys.version_info.minor}"):
        return None  # the system's own libpython: the stub finds it as it always has
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        return str(libdir)
    return None


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fashionbox`` (``~/.cache/fashionbox`` when unset)."""
    # XDG_CACHE_HOME is the platform's convention rather than one of our settings, hence read here.
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fashionbox"


def prepare_backend_directory(cache_dir: Path | None = None) -> Path:
    """Return a Triton backends folder whose python backend has the stub for this Python version.

    An installed Triton (``$FASHIONBOX_TRITON_HOME``) has one: its own ``backends``. The wheel
    ships the backend and one stub per Python version in separate folders; Triton wants the stub
    next to the backend. The folder is made once per wheel version and Python version, atomically,
    so servers started in parallel never see a half-copied backend.
    """
    dist = find_triton_distribution()
    if dist.installed:
        backends = dist.root / "backends"
        if not (backends / "python" / STUB_NAME).is_file():
            raise ServerStartError(f"the Triton installed at {dist.root} has no python backend in {backends}")
        return backends
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist.root / "python_backend_stubs" / python_version / STUB_NAME
    if not stub.is_file():
        available = sorted(p.name for p in (dist.root / "python_backend_stubs").iterdir())
        raise ServerStartError(
            f"nvidia-pytriton {dist.version} has no python backend stub for Python {python_version} "
            f"(it has {', '.join(available)})"
        )
    root = (cache_dir or default_cache_dir()) / "triton-backends"
    target = root / f"pytriton-{dist.version}-py{python_version}"
    if (target / "python" / STUB_NAME).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        shutil.copytree(
            dist.root / "backends", staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy2(stub, staging / "python" / STUB_NAME)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process renamed its copy first; theirs is as good as ours.
            if not (target / "python" / STUB_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.debug("prepared Triton backends in %s", target)
    return target
