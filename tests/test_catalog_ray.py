"""``fashionbox catalog index --ray``: the indexer as a Ray Data pipeline, against the plain indexer.

A small generated collection (scenes, an exact copy, a re-encoded copy, two bad files) is indexed
twice through the real embedded Triton: by the plain indexer into one embedded PostgreSQL, by
``--ray`` (a local Ray, started and shut down by the command) into another. The two catalogs must
hold the same images, garments and vectors, row by row; a second ``--ray`` run changes nothing; the
bad files are stored as failed with their message; no Ray process or folder is left behind. The
errors a user meets first (Ray missing, a server or a database that does not answer) are checked
to be clear.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from catalog_collection import write_collection

from fashionbox.catalog import Database
from fashionbox.catalog.database import stop_embedded
from fashionbox.commands.cli import main

# Ray 2.60 warns about its own deprecated settings from inside (DataContext); ours are not among them.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

SCENES = 6
SEED = 1717
RAY_PROCESS_NAMES = ("raylet", "gcs_server", "plasma_store", "dashboard", "ray::")


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _ray_processes() -> list[str]:
    """Ray's processes started from this one (raylet, GCS, workers), as "pid name"."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            name = process.name()
            command = " ".join(process.cmdline()[:2])
            if any(marker in name or marker in command for marker in RAY_PROCESS_NAMES):
                found.append(f"{process.pid} {name}")
    return found


def _ray_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("fbray-*")}


# -- without a server --------------------------------------------------------------------------------------

def test_ray_missing_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code, _, err = _run("catalog", "index", str(tmp_path), "--ray", "--catalog", str(tmp_path / "catalog"))
    assert code == 2
    assert "pip install 'fashionbox-catalog[ray]'" in err
    assert not (tmp_path / "catalog").exists()  # refused before a database was started


def test_several_servers_need_ray_and_ray_does_not_watch(tmp_path: Path) -> None:
    code, _, err = _run("catalog", "index", str(tmp_path), "--url", "127.0.0.1:1,127.0.0.1:2")
    assert code == 2 and "several servers in --url need --ray" in err
    code, _, err = _run("catalog", "index", str(tmp_path), "--ray", "--watch")
    assert code == 2 and "--watch runs the plain indexer" in err


def test_an_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    code, _, err = _run("catalog", "index", str(tmp_path), "--ray", "--database",
                        "postgresql://someone:hunter2@127.0.0.1:1/catalog")
    assert code == 2
    assert "cannot connect to postgresql://someone:***@127.0.0.1:1/catalog" in err
    assert "hunter2" not in err


