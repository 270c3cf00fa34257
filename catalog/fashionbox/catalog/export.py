"""A board's photos out of the catalog: into a folder (``fashionbox catalog export``) or a zip (the web
page's download), to hand a set of references to someone without the catalog.

Usage::

    from fashionbox.catalog.export import export_board

    report = export_board(Catalog(db), "wedding looks", Path("to-send"))   # copies; report.missing: gone

Each photo keeps its file name; two of the same name are numbered (``look.jpg``, ``2-look.jpg``), in
the order they were added to the board. A photo whose file is gone is listed, not fatal
(``fashionbox catalog prune`` removes such images). Zips store the files as they are (JPEG, PNG and
WebP are compressed already).
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import QueryError


@dataclass(frozen=True, slots=True)
class ExportReport:
    board: str
    written: tuple[str, ...]
    """The names written (files in the folder, or members of the zip)."""
    missing: tuple[str, ...]
    """Paths of the board's images whose files are not there (or not served)."""

    def to_dict(self) -> dict[str, Any]:
        return {"board": self.board, "written": list(self.written), "missing": list(self.missing)}


def export_names(paths: Sequence[str]) -> list[str]:
    """A file name for each path, all different: its own name, numbered from 2 where an earlier one took it."""
    taken: set[str] = set()
    names = []
    for path in paths:
        name, number = Path(path).name, 1
        while name in taken:
            number += 1
            name = f"{number}-{Path(path).name}"
        taken.add(name)
        names.append(name)
    return names


def _files(catalog: Any, board: str, locate: Callable[[str], Path | None]) -> tuple[list[tuple[str, Path]], list[str]]:
    """(name, file) of each of the board's photos that ``locate`` finds, and the paths it does not."""
    paths = [path for _, path in catalog.board_images(board)]
    found, missing = [], []
    for name, path in zip(export_names(paths), paths, strict=True):
        located = locate(path)
        if located is None:
            missing.append(path)
        else:
            found.append((name, located))
    return found, missing


def _existing(path: str) -> Path | None:
    file = Path(path)
    return file if file.is_file() else None


def export_board(catalog: Any, board: str, folder: Path) -> ExportReport:
    """Copy the photos of ``board`` into ``folder`` (made if needed; a file of the same name there is a
    :class:`QueryError`, nothing overwritten)."""
    files, missing = _files(catalog, board, _existing)
    clashes = [name for name, _ in files if (folder / name).exists()]
    if clashes:
        raise QueryError(f"{folder} already has {', '.join(clashes[:5])}{' ...' if len(clashes) > 5 else ''}: "
                         "export into an empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, file in files:
            shutil.copy2(file, folder / name)
    except OSError as exc:  # a file where the folder should be, no permission, a full disk: the reason, no trace
        raise QueryError(f"cannot export into {folder}: {exc.strerror or exc}") from exc
    return ExportReport(board, tuple(name for name, _ in files), tuple(missing))


def write_board_zip(catalog: Any, board: str, out: IO[bytes], *,
                    locate: Callable[[str], Path | None] = _existing) -> ExportReport:
    """The photos of ``board`` that ``locate`` finds (the web page: only files it serves) as a zip into ``out``."""
    files, missing = _files(catalog, board, locate)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, file in files:
            archive.write(file, arcname=name)
    return ExportReport(board, tuple(name for name, _ in files), tuple(missing))
