"""A catalog's upkeep, in a real embedded PostgreSQL with a planted server (no Triton: the answers are fixed per
file): pruning, where images whose files are gone leave the catalog (``fashionbox catalog prune``,
``index --prune``, ``Indexer.watch(prune=True)``; ``tests/test_catalog_integration.py`` prunes as it watches
against the real server), and ``fashionbox catalog info``, what the catalog holds.

Checked for pruning: a dry run reports the gone files and removes nothing; a prune removes exactly those images, and
with them their garments, garment vectors and board places, so that search, similar and duplicates stop
returning them, while a moved file's new path (indexed as an exact copy) stays; a folder named on the
command line is told apart from a sibling sharing its prefix; a folder that is not there, or where none
of the images is, is refused unless forced, and a forced prune of a folder that is gone forgets the
folder; the command's JSON and exit codes; ``index --prune`` and a watch that prunes as files go. For
``info``: the counts of images, failures, garments by category, boards, folders (one gone), each model's
vectors and whether its indexes are ready (not while a killed bulk run left them out).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catalog_collection import PlantedServer, random_unit, scratch_catalog_folder
from PIL import Image

from fashionbox.catalog import Catalog, Database, Indexer, SearchFilter
from fashionbox.catalog.prune import outermost, prune
from fashionbox.client import AttributeScore, BoundingBox, Detection, ImageDetections, InvalidImage, PackedEmbedding
from fashionbox.commands.cli import main
from fashionbox.contract.embedding import pack_embedding

pytestmark = pytest.mark.integration

DIM = 8
MODEL = "prune-garment@1"


@pytest.fixture
def folder() -> Iterator[Path]:
    with scratch_catalog_folder("fashionbox-catalog-prune-") as path:
        yield path


def _photo(server: PlantedServer, path: Path, seed: int, category: str = "dress") -> Path:
    """A small PNG at ``path`` whose planted answer is two garments of ``category`` with vectors of their own."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    vectors = [pack_embedding(random_unit(rng, DIM), "float32") for _ in range(2)]
    detections = tuple(
        Detection(BoundingBox(k, k, 20 + k, 20 + k), category, 0.9, {"length": AttributeScore("long", 0.8)},
                  packed_embedding=PackedEmbedding(MODEL, DIM, "float32", vector))
        for k, vector in enumerate(vectors))
    server.answers[buffer.getvalue()] = ImageDetections(32, 32, detections)
    return path


def _paths(db: Database) -> set[str]:
    with db.connect() as conn:
        return {str(p) for (p,) in conn.execute("SELECT path FROM images").fetchall()}


def _count(db: Database, sql: str, *params: Any) -> int:
    with db.connect() as conn:
        row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else -1


def _index(db: Database, server: PlantedServer, *folders: Path) -> None:
    indexer = Indexer(db, server, max_in_flight=2)  # type: ignore[arg-type]
    for f in folders:
        indexer.index_folder(f)


def test_prune_removes_exactly_the_gone_images_with_their_garments_vectors_and_board_places(folder: Path) -> None:
    server = PlantedServer()
    photos, sibling = folder / "photos", folder / "photos2"
    files = [_photo(server, photos / f"{i}.png", i) for i in range(4)] + [_photo(server, photos / "sub" / "4.png", 4)]
    siblings = [_photo(server, sibling / f"{i}.png", 10 + i) for i in range(2)]
    db = Database.open(catalog=folder / "catalog")
    _index(db, server, photos, sibling)
    catalog = Catalog(db)
    ids = {Path(p).name: catalog.image_id_of(str(p.resolve())) for p in files}
    catalog.create_board("picks")
    catalog.add_to_board("picks", [ids["0.png"], ids["1.png"]])  # type: ignore[list-item]
    assert _count(db, "SELECT count(*) FROM garment_vectors") == 2 * 7

    files[0].unlink()                            # deleted
    files[4].unlink()                            # deleted, in a subfolder
    files[2].rename(photos / "2-moved.png")      # moved: the next index stores the new path as a copy
    siblings[0].unlink()                         # under photos2/, which shares photos/'s prefix
    gone = {str(files[0].resolve()), str(files[4].resolve()), str(files[2].resolve())}
    before = _paths(db)

    dry = prune(db, [photos], dry_run=True)
    assert set(dry.folders[0].missing) == gone and dry.removed == 0 and dry.dry_run
    assert _paths(db) == before

    report = Indexer(db, server, max_in_flight=2).index_folder(photos)  # type: ignore[arg-type]
    assert (report.copied, report.indexed) == (1, 0)
    report_photos = prune(db, [photos])
    assert report_photos.removed == 3 and set(report_photos.folders[0].missing) == gone
    assert report_photos.folders[0].indexed == 6 and report_photos.refused == ()
    assert _paths(db) == before - gone | {str((photos / "2-moved.png").resolve())}
    assert str(siblings[0].resolve()) in _paths(db)  # photos2/ is not under photos/

    removed_ids = [ids["0.png"], ids["4.png"], ids["2.png"]]
    assert _count(db, "SELECT count(*) FROM garments WHERE image_id = ANY(%s)", removed_ids) == 0
    assert _count(db, "SELECT count(*) FROM garment_vectors WHERE image_id = ANY(%s)", removed_ids) == 0
    assert catalog.boards() == [("picks", 1)]
    assert {h.image for h in catalog.search(SearchFilter(category="dress"), limit=50)} == _paths(db)
    hits = catalog.similar(np.ones(DIM, dtype=np.float32), model=MODEL, query=SearchFilter(), limit=50)
    assert not {h.image for h in hits} & gone
    assert catalog.duplicates(kind="exact") == []  # the moved file's copy group went with its old path

    everything = prune(db)  # every indexed folder: photos2/'s gone file now, nothing more under photos/
    assert everything.removed == 1 and [f.folder for f in everything.folders] == [str(photos.resolve()),
                                                                                   str(sibling.resolve())]
    assert prune(db).removed == 0


