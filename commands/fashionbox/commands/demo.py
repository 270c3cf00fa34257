"""``fashionbox demo``: the main job on the embedded default, start to finish, then exit.

1. build the model repository from the shipped weights (unless one is already there),
2. start the embedded Triton server on free loopback ports,
3. detect garments in sample images (generated scenes): a table and annotated pictures,
4. run a short closed-loop load test at concurrency 1 and 4,
5. stop the server.
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

        print(f"[1/5] converting the shipped weights into {repository} ({stale}) ...", flush=True)
        convert(ConvertOptions(out=repository))
    else:
        print(f"[1/5] using the model repository at {repository} (converted from the shipped weights)", flush=True)

    images = _sample_images(args.out / "samples", args.images)
    config = ServerConfig(repository=repository, grpc_port=find_free_port(), http_port=find_free_port(),
                          metrics_port=find_free_port(), log_path=args.out / "tritonserver.log")
    print("[2/5] starting the embedded Triton server ...", flush=True)
    with TritonServer(config) as server:
        url = server.endpoints.grpc
        print(f"      gRPC {url}, log {config.log_path}", flush=True)
        print("[3/5] detecting garments in the sample images:\n", flush=True)
        status = detect_files(images, url=url, draw_dir=args.out)
        print("[4/5] short load test (closed loop):", flush=True)
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
        print("[5/5] stopping the server", flush=True)
    print(f"annotated pictures and loadtest.json are in {args.out}")
    return status
