"""``fashionbox demo``: the main job on the embedded default, start to finish, then exit.

1. build the model repository from the shipped weights (unless one is already there),
2. start the embedded Triton server on free loopback ports,
3. detect garments in sample images (generated scenes): a table (with each photo's product vertical)
   and annotated pictures,
4. run a short closed-loop load test at concurrency 1 and 4,
5. index the sample images (and a flipped copy of the first) into a catalog on an embedded
   PostgreSQL with pgvector, then search it by category, for garments like the first photo's first
   garment, and for duplicates,
6. stop the server and the database.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fashionbox import contract

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def _sample_images(out_dir: Path, count: int) -> list[Path]:
    from fashionbox.commands.evaluation import heldout_samples

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for sample in heldout_samples(count, seed=2024):
        path = out_dir / f"{sample.name}.jpg"
        path.write_bytes(sample.data)
        paths.append(path)
    return paths


def _stale_reason(repository: Path) -> str:
    """Why ``repository`` must be converted again for the demo ("" when it holds the shipped weights as
    they are now: a repository left from an older checkout would otherwise be served silently)."""
    import json

    from fashionbox.models import default_weights, file_sha256

    manifest_file = repository / contract.MANIFEST_FILE
    if not manifest_file.is_file():
        return "none there yet"
    try:
        sources = json.loads(manifest_file.read_text())["sources"]
        recorded = (sources["detector"]["sha256"], sources["attributes"]["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    if recorded[0] != file_sha256(default_weights("detector")):
        return "it was converted from other detector weights than the shipped ones"
    if recorded[1] != file_sha256(default_weights("attributes")):
        return "it was converted from other attribute weights than the shipped ones"
    return ""


def run_demo(args: argparse.Namespace) -> int:
    from fashionbox.commands.detect import detect_files
    from fashionbox.loadtest import measure_concurrency
    from fashionbox.server import ServerConfig, TritonServer, find_free_port

    repository: Path = args.repository
    stale = _stale_reason(repository)
    if stale:
        from fashionbox.converter import ConvertOptions, convert

        print(f"[1/6] converting the shipped weights into {repository} ({stale}) ...", flush=True)
        convert(ConvertOptions(out=repository))
    else:
        print(f"[1/6] using the model repository at {repository} (converted from the shipped weights)", flush=True)

    images = _sample_images(args.out / "samples", args.images)
    config = ServerConfig(repository=repository, grpc_port=find_free_port(), http_port=find_free_port(),
                          metrics_port=find_free_port(), log_path=args.out / "tritonserver.log")
    print("[2/6] starting the embedded Triton server ...", flush=True)
    with TritonServer(config) as server:
        url = server.endpoints.grpc
        print(f"      gRPC {url}, log {config.log_path}", flush=True)
        print("[3/6] detecting garments in the sample images:\n", flush=True)
        status = detect_files(images, url=url, draw_dir=args.out)
        print("[4/6] short load test (closed loop):", flush=True)
        payloads = [p.read_bytes() for p in images]
        points = []
        for concurrency in (1, 4):
            point = measure_concurrency(url, payloads, concurrency=concurrency, duration_s=args.loadtest_s / 2,
                                        warmup_s=1.0, metrics="none")
            points.append(point.as_dict())
            lat = point.latency
            print(f"      concurrency {concurrency}: {point.throughput_rps:6.1f} images/s, "
                  f"p50 {lat.p50_ms:.1f} ms, p99 {lat.p99_ms:.1f} ms, errors {point.error_count}",
                  flush=True)
        (args.out / "loadtest.json").write_text(json.dumps({"points": points}, indent=2) + "\n")
        print("[5/6] catalog: index the samples, then search, 'more like this' and duplicates:", flush=True)
        catalog_status = _catalog(url, images, args.out)
        print("[6/6] stopping the server and the database", flush=True)
    print(f"annotated pictures, loadtest.json and catalog.json are in {args.out}")
    return status or catalog_status


def _catalog(url: str, images: list[Path], out: Path) -> int:
    """Index ``images`` and a flipped copy of the first into a fresh catalog under ``out``; print and
    write (``catalog.json``) a category search, the garments most like the first photo's first garment,
    and the duplicate groups."""
    import shutil

    from PIL import Image, ImageOps

    from fashionbox.catalog.database import Database
    from fashionbox.catalog.indexer import Indexer
    from fashionbox.catalog.queries import Catalog, SearchFilter
    from fashionbox.client import FashionClient

    photos = out / "catalog-photos"
    shutil.rmtree(photos, ignore_errors=True)
    photos.mkdir(parents=True)
    for path in images:
        shutil.copyfile(path, photos / path.name)
    with Image.open(images[0]) as first:
        ImageOps.mirror(first.convert("RGB")).save(photos / f"{images[0].stem}.flipped.jpg", quality=90)
    folder = out / "catalog"
    shutil.rmtree(folder, ignore_errors=True)
    db = Database.open(catalog=folder)
    try:
        with FashionClient(url) as client:
            report = Indexer(db, client).index_folder(photos)
            print(f"      indexed {report.indexed} photos ({report.failed} failed) into {db.describe()}", flush=True)
            catalog = Catalog(db)
            start = catalog.query_garment(photos / images[0].name, garment=1, client=client)
            category = start.category
            found = catalog.search(SearchFilter(category=category), limit=3)
            print(f"      search category={category!r}: " + ", ".join(f"{Path(h.image).name} ({h.score:.2f})"
                                                               for h in found), flush=True)
            similar = catalog.similar(start.vector, model=start.model, query=SearchFilter(), limit=3,
                                      exclude_images=catalog.same_photo(start.image_id))
            print(f"      like garment 1 of {images[0].name} ({start.category}): "
                  + ", ".join(f"{Path(h.image).name} ({h.score:.2f})" for h in similar), flush=True)
            groups = catalog.duplicates(kind="all")
            print(f"      duplicate groups: {[[Path(p).name for p in g] for g in groups]}", flush=True)
        (out / "catalog.json").write_text(json.dumps({
            "indexed": report.indexed, "failed": report.failed, "search": {"category": category, "images": [
                h.image for h in found]}, "similar": [h.image for h in similar], "duplicates": groups},
            indent=2) + "\n")
        return 1 if report.failed else 0
    finally:
        db.close()
