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

From version 3 garment vectors are searched in a narrow table, ``garment_vectors`` (garment id,
image id, model id, category id, overlapped, score, attribute labels, the vector as ``halfvec``),
which triggers on ``garments`` keep (insert, update; delete cascades): each garment model's HNSW
index is built there, plus one partial HNSW index per (model, category), built when the
transaction that brings a new category or model commits (``garment_vector_index``; one that
finds other writers busy leaves it to the next such commit, or to
:meth:`~fashionbox.catalog.database.Database.migrate`) and listed in ``garment_vector_indexes``;
``garments.embedding`` keeps the float32 vectors the similarities are reported from
(BENCHMARKS.md, "Catalog: visual search").

Version 4: while a bulk indexing run holds :data:`BULK_LOAD_LOCK` (its vector indexes dropped, to be
built at its end: :class:`fashionbox.catalog.vectors.BulkLoad`) no commit builds a (model, category)
index.
"""

from __future__ import annotations

from dataclasses import dataclass

BULK_LOAD_LOCK = 0x46426362
"""The session advisory lock (one bigint key, "FBcb") a bulk indexing run holds while the vector indexes
are down (:class:`fashionbox.catalog.vectors.BulkLoad`; migration 4 reads it in ``pg_locks``)."""


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
    Migration(3, "garment vectors in a narrow table, HNSW per model and per (model, category)", (
        # What a similarity query reads, and nothing else: a candidate the HNSW scan visits costs one narrow row
        # (about 400 bytes at 128-d, against 1 kB and more in garments with boxes, scores and masks), and a
        # category filter is answered by its own partial index. Kept by triggers on garments (any writer: the
        # indexer, the Ray indexer, COPY), removed with its garment (ON DELETE CASCADE). attributes: the
        # labels only ({group: {"label": ...}}), enough for the @> filter; scores stay in garments.
        """CREATE TABLE garment_categories (
            id serial PRIMARY KEY,
            name text NOT NULL UNIQUE
        )""",
        """CREATE TABLE garment_vectors (
            garment_id bigint PRIMARY KEY REFERENCES garments (id) ON DELETE CASCADE,
            image_id bigint NOT NULL,
            model_id integer NOT NULL REFERENCES embedding_models (id),
            category_id integer NOT NULL REFERENCES garment_categories (id),
            overlapped boolean NOT NULL,
            score real NOT NULL,
            attributes jsonb NOT NULL,
            embedding halfvec NOT NULL
        )""",
        "CREATE INDEX garment_vectors_model_category ON garment_vectors (model_id, category_id)",
        "CREATE INDEX garment_vectors_image ON garment_vectors (image_id)",
        # (model, category) pairs whose partial HNSW index exists: a query uses it only when listed here
        """CREATE TABLE garment_vector_indexes (
            model_id integer NOT NULL REFERENCES embedding_models (id),
            category_id integer NOT NULL REFERENCES garment_categories (id),
            PRIMARY KEY (model_id, category_id)
        )""",
        """CREATE FUNCTION garment_vector_labels(attributes jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
            SELECT coalesce(jsonb_object_agg(key, jsonb_build_object('label', value -> 'label')), '{}'::jsonb)
            FROM jsonb_each(attributes)
        $$""",
        # The partial HNSW index of one (model, category), unless it exists, the model is too wide for HNSW,
        # or another transaction is writing vectors now (NOWAIT: never a wait, so never a deadlock; the pair is
        # then built by a later commit that brings a new category or model, or when a catalog is opened).
        """CREATE FUNCTION garment_vector_index(model integer, category integer) RETURNS boolean
        LANGUAGE plpgsql AS $$
        DECLARE
            d integer;
        BEGIN
            SELECT dimension INTO d FROM embedding_models WHERE id = model;
            IF d IS NULL OR d > 4000 THEN
                RETURN false;
            END IF;
            BEGIN
                LOCK TABLE garment_vectors IN SHARE MODE NOWAIT;
            EXCEPTION WHEN lock_not_available THEN
                RETURN false;
            END;
            INSERT INTO garment_vector_indexes (model_id, category_id) VALUES (model, category)
                ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                RETURN false;
            END IF;
            EXECUTE format('CREATE INDEX IF NOT EXISTS garment_vectors_hnsw_%s_%s ON garment_vectors USING hnsw '
                           '((embedding::halfvec(%s)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64) '
                           'WHERE model_id = %s AND category_id = %s', model, category, d, model, category);
            RETURN true;
        END
        $$""",
        # every (garment model, category) pair with vectors and no index yet (each probe: the btree below)
        """CREATE FUNCTION garment_vector_indexes_missing() RETURNS integer LANGUAGE plpgsql AS $$
        DECLARE
            pairs integer[];
            built integer := 0;
        BEGIN
            -- the pairs first, as an array: a loop over an open query of garment_vectors could not index it
            SELECT coalesce(array_agg(ARRAY[m.id, c.id] ORDER BY m.id, c.id), '{}') INTO pairs
            FROM embedding_models m CROSS JOIN garment_categories c
            WHERE m.kind = 'garment'
              AND NOT EXISTS (SELECT 1 FROM garment_vector_indexes x WHERE x.model_id = m.id AND x.category_id = c.id)
              AND EXISTS (SELECT 1 FROM garment_vectors v WHERE v.model_id = m.id AND v.category_id = c.id);
            FOR i IN 1 .. coalesce(array_length(pairs, 1), 0) LOOP
                IF garment_vector_index(pairs[i][1], pairs[i][2]) THEN
                    built := built + 1;
                END IF;
            END LOOP;
            RETURN built;
        END
        $$""",
        # Statement-level with the inserted rows as a table: one set-based insert per statement (a COPY of a
        # million garments is one).
        """CREATE FUNCTION garment_vectors_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO garment_categories (name)
                SELECT DISTINCT n.category FROM inserted n
                WHERE n.embedding IS NOT NULL AND n.embedding_model_id IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM garment_categories c WHERE c.name = n.category)
                ORDER BY 1
                ON CONFLICT DO NOTHING;
            INSERT INTO garment_vectors (garment_id, image_id, model_id, category_id, overlapped, score, attributes,
                                         embedding)
                SELECT n.id, n.image_id, n.embedding_model_id, c.id, n.overlapped, n.score,
                       garment_vector_labels(n.attributes), n.embedding::halfvec
                FROM inserted n JOIN garment_categories c ON c.name = n.category
                WHERE n.embedding IS NOT NULL AND n.embedding_model_id IS NOT NULL;
            RETURN NULL;
        END
        $$""",
        # A new category or garment model builds its pairs' indexes when its transaction commits (deferred: the
        # vectors are all in, so the build is one bulk build, and the lock is the transaction's last act).
        """CREATE FUNCTION garment_vector_indexes_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM garment_vector_indexes_missing();
            RETURN NULL;
        END
        $$""",
        """CREATE CONSTRAINT TRIGGER garment_categories_indexes AFTER INSERT ON garment_categories
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION garment_vector_indexes_at_commit()""",
        """CREATE CONSTRAINT TRIGGER embedding_models_indexes AFTER INSERT ON embedding_models
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION garment_vector_indexes_at_commit()""",
        """CREATE TRIGGER garment_vectors_insert AFTER INSERT ON garments REFERENCING NEW TABLE AS inserted
            FOR EACH STATEMENT EXECUTE FUNCTION garment_vectors_inserted()""",
        """CREATE FUNCTION garment_vectors_updated() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM garment_vectors WHERE garment_id = OLD.id;
            IF NEW.embedding IS NOT NULL AND NEW.embedding_model_id IS NOT NULL THEN
                INSERT INTO garment_categories (name) VALUES (NEW.category) ON CONFLICT DO NOTHING;
                INSERT INTO garment_vectors (garment_id, image_id, model_id, category_id, overlapped, score,
                                             attributes, embedding)
                    SELECT NEW.id, NEW.image_id, NEW.embedding_model_id, c.id, NEW.overlapped, NEW.score,
                           garment_vector_labels(NEW.attributes), NEW.embedding::halfvec
                    FROM garment_categories c WHERE c.name = NEW.category;
            END IF;
            RETURN NULL;
        END
        $$""",
        """CREATE TRIGGER garment_vectors_update AFTER UPDATE OF id, image_id, category, score, attributes, overlapped,
            embedding, embedding_model_id ON garments FOR EACH ROW EXECUTE FUNCTION garment_vectors_updated()""",
        # the rows stored before this migration, then each garment model's HNSW index moves to the narrow table
        """INSERT INTO garment_categories (name) SELECT DISTINCT category FROM garments
            WHERE embedding IS NOT NULL AND embedding_model_id IS NOT NULL ORDER BY 1""",
        """INSERT INTO garment_vectors (garment_id, image_id, model_id, category_id, overlapped, score, attributes,
                                        embedding)
            SELECT g.id, g.image_id, g.embedding_model_id, c.id, g.overlapped, g.score,
                   garment_vector_labels(g.attributes), g.embedding::halfvec
            FROM garments g JOIN garment_categories c ON c.name = g.category
            WHERE g.embedding IS NOT NULL AND g.embedding_model_id IS NOT NULL""",
        """DO $$
        DECLARE
            m record;
        BEGIN
            FOR m IN SELECT id, dimension FROM embedding_models WHERE kind = 'garment' ORDER BY id LOOP
                EXECUTE format('DROP INDEX IF EXISTS garments_embedding_hnsw_%s', m.id);
                IF m.dimension <= 4000 THEN
                    EXECUTE format('CREATE INDEX IF NOT EXISTS garment_vectors_hnsw_%s ON garment_vectors USING hnsw '
                                   '((embedding::halfvec(%s)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64) '
                                   'WHERE model_id = %s', m.id, m.dimension, m.id);
                END IF;
            END LOOP;
        END
        $$""",
        "SELECT garment_vector_indexes_missing()",
        "ANALYZE garment_vectors",
    )),
    Migration(4, "no vector index built at commit while a bulk load runs", (
        # A bulk indexing run (fashionbox.catalog.vectors.BulkLoad) drops the vector indexes, loads, and builds
        # them at its end; it holds a session advisory lock meanwhile, which ends with its connection (a killed
        # run's too). While it is held, a commit that brings a new category or model builds nothing (the run's
        # end builds every index at once), and neither does opening the catalog.
        f"""CREATE FUNCTION garment_vector_bulk_load_running() RETURNS boolean LANGUAGE sql STABLE AS $$
            SELECT EXISTS (SELECT 1 FROM pg_locks
                           WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database
                                                                       WHERE datname = current_database())
                             AND classid = 0 AND objid = {BULK_LOAD_LOCK} AND objsubid = 1 AND granted)
        $$""",
        # version 3's builder, kept whole under another name, behind a guard (callers keep the name)
        "ALTER FUNCTION garment_vector_indexes_missing() RENAME TO garment_vector_indexes_missing_unguarded",
        """CREATE FUNCTION garment_vector_indexes_missing() RETURNS integer LANGUAGE plpgsql AS $$
        BEGIN
            IF garment_vector_bulk_load_running() THEN
                RETURN 0;
            END IF;
            RETURN garment_vector_indexes_missing_unguarded();
        END
        $$""",
    )),
)
"""Every migration, oldest first; versions are 1, 2, 3, ... with no gaps."""

LATEST_VERSION = MIGRATIONS[-1].version