# -- through the embedded Triton -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def url(triton_server: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped model served by the embedded Triton (``FASHIONBOX_CATALOG_TEST_REPOSITORY``: converted before)."""
    from fashionbox.converter import ConvertOptions, convert

    given = os.environ.get("FASHIONBOX_CATALOG_TEST_REPOSITORY")
    repository = Path(given) if given else convert(
        ConvertOptions(out=tmp_path_factory.mktemp("catalog-ray") / "model_repository")).repository
    return str(triton_server(repository).endpoints.grpc)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    # Not under pytest's tmp: the embedded PostgreSQL may run as its own user (tests/test_catalog_integration.py).
    path = Path(tempfile.mkdtemp(prefix="fashionbox-catalog-ray-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for name in ("plain", "ray"):
            stop_embedded(path / name / "postgres")
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def photos(folder: Path) -> Path:
    write_collection(folder, count=SCENES, seed=SEED, exact=1, reencoded=1, resized=0)
    bad = folder / "photos" / "bad"
    bad.mkdir()
    (bad / "truncated.jpg").write_bytes((folder / "photos" / f"scene-{SEED}-0002.jpg").read_bytes()[:600])
    (bad / "not-an-image.jpg").write_text("hello")
    return folder / "photos"


@pytest.fixture(scope="module")
def runs(url: str, folder: Path, photos: Path) -> dict[str, Any]:
    """The plain indexer and ``--ray`` on the same photos, each into its own catalog; their JSON reports."""
    pytest.importorskip("ray")
    before = _ray_folders()
    plain = _run("catalog", "index", str(photos), "--url", url, "--catalog", str(folder / "plain"), "--json", "-q")
    ray = _run("catalog", "index", str(photos), "--url", url, "--catalog", str(folder / "ray"), "--json",
               "--ray", "--max-in-flight", "4")
    return {"plain": plain, "ray": ray, "ray_folders_before": before}


def _catalog(folder: Path) -> dict[str, Any]:
    """Every image row (by path) with its garments, in a form two catalogs can be compared in."""
    db = Database.open(catalog=folder)
    with db.connect() as conn:
        images = conn.execute(
            "SELECT i.path, i.sha256, i.size_bytes, i.status, i.error, i.width, i.height, i.phash, i.model_name, "
            "i.label, i.label_score, i.embedding::text, m.name FROM images i "
            "LEFT JOIN embedding_models m ON m.id = i.embedding_model_id ORDER BY i.path").fetchall()
        garments = conn.execute(
            "SELECT i.path, g.ordinal, g.category, g.score, g.x1, g.y1, g.x2, g.y2, g.attributes, g.overlapped, "
            "g.embedding::text, m.name FROM garments g JOIN images i ON i.id = g.image_id "
            "LEFT JOIN embedding_models m ON m.id = g.embedding_model_id ORDER BY i.path, g.ordinal").fetchall()
    return {"images": images, "garments": garments}


def _vector(text: str | None) -> list[float]:
    return [] if text is None else json.loads(text)


def test_ray_stores_what_the_plain_indexer_stores(runs: dict[str, Any], folder: Path) -> None:
    for name in ("plain", "ray"):
        code, _, err = runs[name]
        assert code == 0, err
    plain_report, ray_report = (json.loads(runs[name][1]) for name in ("plain", "ray"))
    for key in ("indexed", "copied", "skipped", "failed", "deferred"):
        assert ray_report[key] == plain_report[key], (key, plain_report, ray_report)
    assert ray_report["indexed"] == SCENES + 1 and ray_report["copied"] == 1 and ray_report["failed"] == 2
    assert "images/s" in runs["ray"][2]  # progress lines, as the plain indexer prints them

    plain, ray = _catalog(folder / "plain"), _catalog(folder / "ray")
    assert len(ray["images"]) == len(plain["images"]) == SCENES + 2 + 2
    for a, b in zip(plain["images"], ray["images"], strict=True):
        assert a[:10] == b[:10]  # path, hashes, size, status, error, size in pixels, pHash, model, label
        assert b[10] == pytest.approx(a[10], abs=1e-3)
        assert b[12] == a[12]
        assert _vector(b[11]) == pytest.approx(_vector(a[11]), abs=2e-3)
    assert len(ray["garments"]) == len(plain["garments"]) > SCENES
    for a, b in zip(plain["garments"], ray["garments"], strict=True):
        assert b[:3] == a[:3]  # path, ordinal, category
        assert b[3:8] == pytest.approx(a[3:8], abs=1e-2)  # score and box (pixels) within float tolerance
        assert {g: v["label"] for g, v in b[8].items()} == {g: v["label"] for g, v in a[8].items()}
        assert b[9] == a[9] and b[11] == a[11]
        assert _vector(b[10]) == pytest.approx(_vector(a[10]), abs=2e-3)


def test_ray_records_bad_images_as_failed_with_their_message(runs: dict[str, Any], folder: Path) -> None:
    report = json.loads(runs["ray"][1])
    failed = {Path(e["image"]).name: e["error"] for e in report["errors"]}
    assert set(failed) == {"truncated.jpg", "not-an-image.jpg"}
    assert all(failed.values())
    db = Database.open(catalog=folder / "ray")
    with db.connect() as conn:
        rows = conn.execute("SELECT path, error FROM images WHERE status = 'failed' ORDER BY path").fetchall()
    assert [(Path(p).name, e) for p, e in rows] == sorted(failed.items())


def test_a_second_ray_run_changes_nothing(runs: dict[str, Any], url: str, folder: Path, photos: Path) -> None:
    db = Database.open(catalog=folder / "ray")
    with db.connect() as conn:
        before = conn.execute("SELECT count(*), max(id), max(indexed_at) FROM images").fetchone()
        garments = conn.execute("SELECT count(*), max(id) FROM garments").fetchone()
    code, out, err = _run("catalog", "index", str(photos), "--url", url, "--catalog", str(folder / "ray"), "--json",
                          "--ray")
    assert code == 0, err
    report = json.loads(out)
    assert (report["indexed"], report["copied"], report["failed"]) == (0, 0, 0)
    assert report["skipped"] == SCENES + 2 + 2
    with db.connect() as conn:
        assert conn.execute("SELECT count(*), max(id), max(indexed_at) FROM images").fetchone() == before
        assert conn.execute("SELECT count(*), max(id) FROM garments").fetchone() == garments


def test_new_files_in_a_ray_run_are_all_sent_over_two_replicas_and_gone_ones_pruned(runs: dict[str, Any], url: str,
                                                                                    folder: Path) -> None:
    more = folder / "more"
    extra = write_collection(folder / "extra", count=4, seed=SEED + 1, exact=0, reencoded=0, resized=0)
    more.mkdir()
    for i, path in enumerate(sorted(extra.garments)):
        shutil.copy(path, more / f"more-{i}.jpg")
    # The same server twice: round robin over replicas, two actors.
    code, out, err = _run("catalog", "index", str(more), "--url", f"{url},{url}", "--catalog", str(folder / "ray"),
                          "--json", "--ray", "--ray-actors", "2")
    assert code == 0, err
    assert json.loads(out)["indexed"] == 4

    (more / "more-0.jpg").unlink()  # --prune after a Ray run: one JSON line per folder, then the prune's
    code, out, err = _run("catalog", "index", str(more), "--url", url, "--catalog", str(folder / "ray"), "--json",
                          "--ray", "--prune")
    report, pruned = (json.loads(line) for line in out.splitlines())
    assert code == 0 and report["skipped"] == 3, err
    assert pruned["pruned"]["removed"] == 1 and pruned["pruned"]["folders"][0]["missing"] == [
        str((more / "more-0.jpg").resolve())]


def test_ray_leaves_no_process_or_folder_behind(runs: dict[str, Any]) -> None:
    deadline = time.monotonic() + 15
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ray_processes() == []
    assert _ray_folders() <= runs["ray_folders_before"]


@pytest.fixture()
def ray_head() -> Iterator[str]:
    """A one-node Ray cluster started with ``ray start --head`` (its own folder): its GCS address.
    Stopped by the ids of its processes (``ray stop`` would stop every Ray on the machine)."""
    pytest.importorskip("ray")
    folder = Path(tempfile.mkdtemp(prefix="fbrayh-"))
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--port=0", "--num-cpus=1",
               "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={folder}"]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        yield (folder / "ray_current_cluster").read_text().strip()
    finally:
        started = [p for p in psutil.process_iter(["cmdline"])
                   if any(str(folder) in arg for arg in (p.info["cmdline"] or []))]
        family = {p.pid: p for p in started}
        for process in started:
            with contextlib.suppress(psutil.Error):
                family.update({c.pid: c for c in process.children(recursive=True)})
        for process in family.values():
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(list(family.values()), timeout=10)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)


