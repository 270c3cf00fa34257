"""Measures of the garment embedding and the vertical head on held-out generated data.

Shared by ``tests/benchmarks/bench_embedding.py``, ``bench_verticals.py`` and the floors in
``tests/test_embedding_head.py``:

* :func:`held_out_identities`: crops of held-out garment identities, ``views`` scenes each, cut
  as the server cuts a detection (JPEG, letterbox, jittered box);
* :func:`instance_recall`: query garment -> the same garment in other scenes, recall@k;
* :func:`attribute_pair_scores`: S3's protocol, two garments a pair when their label sets (the
  category and the attribute labels) have IoU >= 0.5; precision / recall / F1 at k;
* :func:`colour_histograms`: the baseline descriptor (joint RGB histogram, Hellinger-normalised).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from fashionbox.contract.labels import LabelMap
from fashionbox.models import AttributeClassifier
from fashionbox.training.retrieval import IdentityCrops, identity_crops, identity_seeds, product_crop

__all__ = [
    "HeldOutIdentities",
    "attribute_pair_scores",
    "colour_histograms",
    "embed",
    "held_out_identities",
    "held_out_products",
    "instance_recall",
    "label_set_iou",
]


@dataclass(frozen=True)
class HeldOutIdentities:
    crops: npt.NDArray[np.uint8]
    """``[N * views, C, C, 3]``, identity-major."""
    identity: npt.NDArray[np.int64]
    """Index of each crop's identity (0..N-1)."""
    view: npt.NDArray[np.int64]
    label_sets: list[frozenset[str]]
    """Per identity: its category and ``group=label`` attribute labels."""


def _worker(args: tuple[int, int, int, int, float, str]) -> IdentityCrops:
    identity, views, input_size, crop_size, jitter, labels_json = args
    return identity_crops(identity, views=views, crops_per_view=1, input_size=input_size, crop_size=crop_size,
                          jitter=jitter, label_map=LabelMap.from_dict(json.loads(labels_json)))


def held_out_identities(count: int, views: int, *, label_map: LabelMap, seed: int = 1, input_size: int = 320,
                        crop_size: int = 96, jitter: float = 0.06, workers: int = 2) -> HeldOutIdentities:
    """``count`` held-out garments (seeds disjoint from training), one jittered crop per view."""
    jobs = [(s, views, input_size, crop_size, jitter, label_map.to_json())
            for s in identity_seeds(seed, count, held_out=True)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            samples = list(pool.imap(_worker, jobs, chunksize=4))
    else:
        samples = [_worker(job) for job in jobs]
    crops = np.concatenate([s.crops for s in samples])
    identity = np.repeat(np.arange(count), views)
    view = np.tile(np.arange(views), count)
    label_sets = [frozenset([s.category, *(f"{g}={v}" for g, v in s.attributes)]) for s in samples]
    return HeldOutIdentities(crops, identity, view, label_sets)


def held_out_products(count: int, *, label_map: LabelMap, seed: int = 1, input_size: int = 320,
                      crop_size: int = 96) -> tuple[npt.NDArray[np.uint8], list[str]]:
    """``count`` held-out product photos as whole-photo crops, and their verticals."""
    pairs = [product_crop(s, input_size=input_size, crop_size=crop_size, label_map=label_map)
             for s in identity_seeds(seed, count, held_out=True)]
    return np.stack([c for c, _ in pairs]), [v for _, v in pairs]


def embed(classifier: AttributeClassifier, crops: npt.NDArray[np.uint8], key: str = "embeddings",
          batch: int = 256) -> npt.NDArray[np.float32]:
    """One output of ``classifier.outputs`` for every crop, batched."""
    classifier.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch):
            out.append(classifier.outputs(torch.from_numpy(np.ascontiguousarray(crops[start:start + batch])))[key])
    return torch.cat(out).numpy().astype(np.float32)


def colour_histograms(crops: npt.NDArray[np.uint8], bins: int = 8) -> npt.NDArray[np.float32]:
    """Joint RGB histogram of each crop (``bins`` per channel), square-rooted and L2-normalised
    (Hellinger), so a dot product compares two crops."""
    index = (crops.astype(np.int64) * bins // 256)
    flat = (index[..., 0] * bins + index[..., 1]) * bins + index[..., 2]
    flat = flat.reshape(len(crops), -1)
    counts = np.stack([np.bincount(row, minlength=bins**3) for row in flat]).astype(np.float32)
    root = np.sqrt(counts / counts.sum(1, keepdims=True))
    normalised: npt.NDArray[np.float32] = root / np.linalg.norm(root, axis=1, keepdims=True)
    return normalised


def _ranked(queries: npt.NDArray[np.float32], gallery: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    similarity = queries @ gallery.T
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def instance_recall(vectors: npt.NDArray[np.float32], data: HeldOutIdentities,
                    ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Queries: every identity's view 0; gallery: every other view of every identity. recall@k: the
    fraction of queries with the same garment among the k nearest (cosine) gallery crops."""
    query = data.view == 0
    ranked = _ranked(vectors[query], vectors[~query], max(ks))
    hits = data.identity[~query][ranked] == data.identity[query][:, None]
    return {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


def label_set_iou(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def attribute_pair_scores(vectors: npt.NDArray[np.float32], data: HeldOutIdentities,
                          ks: Sequence[int] = (1, 5, 10), threshold: float = 0.5) -> dict[str, float]:
    """S3's protocol. Queries: every identity's view 0; gallery: view 1 of every *other* identity
    (the query's own garment is left out: this measures "a garment like this one", not "this
    garment"). A gallery garment is relevant when its label set has IoU >= ``threshold`` with the
    query's. precision@k and recall@k are averaged over queries (queries with no relevant garment
    are skipped); F1@k is the harmonic mean of the two averages."""
    count = len(data.label_sets)
    query_rows = np.flatnonzero(data.view == 0)
    gallery_rows = np.flatnonzero(data.view == 1)
    relevant = np.array([[label_set_iou(data.label_sets[i], data.label_sets[j]) >= threshold and i != j
                          for j in range(count)] for i in range(count)])
    similarity = vectors[query_rows] @ vectors[gallery_rows].T
    np.fill_diagonal(similarity, -np.inf)  # the query's own garment
    ranked = np.argsort(-similarity, axis=1, kind="stable")
    scores: dict[str, float] = {}
    has = relevant.sum(1) > 0
    for k in ks:
        found = np.take_along_axis(relevant, ranked[:, :k], axis=1).sum(1)
        precision = float((found[has] / k).mean())
        recall = float((found[has] / relevant.sum(1)[has]).mean())
        scores[f"precision@{k}"] = precision
        scores[f"recall@{k}"] = recall
        scores[f"f1@{k}"] = 2 * precision * recall / max(precision + recall, 1e-12)
    scores["queries"] = float(has.sum())
    scores["mean_relevant_per_query"] = float(relevant.sum(1)[has].mean())
    return scores
