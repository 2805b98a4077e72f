"""search.replay: strategies scored on recorded learning curves, with the project's own scheduler and
searcher. Hand-made tables with a known answer (fast), and two recorded searches on a local Ray
(their trials replay synthetic curves): one with every trial run to the end (`budget: {stopping:
none}`), one with ASHA on."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from bench.synthetic import synthetic_recording
from search import replay as R
from search import run

from searchutil import write_space

ARMS = ("resnet18-v1-none-t5", "resnet34-v1-none-t5")
HAND_SPACE = """name: hand
metric: map50
arms: {backbone: [resnet18, resnet34], version: [v1]}
params:
  lr: {type: float, low: 0.001, high: 0.1, log: true}
budget: {max_epochs: 8, grace_period: 1, reduction_factor: 2, trials_per_arm: 3, max_concurrent: 2, stopping: none}
"""
LRS = (0.001, 0.01, 0.1)  # a third of the log range apart: every proposal lands near one of them


def saturating(top: float, rate: float = 0.5) -> list[float]:
    return [top * (1 - math.exp(-rate * e)) for e in range(1, 9)]


def write_table(folder: Path, curves: dict[str, list[list[float]]], space: str = HAND_SPACE) -> Path:
    """A recording (curves.json + space.yaml) with, per arm, one configuration per curve (lr from LRS)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(space)
    trials = [{"trial_id": f"{arm[:8]}-{i}", "arm": arm, "params": {"lr": LRS[i]}, "status": "finished",
               "values": values, "costs": [10.0] * len(values), "reported_at": []}
              for arm, table in curves.items() for i, values in enumerate(table)]
    doc = {"format": R.FORMAT, "metric": "map50", "space_sha256": hashlib.sha256(space.encode()).hexdigest(),
           "command": "hand-made", "source": "hand-made", "trials": trials}
    (folder / R.CURVES).write_text(json.dumps(doc))
    return folder


# ------------------------------------------------------------------------------------------------
# Hand-made tables with a known answer


def test_a_configuration_best_from_the_first_epoch_is_found_by_every_strategy(tmp_path):
    # lr 0.01 is the best of its arm at every epoch, by a wide margin
    table = {arm: [saturating(0.2), saturating(0.6), saturating(0.3)] for arm in ARMS}
    rec = R.load_recording(write_table(tmp_path / "rec", table))
    strategies = ["asha-tpe:1:2", "asha-tpe:2:3", "asha-random:1:3", "joint-asha-tpe:1:3", "tpe-full", "grid",
                  "one-epoch-top1"]
    results = R.replay(rec, strategies, repeats=3, workers=2, budget=4.0)
    for name, outs in results.items():
        for o in outs:
            assert not o.unrecorded
            assert o.final_regret == {arm: 0.0 for arm in ARMS}, (name, o.seed, o.final_regret)
            assert R.ranking_kept(rec, o)


def test_grid_best_equals_the_recorded_best_exactly(tmp_path):
    table = {ARMS[0]: [saturating(0.2), saturating(0.6), saturating(0.3)],
             ARMS[1]: [[0.1, 0.4, 0.35, 0.3, 0.3, 0.3, 0.3, 0.3], saturating(0.3), saturating(0.2)]}
    rec = R.load_recording(write_table(tmp_path / "rec", table))
    assert rec.best(ARMS[1]) == 0.4  # a best epoch in the middle of a curve counts
    for o in R.replay(rec, ["grid"], repeats=4, workers=3, budget=1.0)["grid"]:
        assert o.final_best == {arm: rec.best(arm) for arm in ARMS}
        assert o.epochs == rec.grid_epochs() and o.trials == len(rec.curves)


