"""Pruning: images whose files are gone leave the catalog.

Usage::

    from fashionbox.catalog.prune import prune

    report = prune(db)                                      # every indexed folder
    report = prune(db, [Path("photos/2024")], dry_run=True) # what would go, nothing removed

An image is gone when nothing is at its path any more: deleted, or moved (the next ``index`` stores a
moved file's new path as an exact copy, without a trip to the server). Its row goes, and with it its
garments, their vectors and its places on boards (the schema's ``ON DELETE CASCADE``); a folder that
was indexed and is not there any more, with nothing left under it, leaves the list of indexed
folders. A file that is there but cannot be read stays (the indexer records it as failed).

Two cases look like a deleted collection but are more often a disk that is not mounted, or a folder
moved or renamed: a folder that is not there, and a folder where none of the images indexed under it
is. Both are refused, nothing removed and the reason reported, unless ``force``. Each folder is
pruned in one transaction that checks its files again under a row lock, so an image that an indexer
stores again meanwhile (its file back at the same path) stays. The rows' space and their entries in the
HNSW indexes are left to PostgreSQL's autovacuum: searches answer as before meanwhile, and a vacuum
of a tenth of a 100,000-garment catalog took 71 s (BENCHMARKS.md, "Catalog: pruning what is gone").

The command line is ``fashionbox catalog prune [DIR ...]`` and ``fashionbox catalog index --prune``
(:mod:`fashionbox.catalog.cli`); :meth:`fashionbox.catalog.indexer.Indexer.watch` prunes as it polls.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg

from .database import Database


@dataclass(frozen=True, slots=True)
class FolderPrune:
    """One folder's outcome. ``indexed``: the catalog's images under it before; ``missing``: the paths
    of those whose file is gone; ``removed``: rows removed (none on a dry run or a refusal);
    ``refused``: why nothing was removed, or ``None``."""

    folder: str
    indexed: int
    missing: tuple[str, ...] = ()
    removed: int = 0
    refused: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"folder": self.folder, "indexed": self.indexed, "missing": list(self.missing),
                "removed": self.removed, "refused": self.refused}


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What one prune did, folder by folder."""

    folders: tuple[FolderPrune, ...]
    dry_run: bool = False
    elapsed_s: float = 0.0

    @property
    def removed(self) -> int:
        return sum(f.removed for f in self.folders)

    @property
    def missing(self) -> int:
        return sum(len(f.missing) for f in self.folders)

    @property
    def refused(self) -> tuple[FolderPrune, ...]:
        return tuple(f for f in self.folders if f.refused is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "missing": self.missing, "removed": self.removed,
                "elapsed_s": round(self.elapsed_s, 3), "folders": [f.to_dict() for f in self.folders]}


def prune(db: Database, folders: Sequence[Path] | None = None, *, dry_run: bool = False,
          force: bool = False) -> PruneReport:
    """Remove the catalog's images under ``folders`` (default: every indexed folder) whose files are
    gone. ``dry_run``: report them, remove nothing. ``force``: remove them even where the folder is not
    there, or none of its images is (refused otherwise: an unmounted disk looks like that)."""
    start = time.perf_counter()
    with db.connect() as conn:
        targets = [p.resolve() for p in folders] if folders else outermost(indexed_folders(conn))
        outcomes = tuple(prune_folder(conn, target, dry_run=dry_run, force=force) for target in targets)
    return PruneReport(outcomes, dry_run=dry_run, elapsed_s=time.perf_counter() - start)


def indexed_folders(conn: psycopg.Connection[Any]) -> list[Path]:
    """Every folder (or single file) an ``index`` run was given, as recorded."""
    return [Path(p) for (p,) in conn.execute("SELECT path FROM roots ORDER BY path").fetchall()]


def outermost(folders: Sequence[Path]) -> list[Path]:
    """``folders`` less those inside another of them (each image is then checked once)."""
    return [f for f in folders if not any(f != other and f.is_relative_to(other) for other in folders)]


def prune_folder(conn: psycopg.Connection[Any], folder: Path, *, dry_run: bool = False,
                 force: bool = False) -> FolderPrune:
    """:func:`prune` for one resolved folder (or file), in one transaction."""
    rows = conn.execute(_UNDER, _under(folder)).fetchall()
    missing = [(int(image_id), str(path)) for image_id, path in rows if not _present(str(path))]
    outcome = FolderPrune(str(folder), len(rows), tuple(path for _, path in missing))
    refused = None if force or not missing else _refusal(folder, len(rows), len(missing))
    if refused is not None:
        return replace(outcome, refused=refused)
    if dry_run or not missing:
        return outcome
    with conn.transaction():
        # again under the rows' locks: a file put back (and indexed again) since the first look stays
        locked = conn.execute("SELECT id, path FROM images WHERE id = ANY(%s) FOR UPDATE",
                              ([image_id for image_id, _ in missing],)).fetchall()
        gone = [int(image_id) for image_id, path in locked if not _present(str(path))]
        removed = conn.execute("DELETE FROM images WHERE id = ANY(%s)", (gone,)).rowcount
        _forget_folders(conn, folder)
    return replace(outcome, removed=removed)


_UNDER = "SELECT id, path FROM images WHERE path = %s OR starts_with(path, %s) ORDER BY path"


def _under(folder: Path) -> tuple[str, str]:
    """The parameters of :data:`_UNDER`: the path itself (an indexed single file) and the folder's prefix
    (``photos/`` and not ``photos2/``)."""
    text = str(folder)
    return text, text.rstrip(os.sep) + os.sep


def _present(path: str) -> bool:
    return os.path.isfile(path)


def _refusal(folder: Path, indexed: int, missing: int) -> str | None:
    if not folder.exists():
        return (f"{folder} is not there (moved, renamed, or on a disk that is not mounted?): its {indexed} "
                f"image{'s' if indexed != 1 else ''} kept; force (--force) removes them")
    if missing == indexed:
        return (f"none of the {indexed} image{'s' if indexed != 1 else ''} indexed under {folder} is there "
                "(a disk that is not mounted?): kept; force (--force) removes them")
    return None


def _forget_folders(conn: psycopg.Connection[Any], folder: Path) -> None:
    """Indexed folders at or under ``folder`` that are not there and hold no image any more."""
    for root_id, path in conn.execute("SELECT id, path FROM roots WHERE path = %s OR starts_with(path, %s)",
                                      _under(folder)).fetchall():
        if not Path(path).exists():
            conn.execute("DELETE FROM roots r WHERE r.id = %s AND NOT EXISTS "
                         "(SELECT 1 FROM images i WHERE i.root_id = r.id)", (root_id,))


def prune_lines(report: PruneReport, *, shown: int = 20) -> list[str]:
    """The report for a terminal: a line per folder with something missing, and the paths (``shown`` at most)."""
    lines = []
    for f in report.folders:
        if not f.missing:
            continue
        if f.refused is not None:
            lines.append(f"{f.folder}: {len(f.missing)} of {f.indexed} images gone, refused: {f.refused}")
        elif report.dry_run:
            lines.append(f"{f.folder}: {len(f.missing)} of {f.indexed} images gone (dry run: nothing removed)")
        else:
            lines.append(f"{f.folder}: {len(f.missing)} of {f.indexed} images gone, {f.removed} removed")
        lines.extend(f"  {path}" for path in f.missing[:shown])
        if len(f.missing) > shown:
            lines.append(f"  ... and {len(f.missing) - shown} more")
    return lines