def test_a_folder_not_there_or_with_none_of_its_images_is_refused_unless_forced(folder: Path) -> None:
    server = PlantedServer()
    photos, other = folder / "photos", folder / "other"
    for i in range(3):
        _photo(server, photos / f"{i}.png", i)
        _photo(server, other / f"{i}.png", 20 + i)
    db = Database.open(catalog=folder / "catalog")
    _index(db, server, photos, other)
    kept = _paths(db)

    photos.rename(folder / "photos-unmounted")
    report = prune(db, [photos])
    assert report.removed == 0 and len(report.folders[0].missing) == 3
    assert report.refused and "is not there" in str(report.folders[0].refused)
    (folder / "photos-unmounted").rename(photos)
    assert prune(db).missing == 0 and _paths(db) == kept

    for path in other.iterdir():  # the folder is there, empty: a mount point without its disk looks so
        path.unlink()
    report = prune(db)
    assert report.removed == 0 and "none of the 3 images" in str(report.refused[0].refused)
    assert prune(db, [other], force=True).removed == 3

    shutil.rmtree(photos)  # gone for good: forced, its images go and it leaves the indexed folders
    assert prune(db, [photos], force=True).removed == 3
    assert _paths(db) == set()
    assert Catalog(db).roots() == [str(other.resolve())]


def test_outermost_keeps_each_folder_once() -> None:
    folders = [Path("/a/photos"), Path("/a/photos/sub"), Path("/a/photos2"), Path("/b")]
    assert outermost(folders) == [Path("/a/photos"), Path("/a/photos2"), Path("/b")]


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


class _PlantedClient(PlantedServer):
    """The planted server in the place of ``FashionClient`` (what ``catalog index`` opens)."""

    def __init__(self, server: PlantedServer) -> None:
        self.answers = server.answers

    def __call__(self, *_: Any, **__: Any) -> _PlantedClient:
        return self

    def __enter__(self) -> _PlantedClient:
        return self

    def __exit__(self, *_: Any) -> None:
        return None


