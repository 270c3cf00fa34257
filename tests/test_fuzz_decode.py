"""Bounded fuzzing of decode_image + letterbox: any bytes are served or refused, nothing else.

Reproducible (derandomized) and small enough for every CI run; ``scripts/fuzz.sh`` runs the same
checks (``fuzz_decode.py``) for as long as it is given.
"""

from __future__ import annotations

import random

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs the 'dev' extra (hypothesis)")

from fuzz_decode import (  # noqa: E402
    MUTATIONS,
    SEEDS,
    Mutation,
    check_one,
    mutate,
    outcome_class,
    peak_rss_mb,
    random_input,
)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CI_SETTINGS = settings(
    max_examples=300,
    deadline=None,  # a shared 2-core machine makes timings noisy; check_one bounds each input itself
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PEAK_RSS_GROWTH_MB = 300
"""No input may cost much: the fuzz limits allow about 4 M pixels (tens of MB) per image."""

mutations = st.builds(
    Mutation,
    kind=st.integers(0, MUTATIONS - 1),
    where=st.floats(0, 1),
    size=st.integers(1, 64),
    payload=st.binary(min_size=1, max_size=16),
    other=st.integers(0, len(SEEDS) - 1),
)
signatures = st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"GIF89a"])


def test_every_seed_image_is_served_except_the_declared_bomb() -> None:
    outcomes = [check_one(seed) for seed in SEEDS]

    assert outcomes[:-1] == ["served"] * (len(SEEDS) - 1)
    assert outcomes[-1] == "image declares 900000000 pixels, over the limit of 4000000"


@CI_SETTINGS
@given(seed=st.integers(0, len(SEEDS) - 1), edits=st.lists(mutations, min_size=1, max_size=4))
def test_mutated_real_images_are_served_or_refused_with_a_reason(seed: int, edits: list[Mutation]) -> None:
    check_one(mutate(seed, edits))


@CI_SETTINGS
@given(prefix=signatures, body=st.binary(max_size=4096))
def test_arbitrary_bytes_are_served_or_refused_with_a_reason(prefix: bytes, body: bytes) -> None:
    check_one(prefix + body)


def test_a_seeded_run_covers_both_outcomes_without_growing_memory() -> None:
    rng = random.Random(11)
    before_mb = peak_rss_mb()

    classes = {outcome_class(check_one(random_input(rng))) for _ in range(2000)}

    assert "served" in classes and len(classes) >= 5, classes
    assert peak_rss_mb() - before_mb < PEAK_RSS_GROWTH_MB
