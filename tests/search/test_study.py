"""The study's question end to end on a real local Ray: a search with held-out test images, a
confirmation stage and a shared-hyperparameter baseline; what each stage may see, which seeds it
uses, and an exported configuration that retrains on the same images to the same numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from detector import config as C
from detector.data import load_splits
from detector.metrics import METRICS
from search import export, report
from search.results import ranked

pytestmark = pytest.mark.slow


@pytest.fixture
def study(study_run):
    """The suite's shared real search (tests/search/conftest.py `study_run`): (run folder, records,
    data, its folder)."""
    return study_run.run_dir, study_run.records, study_run.data, study_run.folder


def _seen(rec, study_run) -> dict:
    """The image ids the run was handed (recorded by faults.train_trial_recording_images)."""
    return json.loads((study_run.seen_dir / f"{rec.trial_id}.json").read_text())


def test_no_test_image_reaches_a_search_trial(study, study_run, tiny_data):
    run_dir, records, _, _ = study
    splits = load_splits(str(tiny_data), val_fraction=0.3, test_fraction=0.2, seed=4)
    test_ids = set(splits.test.image_ids)
    assert len(test_ids) == 2 and json.loads((run_dir / "run.json").read_text())["test_images"] == 2
    stages = {r.stage for r in records}
    assert stages == {"search", "confirm", "baseline"}
    for r in records:
        seen = _seen(r, study_run)
        if r.stage == "search":
            assert "test" not in seen and not (set(seen["train"]) | set(seen["val"])) & test_ids, r.trial_id
            assert not r.test
        else:  # confirmation and baseline runs score the test images at the epoch validation chose
            assert set(seen["test"]) == test_ids and not set(seen["train"]) & test_ids
            # Every metric the engine can select by (detector.metrics.METRICS), as the engine logged it
            # on the test images at the epoch validation chose, and at no other epoch.
            at_best = r.history[r.best_epoch - 1]
            assert r.test == {k: at_best[f"test_{k}"] for k in METRICS}, (r.trial_id, r.test)
            # Scored whenever validation chose a new best (strictly better), never at another epoch.
            vals = [h["map50"] for h in r.history]
            chosen = [i + 1 for i, v in enumerate(vals) if all(v > w for w in vals[:i])]
            assert [int(h["epoch"]) for h in r.history if "test_map50" in h] == chosen, (r.trial_id, vals)
        assert seen["val"] == list(map(int, splits.val.image_ids))  # one split for every stage


def test_confirmation_and_baseline_seeds_are_not_search_seeds(study):
    _, records, _, _ = study
    search_seeds = {r.config["seed"] for r in records if r.stage == "search"}
    for stage in ("confirm", "baseline"):
        seeds = sorted(r.config["seed"] for r in records if r.stage == stage)
        assert seeds == [1000, 1000, 1001, 1001] and not set(seeds) & search_seeds, stage
    base = [r for r in records if r.stage == "baseline"]
    assert all(r.config["lr"] == 0.01 for r in base) and {r.arm for r in base} == {"resnet18-v1-none-t5",
                                                                                     "resnet18-v2-none-t5"}


def test_the_places_that_choose_a_best_agree(study, tmp_path):
    run_dir, records, _, _ = study
    rows = {r["arm"]: r for r in report.write_report(run_dir, tmp_path / "rep")["rows"]}
    export.export(run_dir, tmp_path / "exp", source="search", weights=False)
    for arm, row in rows.items():
        chosen = ranked(records, arm)[0].trial_id
        confirmed_sources = {r.source_trial for r in records if r.stage == "confirm" and r.arm == arm}
        exported = yaml.safe_load((tmp_path / "exp" / f"{arm}.yaml").read_text())["search"]["trial_id"]
        assert row["best_trial"] == chosen == exported and confirmed_sources == {chosen}, arm


def test_report_answers_the_study_s_question(study, tmp_path):
    run_dir, _, _, _ = study
    report.write_report(run_dir, tmp_path / "rep")
    text = (tmp_path / "rep" / "report.md").read_text()
    first = text.split("## ")[1]
    assert first.startswith("Shared hyperparameters against a search per arm")
    assert "Scored on 2 held-out test images" in first and "Kendall's τ between the two rankings" in first
    assert "| resnet18-v1-none-t5 |" in first and "| resnet18-v2-none-t5 |" in first and "**Verdict.**" in first
    for arm in ("resnet18-v1-none-t5", "resnet18-v2-none-t5"):
        assert f"study_curves_{arm}.png" in text and f"detections_{arm}.png" in text
        assert (tmp_path / "rep" / f"detections_{arm}.png").read_bytes()[:4] == b"\x89PNG"


def test_exported_configuration_retrains_on_the_same_images_to_the_same_numbers(study, study_run, tmp_path):
    run_dir, records, tiny_data, _ = study
    export.export(run_dir, tmp_path / "exp", weights=False)  # --from confirm, the default here
    path = tmp_path / "exp" / "best.yaml"
    meta = yaml.safe_load(path.read_text())["search"]
    assert meta["selected_by"] == "confirm" and meta["split_seed"] == 4 and meta["confirmation"]["n"] == 2
    assert set(meta["test"]) == set(METRICS)  # each a mean and sd over the confirmation runs
    trial = next(r for r in records if r.trial_id == meta["trial_id"])
    cfg = C.load(path)
    assert cfg.seed == trial.config["seed"] and cfg.split_seed == 4
    val = load_splits(str(tiny_data), val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                      seed=cfg.split_seed).val
    assert list(map(int, val.image_ids)) == _seen(trial, study_run)["val"]
    # One thread, as the trial's Ray worker had: the same arithmetic, so the same numbers.
    out = subprocess.run([sys.executable, "-m", "detector.train", "--config", str(path), "--data", str(tiny_data),
                          "--out", str(tmp_path / "retrain"), "--quiet", "--device", "cpu"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr  # same data fingerprint as the run's
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["data_fingerprint"] == json.loads((run_dir / "run.json").read_text())["data_fingerprint"]
    retrained = [json.loads(x) for x in (tmp_path / "retrain" / "metrics.jsonl").read_text().splitlines()]
    for mine, theirs in zip(retrained, trial.history):
        assert mine["map50"] == pytest.approx(theirs["map50"], abs=1e-5), mine["epoch"]
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-5), mine["epoch"]
    # A different data set is named, not silently retrained on.
    other = subprocess.run([sys.executable, "-m", "detector.train", "--config", str(path), "--epochs", "1",
                            "--set", "min_size=64", "--set", "max_size=64", "--out", str(tmp_path / "other"),
                            "--quiet", "--device", "cpu"], capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    assert "warning:" in other.stderr and "the data differs from the data this configuration was chosen on" in other.stderr