def test_ray_address_joins_a_running_cluster(ray_head: str, runs: dict[str, Any], url: str, folder: Path,
                                             photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the head keeps Ray's token authentication (~/.ray/auth_token)
    code, out, err = _run("catalog", "index", str(photos), "--url", url, "--catalog", str(folder / "joined"),
                          "--json", "--ray", "--ray-address", ray_head)
    stop_embedded(folder / "joined" / "postgres")
    assert code == 0, err
    report, plain = json.loads(out), json.loads(runs["plain"][1])
    assert [report[k] for k in ("indexed", "copied", "failed")] == [plain[k] for k in ("indexed", "copied", "failed")]


def test_a_ray_address_where_nothing_answers_is_a_clear_error(url: str, folder: Path, photos: Path) -> None:
    pytest.importorskip("ray")
    began = time.monotonic()
    code, _, err = _run("catalog", "index", str(photos), "--url", url, "--catalog", str(folder / "ray"), "--ray",
                        "--ray-address", "127.0.0.1:1")
    assert code == 2
    assert "nothing answers at the Ray address 127.0.0.1:1" in err
    assert time.monotonic() - began < 30  # Ray alone retries such an address for minutes


def test_an_unreachable_server_is_a_clear_error(folder: Path, photos: Path) -> None:
    pytest.importorskip("ray")
    code, _, err = _run("catalog", "index", str(photos), "--url", "127.0.0.1:1", "--catalog", str(folder / "ray"),
                        "--ray")
    assert code == 2
    assert "cannot reach the server at 127.0.0.1:1" in err