def test_the_commands_prune_dry_run_json_and_index_prune(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fashionbox.client

    server = PlantedServer()
    photos = folder / "photos"
    files = [_photo(server, photos / f"{i}.png", i) for i in range(3)]
    monkeypatch.setattr(fashionbox.client, "FashionClient", _PlantedClient(server))
    where = ["--catalog", str(folder / "catalog")]
    code, _, err = _cli("catalog", "index", str(photos), "-q", *where)
    assert code == 0, err

    files[0].unlink()
    code, out, err = _cli("catalog", "prune", "--dry-run", "--json", *where)
    report = json.loads(out)
    assert code == 0 and report["dry_run"] and report["removed"] == 0
    assert report["folders"] == [{"folder": str(photos.resolve()), "indexed": 3, "missing": [str(files[0].resolve())],
                                  "removed": 0, "refused": None}]
    code, _, err = _cli("catalog", "prune", str(folder / "typo"), *where)
    assert code == 2 and "no image in the catalog is under" in err

    code, out, err = _cli("catalog", "index", str(photos), "--prune", "-q", *where)
    assert code == 0 and "1 of 3 images gone, 1 removed" in err and str(files[0].resolve()) in err
    db = Database.open(catalog=folder / "catalog")
    assert _paths(db) == {str(p.resolve()) for p in files[1:]}

    for path in files[1:]:
        path.unlink()
    code, _, err = _cli("catalog", "index", str(photos), "--prune", "-q", *where)
    assert code == 1 and "refused" in err and "--force" in err  # nothing removed, and the exit code says so
    code, out, err = _cli("catalog", "prune", "--force", "--json", *where)
    assert code == 0 and json.loads(out)["removed"] == 2 and _paths(db) == set()


def test_watch_prunes_as_files_go(folder: Path) -> None:
    server = PlantedServer()
    watched = folder / "watched"
    first, second = _photo(server, watched / "a.png", 1), _photo(server, watched / "b.png", 2)
    db = Database.open(catalog=folder / "catalog")
    pruned: list[Any] = []
    polls = 0

    def stop() -> bool:  # called while the watch waits between scans
        nonlocal polls
        polls += 1
        if polls == 1:
            first.unlink()  # gone before the second scan
        if len(pruned) == 1 and second.exists():
            second.unlink()  # the last one: a refusal, heard once however many scans see it
        return polls > 40

    Indexer(db, server).watch([watched], poll_s=0.05, settle_s=0.0, stop=stop, prune=True,  # type: ignore[arg-type]
                              on_prune=pruned.append)
    assert [r.removed for r in pruned] == [1, 0]
    assert pruned[0].folders[0].missing == (str(first.resolve()),)
    assert pruned[1].refused and _paths(db) == {str(second.resolve())}


def test_info_counts_what_the_catalog_holds(folder: Path) -> None:
    from fashionbox.catalog.vectors import BulkLoad

    server = PlantedServer()
    photos, other = folder / "photos", folder / "other"
    for i in range(3):
        _photo(server, photos / f"{i}.png", i)
    _photo(server, other / "hat.png", 9, category="hat")
    (photos / "broken.png").write_bytes(b"not a photo")
    server.answers[b"not a photo"] = InvalidImage("cannot decode", status="INVALID_ARGUMENT")
    db = Database.open(catalog=folder / "catalog")
    _index(db, server, photos, other)
    Catalog(db).add_to_board("picks", [Catalog(db).image_id_of(str((photos / "0.png").resolve())) or -1])
    shutil.rmtree(other)

    code, out, err = _cli("catalog", "info", "--json", "--catalog", str(folder / "catalog"))
    info = json.loads(out)
    assert code == 0, err
    assert (info["images"], info["failed"], info["garments"], info["boards"]) == (4, 1, 8, 1)
    assert info["categories"] == {"dress": 6, "hat": 2} and info["labelled"] == 0
    assert info["folders"] == [
        {"path": str(other.resolve()), "images": 1, "failed": 0, "present": False},
        {"path": str(photos.resolve()), "images": 4, "failed": 1, "present": True}]
    assert info["models"] == [{"name": MODEL, "kind": "garment", "dimension": DIM, "vectors": 8,
                               "indexes_ready": True}]
    assert info["schema_version"] >= 4 and info["size_bytes"] > 1_000_000 and not info["bulk_load_running"]
    code, out, _ = _cli("catalog", "info", "--catalog", str(folder / "catalog"))
    assert "4 images indexed, 1 failed" in out and "dress 6; hat 2" in out and "NOT THERE" in out

    with db.connect() as conn:  # a bulk run killed half-way: its indexes are down until the next run builds them
        loader = BulkLoad.begin(conn)
        assert loader is not None
        loader.abandon()
    from fashionbox.catalog.summary import summarize

    assert summarize(db).models[0].indexes_ready is False


def test_export_copies_a_boards_photos_numbering_same_names_and_listing_the_gone(folder: Path) -> None:
    server = PlantedServer()
    first = _photo(server, folder / "photos" / "look.png", 1)
    second = _photo(server, folder / "photos" / "more" / "look.png", 2)  # the same name in another folder
    third = _photo(server, folder / "photos" / "gone.png", 3)
    db = Database.open(catalog=folder / "catalog")
    _index(db, server, folder / "photos")
    catalog = Catalog(db)
    for path in (first, second, third):
        catalog.add_to_board("to send", [catalog.image_id_of(str(path.resolve())) or -1])
    third.unlink()
    where = ["--catalog", str(folder / "catalog")]

    code, out, err = _cli("catalog", "export", str(folder / "out"), "--board", "to send", "--json", *where)
    report = json.loads(out)
    assert code == 0, err
    assert report == {"board": "to send", "written": ["look.png", "2-look.png"], "missing": [str(third.resolve())]}
    assert (folder / "out" / "look.png").read_bytes() == first.read_bytes()
    assert (folder / "out" / "2-look.png").read_bytes() == second.read_bytes()
    code, _, err = _cli("catalog", "export", str(folder / "out"), "--board", "to send", *where)
    assert code == 2 and "already has look.png, 2-look.png" in err  # nothing overwritten
    code, _, err = _cli("catalog", "export", str(folder / "elsewhere"), "--board", "nope", *where)
    assert code == 2 and "no board named 'nope'" in err and not (folder / "elsewhere").exists()
    (folder / "a-file").write_text("not a folder")
    code, _, err = _cli("catalog", "export", str(folder / "a-file"), "--board", "to send", *where)
    assert code == 2 and "cannot export into" in err and "Traceback" not in err