def test_one_epoch_then_top_k_misses_a_slow_starter_that_finishes_best(tmp_path):
    slow = [0.01, 0.02, 0.05, 0.2, 0.5, 0.7, 0.8, 0.85]  # last at epoch 1, best from epoch 5 on
    table = {arm: [saturating(0.3, rate=3.0), slow, saturating(0.25, rate=3.0)] for arm in ARMS}
    rec = R.load_recording(write_table(tmp_path / "rec", table))
    results = R.replay(rec, ["one-epoch-top1", "one-epoch-top2", "grid"], repeats=3, workers=2, budget=1.0)
    for o in results["one-epoch-top1"] + results["one-epoch-top2"]:
        assert all(math.isclose(r, 0.85 - 0.3 * (1 - math.exp(-24.0)), abs_tol=1e-9) for r in o.final_regret.values())
        assert o.epochs == 2 * (3 + int(o.strategy[-1]) * 7)  # 3 first epochs, then K x 7 per arm
    for o in results["grid"]:
        assert o.final_regret == {arm: 0.0 for arm in ARMS}


def test_budget_is_gpu_time_and_the_same_for_every_strategy(tmp_path):
    table = {arm: [saturating(0.2), saturating(0.6), saturating(0.3)] for arm in ARMS}
    rec = R.load_recording(write_table(tmp_path / "rec", table))
    assert rec.grid_cost() == 10.0 * 8 * 6
    for name, outs in R.replay(rec, ["asha-tpe:1:2", "tpe-full", "grid"], repeats=2, workers=2, budget=0.25).items():
        for o in outs:  # stops at the first epoch that reaches a quarter of the grid's GPU-time
            assert o.spent_s == 0.25 * rec.grid_cost(), name


def test_matcher_scales_log_parameters_and_requires_categorical_values(tmp_path):
    space = HAND_SPACE.replace("params:\n", "params:\n  optimizer: {type: categorical, choices: [sgd, adamw]}\n")
    rec = R.load_recording(write_table(tmp_path / "rec", {ARMS[0]: [saturating(0.2)] * 3}, space=space))
    curves = [dataclass_replace(c, params={**c.params, "optimizer": "sgd" if i < 2 else "adamw"})
              for i, c in enumerate(rec.curves)]
    m = R.Matcher(rec.space, curves)
    curve, dist = m.nearest({"lr": 0.012, "optimizer": "sgd"})
    assert curve.params["lr"] == 0.01 and dist == pytest.approx(math.log(1.2) / math.log(100))
    curve, dist = m.nearest({"lr": 0.012, "optimizer": "adamw"})  # only lr 0.1 has adamw: a long way, same category
    assert curve.params == {"lr": 0.1, "optimizer": "adamw"} and dist == pytest.approx(math.log(0.1 / 0.012) / math.log(100))


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_bad_recordings_and_strategies_are_refused_with_the_reason(tmp_path):
    table = {arm: [saturating(0.2), saturating(0.6), saturating(0.3)] for arm in ARMS}
    folder = write_table(tmp_path / "rec", table)
    rec = R.load_recording(folder)
    with pytest.raises(R.ReplayError, match="unknown strategy 'hyperband'"):
        R.replay(rec, ["hyperband"], repeats=1, workers=1, budget=1.0)
    with pytest.raises(R.ReplayError, match=r"asha-tpe:x:3.*two integers"):
        R.replay(rec, ["asha-tpe:x:3"], repeats=1, workers=1, budget=1.0)
    (folder / "space.yaml").write_text(HAND_SPACE.replace("0.1, log", "0.2, log"))
    with pytest.raises(R.ReplayError, match="another version of .*space.yaml"):
        R.load_recording(folder)
    with pytest.raises(R.ReplayError, match="neither a run folder"):
        R.load_recording(tmp_path)
    other = write_table(tmp_path / "other", {"resnet50-v1-none-t5": [saturating(0.2)]})
    with pytest.raises(R.ReplayError, match="arm 'resnet50-v1-none-t5' is not one of its space's arms"):
        R.load_recording(other)
    empty = write_table(tmp_path / "empty", {ARMS[0]: [[]]})
    with pytest.raises(R.ReplayError, match="no trial reported an epoch"):
        R.load_recording(empty)
    assert R.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2


