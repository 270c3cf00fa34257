"""Tuning without a server: configs rewritten through ModelConfig protobufs, and the search on known objectives."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from pathlib import Path

import pytest

from fashionbox import contract
from fashionbox.contract.labels import default_label_map
from fashionbox.converter.repository import (
    CONFIG_FILE,
    ModelScheduling,
    RepositorySettings,
    model_configs,
    write_model_config,
)
from fashionbox.core.serving import PostprocessParameters
from fashionbox.loadtest.printers import format_tune
from fashionbox.loadtest.tune import (
    ATTRIBUTES_MAX_BATCH_PARAMETER,
    ModelTuning,
    Trial,
    TuneConfig,
    TuneOptions,
    TuneReport,
    TuneSpace,
    apply_scheduling,
    configs_for,
    coordinate_descent,
    make_consistent,
    read_configs,
    scheduling_of,
    threads_of,
    tune,
    tuning_of,
    write_back,
)

CONFIGS = model_configs(RepositorySettings(), default_label_map())


def test_scheduling_is_read_back_from_a_generated_config() -> None:
    assert scheduling_of(CONFIGS[contract.DETECTOR_MODEL]) == RepositorySettings().detector
    assert scheduling_of(CONFIGS[contract.ATTRIBUTES_MODEL]).max_batch_size == 64


def test_apply_scheduling_changes_only_scheduling_fields() -> None:
    wanted = ModelScheduling(instances=3, max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_us=500)
    before = CONFIGS[contract.DETECTOR_MODEL]
    after = apply_scheduling(before, wanted)
    assert scheduling_of(after) == wanted
    assert after.instance_group[0].kind == before.instance_group[0].kind
    assert after.parameters == before.parameters and after.input == before.input and after.output == before.output
    assert before.max_batch_size == 8  # the original is untouched


def test_the_ensemble_batch_follows_its_smallest_step_and_postprocess_follows_attributes() -> None:
    changed = dict(CONFIGS)
    changed[contract.PREPROCESS_MODEL] = apply_scheduling(
        changed[contract.PREPROCESS_MODEL], ModelScheduling(max_batch_size=4)
    )
    changed[contract.ATTRIBUTES_MODEL] = apply_scheduling(
        changed[contract.ATTRIBUTES_MODEL], ModelScheduling(max_batch_size=32)
    )
    consistent = make_consistent(changed)
    assert consistent[contract.ENSEMBLE_MODEL].max_batch_size == 4
    post = consistent[contract.POSTPROCESS_MODEL]
    assert post.parameters[ATTRIBUTES_MAX_BATCH_PARAMETER].string_value == "32"
    assert CONFIGS[contract.ENSEMBLE_MODEL].max_batch_size == 8  # copies, not edits


def test_the_coupled_parameter_is_a_postprocess_parameter() -> None:
    assert ATTRIBUTES_MAX_BATCH_PARAMETER in {f.name for f in dataclasses.fields(PostprocessParameters)}


def _write(repository: Path) -> None:
    for name, config in CONFIGS.items():
        (repository / name).mkdir(parents=True)
        write_model_config(repository / name / CONFIG_FILE, config)


def test_write_back_rewrites_exactly_the_changed_configs(tmp_path: Path) -> None:
    _write(tmp_path)
    untouched = (tmp_path / contract.DETECTOR_MODEL / CONFIG_FILE).read_text()
    config: TuneConfig = (
        (contract.PREPROCESS_MODEL, ModelScheduling(instances=2, max_batch_size=4)),
        (contract.DETECTOR_MODEL, RepositorySettings().detector),
    )
    written = write_back(tmp_path, config)
    assert sorted(p.parent.name for p in written) == [contract.ENSEMBLE_MODEL, contract.PREPROCESS_MODEL]
    again = read_configs(tmp_path)
    assert again == configs_for(CONFIGS, config)
    assert scheduling_of(again[contract.PREPROCESS_MODEL]) == ModelScheduling(instances=2, max_batch_size=4)
    assert (tmp_path / contract.DETECTOR_MODEL / CONFIG_FILE).read_text() == untouched
    assert write_back(tmp_path, config) == []  # idempotent


def _objective(config: TuneConfig, slo_p99_ms: float = 100.0) -> tuple[float, float]:
    """Throughput peaks at 2 detector instances and batch 8; a long queue delay breaks the SLO."""
    s = dict(config)["detector"]
    throughput = 100.0 - 20 * abs(s.instances - 2) - 5 * abs(math.log2(s.max_batch_size) - 3)
    p99 = 50.0 + s.max_queue_delay_us / 40
    return throughput, p99


def _search(
    space: TuneSpace, start: TuneConfig, max_trials: int, slo: float = 100.0
) -> tuple[list[Trial], Trial, list[TuneConfig]]:
    calls: list[TuneConfig] = []

    async def evaluate(config: TuneConfig, change: str) -> Trial:
        calls.append(config)
        throughput, p99 = _objective(config)
        return Trial(len(calls) - 1, config, change, throughput, p99, 4, p99 <= slo)

    trials, best = asyncio.run(coordinate_descent(evaluate, start, space, max_trials=max_trials))
    return trials, best, calls


SPACE = TuneSpace(
    models=("detector",), instances=(1, 2, 3, 4), max_batch_sizes=(1, 2, 4, 8, 16, 32), queue_delays_us=(0, 1000, 4000)
)
START: TuneConfig = (("detector", ModelScheduling(instances=1, max_batch_size=1)),)


def test_tune_serves_a_copy_through_the_launcher_it_is_handed(tmp_path: Path) -> None:
    original = tmp_path / "repository"
    original.mkdir()
    _write(original)
    before = {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()}
    launched: list[tuple[Path, Path | None]] = []

    class Launched(Exception):
        pass

    def launch(repository: Path, log_path: Path | None) -> contextlib.AbstractContextManager[str]:
        launched.append((repository, log_path))
        assert {p.relative_to(repository): p.read_bytes() for p in repository.rglob("*") if p.is_file()} == before
        raise Launched

    with pytest.raises(Launched):
        tune(TuneOptions(repository=original, images=(b"jpeg",), server_log=tmp_path / "server.log"), launch=launch)
    ((served, log_path),) = launched
    assert served != original and log_path == tmp_path / "server.log"
    assert not served.exists(), "the copy is removed when tune ends"
    assert {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()} == before


def test_coordinate_descent_finds_the_optimum_with_far_fewer_trials_than_the_cross_product() -> None:
    trials, best, calls = _search(SPACE, START, max_trials=40)
    assert dict(best.config)["detector"] == ModelScheduling(instances=2, max_batch_size=8)
    assert len(trials) < SPACE.size(threaded=()) == 72  # START has no threads: they are not searched
    assert all("threads" not in t.change for t in trials)
    assert len(calls) == len(set(calls)) == len(trials)  # each configuration measured once
    assert trials[0].change == "baseline"
    assert any(t.change == "detector.instances 1 -> 2" for t in trials)


def test_configurations_that_break_the_slo_are_never_chosen() -> None:
    _, best, _ = _search(SPACE, START, max_trials=40)
    assert dict(best.config)["detector"].max_queue_delay_us < 4000


def test_the_trial_budget_is_respected() -> None:
    trials, _, _ = _search(SPACE, START, max_trials=5)
    assert len(trials) == 5


def test_preferred_sizes_larger_than_the_batch_are_skipped_not_tried() -> None:
    space = TuneSpace(
        models=("detector",), instances=(1,), max_batch_sizes=(4,), queue_delays_us=(0,), preferred=((), (2,), (8,))
    )
    start: TuneConfig = (("detector", ModelScheduling(max_batch_size=4)),)
    _trials, _, calls = _search(space, start, max_trials=10)
    assert all(max(dict(c)["detector"].preferred_batch_sizes, default=0) <= 4 for c in calls)


def test_a_failed_trial_never_wins() -> None:
    async def evaluate(config: TuneConfig, change: str) -> Trial:
        if change != "baseline":
            return Trial(1, config, change, 1e9, 1.0, 4, True, (), "load failed")
        return Trial(0, config, change, 10.0, 50.0, 4, True)

    _, best = asyncio.run(coordinate_descent(evaluate, START, SPACE, max_trials=6))
    assert best.change == "baseline"


def test_threads_are_read_set_and_written_back_only_where_a_model_has_them(tmp_path: Path) -> None:
    assert tuning_of(CONFIGS[contract.DETECTOR_MODEL]) == ModelTuning(
        **dataclasses.asdict(RepositorySettings().detector), threads=RepositorySettings().ort.intra_op_threads)
    assert threads_of(CONFIGS[contract.PREPROCESS_MODEL]) == 0  # no runtime threads: nothing to search
    _write(tmp_path)
    config: TuneConfig = (
        (contract.DETECTOR_MODEL, ModelTuning(**dataclasses.asdict(RepositorySettings().detector), threads=2)),
        (contract.PREPROCESS_MODEL, tuning_of(CONFIGS[contract.PREPROCESS_MODEL])),
    )
    written = write_back(tmp_path, config)
    assert [p.parent.name for p in written] == [contract.DETECTOR_MODEL]
    again = read_configs(tmp_path)
    assert threads_of(again[contract.DETECTOR_MODEL]) == 2
    assert tuning_of(again[contract.DETECTOR_MODEL]) == dict(config)[contract.DETECTOR_MODEL]
    assert threads_of(again[contract.ATTRIBUTES_MODEL]) == RepositorySettings().ort.intra_op_threads  # not tuned
    with pytest.raises(ValueError, match="has no intra_op_threads parameter"):
        configs_for(CONFIGS, ((contract.PREPROCESS_MODEL, ModelTuning(threads=2)),))
    with pytest.raises(ValueError, match="threads must not be negative"):
        ModelTuning(threads=-1)


def _threads_objective(config: TuneConfig) -> tuple[float, float]:
    """A 4-core host: instances x threads past 4 oversubscribe; two threads per instance work best."""
    s = dict(config)["detector"]
    used = s.instances * s.threads
    throughput = 10.0 * min(used, 4) * {1: 1.0, 2: 1.1, 4: 0.9}[s.threads] - 15.0 * max(used - 4, 0)
    return throughput, 200.0 / s.threads


def test_the_search_moves_threads_for_models_that_have_them_and_finds_the_best_split() -> None:
    space = TuneSpace(models=("detector", "preprocess"), instances=(1, 2), threads=(1, 2, 4), max_batch_sizes=(8,),
                      queue_delays_us=(0,))
    start: TuneConfig = (("detector", ModelTuning(instances=1, threads=1)), ("preprocess", ModelScheduling()))

    async def evaluate(config: TuneConfig, change: str) -> Trial:
        throughput, p99 = _threads_objective(config)
        return Trial(0, config, change, throughput, p99, 4, p99 <= 250.0)

    trials, best = asyncio.run(coordinate_descent(evaluate, start, space, max_trials=20))
    assert dict(best.config)["detector"] == ModelTuning(instances=2, threads=2)
    detector = [t.change for t in trials if t.change.startswith("detector")]
    assert detector[:3] == ["detector.instances 1 -> 2", "detector.threads 1 -> 2",
                            "detector.threads 2 -> 4"]  # 2 x 4 oversubscribes: 2 x 2 stays
    assert not any(t.change.startswith("preprocess.threads") for t in trials)  # it has none


def test_the_split_move_trades_threads_for_instances_where_neither_coordinate_alone_gains() -> None:
    """bench_spinning's YOLOv8s-seg-sized detector on 2 cores (images/s): from 1 instance x 2 threads,
    a second instance oversubscribes and one thread idles a core; 2 x 1 is found only by the split."""
    measured = {(1, 1): 3.38, (1, 2): 4.62, (2, 1): 5.25, (2, 2): 4.69}
    space = TuneSpace(models=("detector",), instances=(1, 2), threads=(1, 2), max_batch_sizes=(8,),
                      queue_delays_us=(0,))

    async def evaluate(config: TuneConfig, change: str) -> Trial:
        s = dict(config)["detector"]
        return Trial(0, config, change, measured[(s.instances, s.threads)], 100.0, 4, True)

    start: TuneConfig = (("detector", ModelTuning(instances=1, threads=2)),)
    trials, best = asyncio.run(coordinate_descent(evaluate, start, space, max_trials=10))
    assert [t.change for t in trials] == ["baseline", "detector.instances 1 -> 2", "detector.threads 2 -> 1",
                                          "detector.instances x threads 1x2 -> 2x1"]
    assert dict(best.config)["detector"] == ModelTuning(instances=2, threads=1)
    options, here = space.line("instances x threads", ModelTuning(instances=2, threads=1))
    assert options == [(2, 1), (1, 2)] and here == 0


def test_the_split_move_walks_its_line_and_names_each_step_from_where_it_stood() -> None:
    space = TuneSpace(models=("detector",), instances=(1, 2, 4), threads=(1, 2, 4), max_batch_sizes=(8,),
                      queue_delays_us=(0,))

    async def evaluate(config: TuneConfig, change: str) -> Trial:  # 4 cores: more instances, fewer threads win
        s = dict(config)["detector"]
        used = s.instances * s.threads
        return Trial(0, config, change, 10.0 * s.instances - (100.0 if used > 4 else 0.0), 100.0, 4, True)

    start: TuneConfig = (("detector", ModelTuning(instances=1, threads=4)),)
    trials, best = asyncio.run(coordinate_descent(evaluate, start, space, max_trials=20))
    assert dict(best.config)["detector"] == ModelTuning(instances=4, threads=1)
    split = [t.change for t in trials if "x threads" in t.change]
    assert split[:2] == ["detector.instances x threads 1x4 -> 2x2", "detector.instances x threads 2x2 -> 4x1"]


def test_thread_candidates_above_the_cores_are_left_out_and_the_size_counts_threaded_models() -> None:
    space = TuneSpace(models=("detector", "preprocess"), instances=(1, 2), threads=(1, 2, 4, 8),
                      max_batch_sizes=(8,), queue_delays_us=(0,))
    assert space.within(2).threads == (1, 2)
    assert space.within(16).threads == (1, 2, 4, 8)
    assert TuneSpace(threads=(2, 4)).within(1).threads == (2,)  # the smallest stays: the space is never empty
    assert space.size(threaded=("detector",)) == (2 * 4) * 2
    assert space.size(threaded=()) == 2 * 2


def test_bad_spaces_are_refused() -> None:
    with pytest.raises(ValueError):
        TuneSpace(models=())
    with pytest.raises(ValueError):
        TuneSpace(instances=(1, 1))
    with pytest.raises(ValueError):
        TuneSpace(queue_delays_us=(-1,))
    with pytest.raises(ValueError):
        TuneSpace(threads=(0, 1))


def _trial(index: int, config: TuneConfig, throughput: float, p99: float = 50.0) -> Trial:
    return Trial(index, config, "x", throughput, p99, 4, True)


def _measured(index: int, config: TuneConfig, levels: dict[int, tuple[float, float]], slo: float) -> Trial:
    """A trial from points at each concurrency: ``{concurrency: (requests/s, p99 ms)}``."""
    from fashionbox.loadtest.report import LoadLevel, Point
    from fashionbox.loadtest.stats import LatencyHistogram
    from fashionbox.loadtest.tune import _trial_from_points

    points = []
    for concurrency, (rps, p99) in levels.items():
        histogram = LatencyHistogram()
        for k in range(100):
            histogram.record_s(p99 * (0.5 + 0.5 * k / 98) / 1000)
        points.append(Point(target="t", load=LoadLevel("closed", concurrency), duration_s=9.0, windows_used=3,
                            throughput_rps=rps, latency=histogram.summary(), errors={}, requests=100,
                            bytes_sent=0, stable=True, note=""))
    return _trial_from_points(index, config, "x", points, slo)


def test_the_report_gives_the_gain_at_one_concurrency_beside_the_capacity_gain() -> None:
    """A baseline whose p99 crosses the SLO by a few ms at the best's concurrency falls back a level: the
    capacity gain then counts the step between levels (+20 %), the same-concurrency gain does not (+4 %)."""
    best_config: TuneConfig = (("detector", ModelScheduling(instances=2)),)
    baseline = _measured(0, START, {2: (50.0, 100.0), 4: (57.7, 170.0)}, 150.0)
    best = _measured(1, best_config, {2: (52.0, 95.0), 4: (59.8, 140.0)}, 150.0)
    assert (baseline.concurrency, baseline.throughput_rps, best.concurrency) == (2, 50.0, 4)
    report = TuneReport(repository=Path("r"), slo_p99_ms=150.0, concurrency=(2, 4), space=SPACE,
                        trials=(baseline, best), best=best, baseline=baseline, min_gain=0.03)
    assert report.gain == pytest.approx(59.8 / 50.0 - 1)
    level, gain = report.level_gain
    assert level == 4 and gain == pytest.approx(59.8 / 57.7 - 1)
    assert report.to_dict()["level_gain"] == {"concurrency": 4, "gain": round(59.8 / 57.7 - 1, 4)}
    text = format_tune(report)
    assert "throughput gain within the SLO: +20%" in text
    assert "capacity within the SLO is at concurrency 2 (its p99 there: 1" in text
    assert "at concurrency 4 the gain is +4%" in text
    # measured at one level only, or both at the same level: nothing more to say
    same = _measured(1, best_config, {2: (60.0, 95.0), 4: (59.0, 160.0)}, 150.0)
    report = dataclasses.replace(report, trials=(baseline, same), best=same)
    assert report.level_gain == (2, pytest.approx(0.2)) and "the gain is" not in format_tune(report)


@pytest.mark.parametrize(
    ("baseline_again", "best_again", "confirmed"),
    [(100.0, 110.0, True), (100.0, 101.0, False), (100.0, 90.0, False)],
)
def test_a_recommendation_counts_only_if_it_still_wins_back_to_back(
    baseline_again: float, best_again: float, confirmed: bool
) -> None:
    best_config: TuneConfig = (("detector", ModelScheduling(instances=2)),)
    report = TuneReport(
        repository=Path("r"), slo_p99_ms=100.0, concurrency=(4,), space=SPACE,
        trials=(_trial(0, START, 100.0), _trial(1, best_config, 130.0)), best=_trial(1, best_config, 130.0),
        baseline=_trial(0, START, 100.0),
        confirmation=(_trial(2, START, baseline_again), _trial(3, best_config, best_again)), min_gain=0.03,
    )  # fmt: skip
    assert report.confirmed is confirmed
    assert report.gain == pytest.approx(best_again / baseline_again - 1)
    assert report.to_dict()["confirmed"] is confirmed
