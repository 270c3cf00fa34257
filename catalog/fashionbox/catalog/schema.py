"""The catalog's schema as forward migrations, applied in order and recorded in ``catalog_schema``.

A migration is never edited once released: a change is a new entry at the end of
:data:`MIGRATIONS`. :func:`fashionbox.catalog.database.migrate` applies the missing ones, each in
its own transaction, under an advisory lock so that two indexers starting at once do not race.

Embedding columns (``images.embedding``, ``garments.embedding``) are pgvector ``vector`` columns
without a fixed dimension, each with the id of the model that wrote it; ``embedding_models``
records each model's name, dimension and kind. Several models (of different dimensions) can then
live side by side, and each gets its own HNSW index on ``(embedding::vector(d))`` restricted to
its model id (pgvector's documented way to index a column of mixed dimensions; built on
``halfvec(d)``: :mod:`fashionbox.catalog.vectors`). Indexing fills them when the server sends
embeddings, and creates a model's index with its row (``vectors.ensure_model``); a model's
indexes are created by the indexer, not by a migration, since models are data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "images, garments, boards, embedding models", (
        "CREATE EXTENSION IF NOT EXISTS vector",
        """CREATE TABLE embedding_models (
            id serial PRIMARY KEY,
            name text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('garment', 'image')),
            dimension integer NOT NULL CHECK (dimension > 0),
            UNIQUE (name, kind)
        )""",
        """CREATE TABLE roots (
            id serial PRIMARY KEY,
            path text NOT NULL UNIQUE
        )""",
        """CREATE TABLE images (
            id bigserial PRIMARY KEY,
            path text NOT NULL UNIQUE,
            root_id integer REFERENCES roots (id),
            sha256 text NOT NULL,
            size_bytes bigint NOT NULL,
            mtime_ns bigint,
            status text NOT NULL CHECK (status IN ('indexed', 'failed')),
            error text,
            width integer,
            height integer,
            phash bigint,
            model_name text,
            model_version text,
            label_map text,
            embedding vector,
            embedding_model_id integer REFERENCES embedding_models (id),
            indexed_at timestamptz NOT NULL DEFAULT now()
        )""",
        "CREATE INDEX images_sha256 ON images (sha256)",
        "CREATE INDEX images_phash ON images (phash) WHERE phash IS NOT NULL",
        """CREATE TABLE garments (
            id bigserial PRIMARY KEY,
            image_id bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
            ordinal integer NOT NULL,
            category text NOT NULL,
            score real NOT NULL,
            x1 real NOT NULL, y1 real NOT NULL, x2 real NOT NULL, y2 real NOT NULL,
            attributes jsonb NOT NULL DEFAULT '{}'::jsonb,
            overlapped boolean NOT NULL DEFAULT false,
            mask_rle jsonb,
            embedding vector,
            embedding_model_id integer REFERENCES embedding_models (id),
            UNIQUE (image_id, ordinal)
        )""",
        "CREATE INDEX garments_category ON garments (category, score DESC)",
        # No GIN index on attributes: searches name a category, whose index leaves a few thousand rows
        # to check, and a jsonb_path_ops GIN scan of common labels doubled the p99 (BENCHMARKS.md, "Catalog").
        """CREATE TABLE boards (
            id serial PRIMARY KEY,
            name text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE board_images (
            board_id integer NOT NULL REFERENCES boards (id) ON DELETE CASCADE,
            image_id bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
            added_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (board_id, image_id)
        )""",
    )),
    Migration(2, "image-level labels", (
        # labels: the classifier's top k, [{"label", "score", "index"}, ...] best first; label: the top one,
        # indexed for `search --label` (a product vertical, say: S1's miscategorised products).
        "ALTER TABLE images ADD COLUMN labels jsonb, ADD COLUMN label text, ADD COLUMN label_score real, "
        "ADD COLUMN labels_model text",
        "CREATE INDEX images_label ON images (label, label_score DESC) WHERE label IS NOT NULL",
    )),
)
"""Every migration, oldest first; versions are 1, 2, 3, ... with no gaps."""

LATEST_VERSION = MIGRATIONS[-1].version