def test_cli_writes_replay_md_with_the_table_the_figure_and_a_recommendation(tmp_path, capsys):
    table = {arm: [saturating(0.2), saturating(0.6), saturating(0.3)] for arm in ARMS}
    folder = write_table(tmp_path / "rec", table)
    out = tmp_path / "out"
    assert R.main([str(folder), "--out", str(out), "--repeats", "2", "--strategies", "asha-tpe:1:2", "grid"]) == 0
    md = (out / "replay.md").read_text()
    assert "| asha-tpe:1:2 | yes |" in md and "| grid | yes |" in md
    assert "Recommended for this data: `grace_period: 1`, `reduction_factor: 2`" in md
    assert (out / "regret.png").stat().st_size > 0
    rows = json.loads((out / "replay.json").read_text())["rows"]
    assert [r["strategy"] for r in rows] == ["asha-tpe:1:2", "grid"]


# ------------------------------------------------------------------------------------------------
# Recorded runs on a real local Ray. What is recorded is a real search's run folder; its trials replay
# synthetic curves (search.curve_trainable, --replay-curves) instead of training: the recording, the
# scheduler's decisions and their replay do not depend on where the values came from.


def _search(tmp, data, budget: str, name: str) -> Path:
    space = write_space(tmp, data, f"""
arms: {{backbone: [resnet18], version: [v1, v2]}}
params:
  lr: {{type: float, low: 0.005, high: 0.03, log: true}}
budget: {budget}
""", name=f"{name}.yaml")
    curves = synthetic_recording(space, tmp / f"{name}-curves", per_arm=6, command="test")
    assert run.main(["--space", str(space), "--storage", str(tmp / "runs"), "--name", name, "--num-cpus", "2",
                     "--replay-curves", str(curves), "--time-scale", "0.01"]) == 0
    return tmp / "runs" / name


@pytest.fixture(scope="module")
def full_curves(tiny_data, tmp_path_factory):
    return _search(tmp_path_factory.mktemp("full"), tiny_data,
                   "{max_epochs: 3, trials_per_arm: 3, max_concurrent: 2, stopping: none, sampler: random}", "full")


@pytest.fixture(scope="module")
def asha_run(tiny_data, tmp_path_factory):
    return _search(tmp_path_factory.mktemp("asha"), tiny_data,
                   "{max_epochs: 4, grace_period: 1, reduction_factor: 2, trials_per_arm: 5, max_concurrent: 2}", "asha")


@pytest.mark.slow
def test_stopping_none_runs_every_trial_to_the_end_and_the_grid_replays_its_best(full_curves, tmp_path):
    rec = R.load_recording(full_curves)
    assert len(rec.curves) == 6 and all(len(c.values) == 3 and c.status == "finished" for c in rec.curves)
    assert all(c.costs[0] > 0 and len(c.reported_at) == 3 for c in rec.curves)
    saved = R.load_recording(rec.save(tmp_path / "compact", command="test").parent)
    for arm in rec.arms():
        assert saved.best(arm) == pytest.approx(rec.best(arm), abs=1e-6)
    for o in R.replay(rec, ["grid"], repeats=2, workers=2, budget=1.0)["grid"]:
        assert o.final_best == {arm: rec.best(arm) for arm in rec.arms()}


@pytest.mark.slow
def test_a_recorded_asha_run_replayed_in_its_order_stops_the_same_trials_at_the_same_epochs(asha_run, tmp_path):
    rec = R.load_recording(asha_run)
    assert len(rec.curves) == 10
    short = rec.short()
    assert short, "ASHA stopped no trial: nothing to compare"
    replayed = R.recorded_order_decisions(rec)
    assert replayed == {c.trial_id: len(c.values) for c in rec.curves}
    # The strategies that need epochs ASHA never ran are marked, not scored.
    assert R.main([str(asha_run), "--out", str(tmp_path / "o"), "--repeats", "2", "--strategies", "grid",
                   "asha-tpe:1:2"]) == 0
    md = (tmp_path / "o" / "replay.md").read_text()
    assert f"{len(short)} trials did not run the full budget" in md
    assert "| grid | no: needs epochs never recorded, 2 of 2 repeats" in md
    assert f"{len(rec.curves)} of {len(rec.curves)} trials stopped at the same epoch" in md
