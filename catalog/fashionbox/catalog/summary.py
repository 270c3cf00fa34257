"""What a catalog holds, for an operator: ``fashionbox catalog info``.

Usage::

    from fashionbox.catalog.summary import summarize

    summary = summarize(db)       # CatalogSummary: images, garments, folders, models and their indexes
    print("\\n".join(summary.lines()))

Counts come from the tables themselves (exact, one query each); the folders are the ``index`` runs'
roots with the images each run stored and whether the folder is still there (a folder that is gone
is what ``fashionbox catalog prune --force`` is for); each embedding model lists its vectors and
whether its HNSW indexes are all built and valid (a killed bulk run leaves them out until the next
run or the next opening of the catalog builds them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .database import Database
from .vectors import bulk_load_running, expected_vector_indexes, models, present_vector_indexes


@dataclass(frozen=True, slots=True)
class FolderSummary:
    path: str
    images: int
    """Images stored by ``index`` runs of this folder (indexed and failed)."""
    failed: int
    present: bool
    """Whether the folder (or file) is there now."""


@dataclass(frozen=True, slots=True)
class ModelSummary:
    name: str
    kind: str
    """``garment`` or ``image``."""
    dimension: int
    vectors: int
    indexes_ready: bool
    """Every HNSW index this model's vectors call for exists and is valid (false for a model too wide
    for HNSW: its searches are exact)."""


@dataclass(frozen=True, slots=True)
class CatalogSummary:
    database: str
    schema_version: int
    images: int
    """Indexed images (``failed`` not included)."""
    failed: int
    garments: int
    categories: tuple[tuple[str, int], ...]
    """(category, garments), most first."""
    labelled: int
    """Images with an image-level label."""
    boards: int
    folders: tuple[FolderSummary, ...]
    models: tuple[ModelSummary, ...]
    bulk_load_running: bool
    size_bytes: int
    """The database's size on disk (``pg_database_size``)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["categories"] = dict(self.categories)
        return out

    def lines(self) -> list[str]:
        """The summary for a terminal."""
        categories = "; ".join(f"{name} {count}" for name, count in self.categories) or "none"  # names hold commas
        out = [f"{self.database}, schema version {self.schema_version}, {self.size_bytes / 1e6:.1f} MB",
               f"{self.images} images indexed, {self.failed} failed, {self.labelled} with an image-level label, "
               f"{self.boards} boards",
               f"{self.garments} garments: {categories}"]
        out.append("folders:" if self.folders else "folders: none indexed")
        out.extend(f"  {f.path}: {f.images} images ({f.failed} failed)" + ("" if f.present else ", NOT THERE")
                   for f in self.folders)
        out.append("embedding models:" if self.models else "embedding models: none (the server sent no vectors)")
        out.extend(f"  {m.name} ({m.kind}, {m.dimension}-d): {m.vectors} vectors, "
                   + ("indexes ready" if m.indexes_ready else "indexes NOT ready (searches are exact)")
                   for m in self.models)
        if self.bulk_load_running:
            out.append("a bulk indexing run is loading now: its vector indexes are built at its end")
        return out


def summarize(db: Database) -> CatalogSummary:
    """Count what ``db`` holds."""
    with db.connect() as conn:
        def one(sql: str) -> int:
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        statuses = dict(conn.execute("SELECT status, count(*) FROM images GROUP BY status").fetchall())
        categories = tuple((str(c), int(n)) for c, n in conn.execute(
            "SELECT category, count(*) FROM garments GROUP BY category ORDER BY count(*) DESC, category").fetchall())
        folders = tuple(
            FolderSummary(str(path), int(images), int(failed), Path(str(path)).exists())
            for path, images, failed in conn.execute(
                "SELECT r.path, count(i.id), count(i.id) FILTER (WHERE i.status = 'failed') FROM roots r "
                "LEFT JOIN images i ON i.root_id = r.id GROUP BY r.path ORDER BY r.path").fetchall())
        expected = expected_vector_indexes(conn)
        present = present_vector_indexes(conn, [i.name for i in expected])
        vectors = dict(conn.execute("SELECT model_id, count(*) FROM garment_vectors GROUP BY model_id").fetchall())
        vectors.update(conn.execute("SELECT embedding_model_id, count(*) FROM images "
                                    "WHERE embedding_model_id IS NOT NULL GROUP BY embedding_model_id").fetchall())
        model_rows = tuple(
            ModelSummary(m.name, m.kind, m.dimension, int(vectors.get(m.id, 0)),
                         m.indexed and all(present.get(i.name, False) for i in expected if i.model_id == m.id))
            for m in models(conn))
        return CatalogSummary(
            database=db.describe(), schema_version=one("SELECT coalesce(max(version), 0) FROM catalog_schema"),
            images=int(statuses.get("indexed", 0)), failed=int(statuses.get("failed", 0)),
            garments=sum(n for _, n in categories), categories=categories,
            labelled=one("SELECT count(*) FROM images WHERE label IS NOT NULL"),
            boards=one("SELECT count(*) FROM boards"), folders=folders, models=model_rows,
            bulk_load_running=bulk_load_running(conn), size_bytes=one("SELECT pg_database_size(current_database())"))
