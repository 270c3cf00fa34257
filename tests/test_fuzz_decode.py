"""Bounded fuzzing of decode_image + letterbox: any bytes are served or refused, nothing else.

Reproducible (derandomized) and small enough for every CI run; ``scripts/fuzz.sh`` runs the same
checks (``fuzz_decode.py``) for as long as it is given.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis (requirements-dev.txt)")

from fuzz_decode import (  # noqa: E402
    MUTATIONS,
    SEEDS,
    Mutation,
    check_one,
    mutate,
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


MEMORY_RUN = """
import json, random, sys
sys.path.insert(0, {tests!r})
from fuzz_decode import SEEDS, check_one, outcome_class, peak_rss_mb, random_input

for seed in SEEDS:  # warm up: imports, codecs and their first buffers are not growth
    check_one(seed)
before_mb = peak_rss_mb()
rng, kept, classes = random.Random(11), [], set()
for _ in range({count}):
    classes.add(outcome_class(check_one(random_input(rng))))
    kept.append(b"x" * {leak_bytes})  # the leaking stand-in, when the caller asks for one
print(json.dumps({{"classes": sorted(classes), "growth_mb": peak_rss_mb() - before_mb}}))
"""


def seeded_run_in_a_fresh_process(count: int, leak_bytes: int = 0) -> tuple[set[str], float]:
    """Classes of outcome, and how far the peak RSS rose over a baseline taken after warming up.

    In a fresh process, so the baseline is this run's own: within the test session the peak RSS
    has long been raised by earlier tests (model loading, servers' clients), and a growth measured
    against that high-water mark could never show. (The child reads its own address space's peak,
    ``VmHWM``: its ``ru_maxrss`` would start at this session's.) ``leak_bytes`` keeps that many
    bytes per input alive, standing in for a decoder that leaks.
    """
    script = MEMORY_RUN.format(tests=str(Path(__file__).parent), count=count, leak_bytes=leak_bytes)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return set(answer["classes"]), float(answer["growth_mb"])


def test_a_seeded_run_covers_both_outcomes_without_growing_memory() -> None:
    classes, growth_mb = seeded_run_in_a_fresh_process(count=2000)

    assert "served" in classes and len(classes) >= 5, classes
    assert growth_mb < PEAK_RSS_GROWTH_MB


def test_the_memory_check_catches_a_leak_of_its_own_size() -> None:
    """The same measurement with a stand-in leaking 2 MiB per input over 200 inputs (400 MiB) fails it."""
    _, growth_mb = seeded_run_in_a_fresh_process(count=200, leak_bytes=2 << 20)

    assert growth_mb >= PEAK_RSS_GROWTH_MB, f"a 400 MiB leak grew the peak by only {growth_mb:.0f} MB"
