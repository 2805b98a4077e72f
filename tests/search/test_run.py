"""search.run on a local Ray (num_cpus=2) with real Optuna: what a finished run holds (read from the suite's
shared real search, tests/search/conftest.py `study_run`), the joint strategy, and the checks made
before anything runs. (Kills, retries and failures: test_faults.py.)"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import optuna
import pytest
import yaml
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from detector import config as C
from bench.synthetic import synthetic_recording
from search import driver, export, run

from searchutil import result_rows as _rows, write_experiment_state, write_space as _space


@pytest.fixture
def searched(study_run):
    """The suite's shared real search (tests/search/conftest.py `study_run`): two arms of two
    trials, ASHA's rung at epoch 1, then confirmation and baseline runs."""
    return study_run.space, study_run.run_dir


@pytest.mark.slow
def test_search_finishes_with_every_trial_accounted_for(searched):
    space, run_dir = searched
    rows = [r for r in _rows(run_dir) if r["stage"] == "search"]
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    assert {r["arm"] for r in rows} == {"resnet18-v1-none-t5", "resnet18-v2-none-t5"}
    for r in rows:
        assert (r["status"], r["epochs_run"]) in (("finished", "2"), ("stopped", "1")), r
        assert r["backbone"] == "resnet18" and r["epochs"] == "2" and r["metric"] == "map50"
        assert 0.0 <= float(r["best_map50"]) <= 1.0 and r["reason"] == "" and r["unreadable_lines"] == "0"
    # Per-epoch metrics are continuous for every trial.
    for t in json.loads((run_dir / "trials.json").read_text()):
        hist = [json.loads(x) for x in (open(t["path"] + "/result.json")).read().splitlines()]
        assert [h["epoch"] for h in hist] == [float(e) for e in range(1, t["epochs_run"] + 1)]


@pytest.mark.slow
def test_rays_saved_state_lists_each_checkpoint_without_its_results_metrics(searched):
    # search.compat.lean_checkpoint_records: Ray's record of a checkpoint would otherwise carry
    # the whole result (213 of 226 kB per 60-epoch trial in the saved state, bench/RESULTS.md).
    from ray import cloudpickle

    _, run_dir = searched
    state = json.loads(next((run_dir / "trials").glob("experiment_state-*.json")).read_text())
    for _, run_metadata in state["trial_data"]:
        manager = cloudpickle.loads(bytes.fromhex(json.loads(run_metadata)["checkpoint_manager"]["value"]))
        records = manager._checkpoint_results  # Ray 2.60's list, every checkpoint the trial reported
        assert [Path(r.checkpoint.path).name for r in records][0] == "checkpoint_000000"
        assert [r.metrics for r in records] == [{}] * len(records)


@pytest.mark.slow
def test_each_arm_has_its_own_study_and_pruned_trials_are_pruned(searched):
    space, run_dir = searched
    storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    rows = {r["trial_id"]: r for r in _rows(run_dir)}
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {"resnet18-v1-none-t5", "resnet18-v2-none-t5"}
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        assert len(study.trials) == space.trials_per_arm
        for t in study.trials:
            row = rows[t.user_attrs["ray_trial_id"]]
            assert row["arm"] == name == t.user_attrs["arm"]  # never a trial of another arm
            epochs = int(row["epochs_run"])
            assert sorted(t.intermediate_values) == list(range(1, epochs + 1))
            if row["status"] == "finished":
                assert t.state == TrialState.COMPLETE and t.value == pytest.approx(float(row["best_map50"]))
            else:  # stopped by ASHA before the budget: PRUNED, never COMPLETE with an early score
                assert t.state == TrialState.PRUNED and epochs < space.max_epochs
            if "momentum" in t.params:
                assert t.params["optimizer"] == "sgd"


@pytest.mark.slow
def test_each_arm_s_best_model_is_timed_after_the_search(searched):
    """latency.json: one entry per arm, for the arm's best trial (results.ranked), with the number of
    timed passes and the device; the report's latency columns read it."""
    from search import latency
    from search.results import collect, ranked

    space, run_dir = searched
    measured = json.loads((run_dir / "latency.json").read_text())
    records = collect(run_dir, "map50", space.max_epochs)
    assert set(measured) == {a.name for a in space.arms}
    for arm, m in measured.items():
        assert m["trial_id"] == ranked(records, arm)[0].trial_id
        assert m["latency_n"] == latency.REPEATS and m["device"] == "cpu" and 0 < m["latency_ms"] < 60_000


@pytest.mark.slow
def test_the_weights_validation_chose_are_kept_and_score_what_was_recorded(study_run):
    """Each arm's best search trial (and any tied with it) and every confirmation and baseline run
    keep one checkpoint holding model.pt only: the weights of the epoch validation chose, which,
    evaluated again on the run's validation images, give the recorded best validation metric. The
    outranked search trials keep nothing."""
    import torch

    from detector.data import DetectionDataset, collate, load_splits
    from detector.engine import MODEL_FILE, Setup, evaluate, load_checkpoint, model_from_checkpoint
    from search.results import rank_key, ranked

    splits = load_splits(str(study_run.data), val_fraction=0.3, test_fraction=0.2, seed=4)  # STUDY_SPACE's
    checked = 0
    for rec in study_run.records:
        top = ranked(study_run.records, rec.arm)[0]
        kept = sorted(Path(rec.path).glob("checkpoint_*"))
        assert bool(kept) == (rec.stage != "search" or rank_key(rec.status, rec.best) == rank_key(top.status, top.best))
        if not kept:
            continue
        assert len(kept) == 1 and [p.name for p in kept[0].iterdir()] == [MODEL_FILE], (rec.trial_id, kept)
        saved = load_checkpoint(kept[0] / MODEL_FILE)
        assert (saved["epoch"], saved["metric"], saved["value"]) == (rec.best_epoch, "map50", rec.best)
        model, cfg = model_from_checkpoint(kept[0] / MODEL_FILE)[:2]
        loader = torch.utils.data.DataLoader(DetectionDataset(splits.val, cfg.in_channels), batch_size=cfg.batch_size,
                                             collate_fn=collate)
        again = evaluate(model, loader, Setup.create(cfg, splits.train, "cpu"), model.roi_heads.detections_per_img)
        assert again["map50"] == pytest.approx(rec.best, abs=1e-5), rec.trial_id
        checked += 1
    assert checked >= 2 + 4 + 4  # each arm's best; 2 arms x 2 confirmation seeds; as many baseline runs


@pytest.mark.slow
def test_without_test_images_each_arm_s_detections_are_drawn_on_validation_images(study_run, monkeypatch):
    """search.detections.draw on the study run's kept models, handed no test images (a run without
    them): each arm's figure has a row for its tuned model (the best confirmation run's, the model
    search.export ships) and one for its baseline, each at the operating threshold its model file
    carries; the images follow the rule (most objects first, then the median count); and the AP50 of
    the figure's matching on the validation images is the evaluator's mAP50 that chose the epoch."""
    from detector.engine import MODEL_FILE, load_checkpoint
    from search import detections
    from search.results import confirmed
    from search.storage import RunLocation

    drawn, real_figure = {}, detections.figure

    def figure(images, chosen, rows, title, path):
        drawn[path.name] = (chosen, rows, title)
        real_figure(images, chosen, rows, title, path)

    monkeypatch.setattr(detections, "figure", figure)
    monkeypatch.setattr(detections, "FOLDER", "detections-without-test")  # not the run's own figures
    space, run_dir, records = study_run.space, study_run.run_dir, study_run.records
    splits = space.load_splits(str(study_run.data))
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        out = detections.draw(space, RunLocation(str(run_dir.parent), run_dir.name), (ray.put(splits.train),
                              ray.put(splits.val)), records)
    finally:
        ray.shutdown()
    assert out == {arm.name: f"{arm.name}.png" for arm in space.arms}
    counts = [len(b) for b in splits.val.boxes]
    folder = run_dir / "detections-without-test"
    for arm in space.arms:
        chosen, rows, title = drawn[f"{arm.name}.png"]
        assert "validation images" in title
        assert counts[chosen[0][0]] == max(counts) and f"most objects ({max(counts)})" == chosen[0][1]
        assert len(chosen) == min(detections.IMAGES, sum(c > 0 for c in counts))
        best = confirmed(records, arm.name)[0]
        runs = [best.best_run(), min((r for r in records if r.stage == "baseline" and r.arm == arm.name),
                                     key=lambda r: r.config["seed"])]
        assert [label.split(" (")[0] for label, *_ in rows] == ["tuned", "shared hyperparameters"]
        assert f"trial {best.source.trial_id}, seed {runs[0].config['seed']}" in rows[0][0]
        assert "seed 1000" in rows[1][0]
        summary = json.loads((folder / f"{arm.name}.json").read_text())
        assert summary["images"] == "validation" and summary["pool"] == len(splits.val)
        for run, (label, threshold, dets, masks), numbers in zip(runs, rows, summary["models"]):
            kept = sorted(Path(run.path).glob("checkpoint_*"))[-1] / MODEL_FILE
            assert threshold == load_checkpoint(kept)["score_threshold"] == run.at_best()["score_threshold"]
            assert len(dets) == len(masks) == len(splits.val)  # every image predicted, not only those shown
            # The same weights, images and matching rule as the epoch's validation: the same numbers.
            assert numbers["ap50"] == pytest.approx(run.best, abs=1e-5), label
            assert numbers["f1"] == pytest.approx(run.at_best()["f1"], abs=1e-6), label
            assert numbers["true_positives"] + numbers["missed"] == sum(counts)
        assert (folder / f"{arm.name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (folder / f"{arm.name}_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_export_round_trip_trains(searched, tmp_path, capsys):
    from detector import train

    space, run_dir = searched
    paths = export.export(run_dir, tmp_path / "exp", source="search", weights=False)
    assert {p.name for p in paths} == {"best.yaml", "resnet18-v1-none-t5.yaml", "resnet18-v2-none-t5.yaml"}
    rows = [r for r in _rows(run_dir) if r["stage"] == "search"]
    best_row = max((r for r in rows if r["status"] == "finished"), key=lambda r: float(r["best_map50"]))
    cfg = C.load(tmp_path / "exp" / "best.yaml")
    assert cfg.epochs == 2 and cfg.lr == pytest.approx(float(best_row["lr"]))
    # Read the block back as YAML: a Ray trial id of digits only ("18689190") is written quoted.
    meta = yaml.safe_load((tmp_path / "exp" / "best.yaml").read_text())["search"]
    assert meta["trial_id"] == best_row["trial_id"] and meta["data_fingerprint"]
    capsys.readouterr()
    assert train.main(["--config", str(tmp_path / "exp" / "best.yaml"), "--data",
                       str(json.loads((run_dir / "run.json").read_text())["data"]), "--epochs", "1",
                       "--out", str(tmp_path / "retrain"), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["epochs_run"] == 1


@pytest.mark.slow
def test_export_ships_the_models_validation_chose(searched, tmp_path, capsys):
    """Beside each YAML its model: with a confirmation stage, the best confirmation run of the
    exported configuration (`--from search`: the search trial itself), loadable alone, carrying its
    classes and where it came from; a run whose chosen weights are gone is refused before anything is
    written, and --no-weights still exports the configurations."""
    import shutil

    from detector import engine
    from search.results import collect, confirmed, ranked

    space, run_dir = searched
    records = collect(run_dir, "map50", space.max_epochs)
    assert export.MODEL_FILE == engine.MODEL_FILE
    paths = export.export(run_dir, tmp_path / "exp")
    names = {"best", "resnet18-v1-none-t5", "resnet18-v2-none-t5"}
    assert {p.name for p in paths} == {f"{n}.{ext}" for n in names for ext in ("yaml", "pt")}
    with_threshold = 0
    for arm in names - {"best"}:
        meta = yaml.safe_load((tmp_path / "exp" / f"{arm}.yaml").read_text())["search"]
        shipped = engine.load_checkpoint(tmp_path / "exp" / f"{arm}.pt")
        chosen = confirmed(records, arm)[0].best_run()
        assert shipped["export"]["trial_id"] == chosen.trial_id and shipped["export"]["stage"] == "confirm"
        assert shipped["export"]["source_trial"] == meta["trial_id"] == chosen.source_trial
        assert shipped["export"]["value"] == chosen.best and shipped["epoch"] == chosen.best_epoch
        loaded = engine.model_from_checkpoint(tmp_path / "exp" / f"{arm}.pt")
        assert loaded.cfg.backbone == "resnet18" and loaded.categories() == [{"id": 1, "name": "object"}]
        # The configuration carries the shipped model's operating threshold (none: it found nothing).
        assert ("operating_point" in meta) == (loaded.score_threshold is not None), arm
        if loaded.score_threshold is not None:
            op = meta["operating_point"]
            assert op["score_threshold"] == round(loaded.score_threshold, 4) and op["chosen_on"] == "validation"
            assert op["f1"] == round(chosen.at_best()["f1"], 4) and "test_f1" in op
            with_threshold += 1
    assert with_threshold  # the shared search's models find objects on validation: the check ran
    best = yaml.safe_load((tmp_path / "exp" / "best.yaml").read_text())["search"]
    assert engine.load_checkpoint(tmp_path / "exp" / "best.pt")["export"]["source_trial"] == best["trial_id"]
    export.export(run_dir, tmp_path / "searched", source="search")
    top = ranked(records, "resnet18-v1-none-t5")[0]
    assert engine.load_checkpoint(tmp_path / "searched" / "resnet18-v1-none-t5.pt")["export"]["trial_id"] == top.trial_id

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoint_*"))  # the weights are gone
    assert export.main([str(copy), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "no kept weights (model.pt in a checkpoint) for best: confirm run" in err and "--no-weights" in err
    assert not (tmp_path / "none").exists()
    assert export.main([str(copy), "--out", str(tmp_path / "configs"), "--no-weights"]) == 0
    assert sorted(p.name for p in (tmp_path / "configs").iterdir()) == sorted(f"{n}.yaml" for n in names)


@pytest.mark.slow
def test_refuses_to_start_over_an_existing_run_and_to_resume_nothing(searched, tmp_path, capsys):
    space, run_dir = searched
    assert run.main(["--space", space.path, "--storage", str(run_dir.parent), "--name", run_dir.name]) == 2
    assert "already exists: pass --resume" in capsys.readouterr().err
    assert run.main(["--space", space.path, "--storage", str(tmp_path), "--name", "nothing", "--resume"]) == 2
    assert "holds no experiment state" in capsys.readouterr().err


@pytest.mark.slow
def test_a_resume_with_another_space_is_refused_naming_the_keys_and_allowed_changes_are_said(searched, tmp_path,
                                                                                             capsys):
    """--resume compares the given space with the run's space.yaml after parsing: a changed budget or
    parameter range is refused before anything runs, naming the keys; a changed max_concurrent (or
    comments, or a default spelt out) is not."""
    import shutil

    from search.space import load_space, resume_changes

    space, run_dir = searched
    copy = tmp_path / "runs" / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoint_*"))
    text = (copy / "space.yaml").read_text()
    assert "max_epochs: 2" in text and "low: 0.002" in text
    edited = tmp_path / "edited.yaml"
    edited.write_text(text.replace("max_epochs: 2", "max_epochs: 3").replace("low: 0.002", "low: 0.001"))
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    assert run.main(["--space", str(edited), "--storage", str(tmp_path / "runs"), "--name", "copy", "--resume",
                     "--num-cpus", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{edited} differs from the run's space ({copy / 'space.yaml'}) in budget.max_epochs, params" in err
    assert "Only name, budget.max_concurrent, data" in err
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before  # nothing ran, nothing written
    # Allowed: the number of trials at once, and what only reads differently.
    calmer = tmp_path / "calmer.yaml"
    calmer.write_text("# a comment\n" + text.replace("max_concurrent: 2", "max_concurrent: 1"))
    assert "max_concurrent: 2" in text
    # (`name` too: a space without one is named after its file, and the name changes no trial.)
    assert resume_changes(load_space(copy / "space.yaml"), load_space(calmer)) == (["budget.max_concurrent", "name"], [])
    assert run.space_change_problem(load_space(calmer), copy) is None
    assert "resume: budget.max_concurrent, name changed from the run's space" in capsys.readouterr().out
    assert resume_changes(load_space(copy / "space.yaml"), load_space(copy / "space.yaml")) == ([], [])


@pytest.mark.slow
def test_joint_strategy_and_confirmation_stage(tiny_data, tmp_path):
    """Joint: one study whose `arm` is a categorical parameter, one ASHA. Confirmation: the best
    configuration of each arm retrained with two seeds for the full budget. (Trials replay synthetic
    curves: the strategy is the searcher's business.)"""
    space = _space(tmp_path, tiny_data, """
strategy: joint
arms: {backbone: [resnet18], version: [v1, v2]}
params:
  lr: {type: float, low: 0.005, high: 0.02, log: true}
budget: {max_epochs: 1, grace_period: 1, reduction_factor: 2, trials_per_arm: 3}
confirm: {top_k: 1, seeds: 2}
""")
    curves = synthetic_recording(space, tmp_path / "curves", per_arm=6, command="test")  # replayed, not trained
    rc = run.main(["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "j", "--num-cpus", "2",
                   "--replay-curves", str(curves), "--time-scale", "0.01"])
    assert rc == 0
    run_dir = tmp_path / "runs" / "j"
    storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["joint"]
    (study,) = [optuna.load_study(study_name="joint", storage=storage)]
    assert len(study.trials) == 3
    assert {t.params["arm"] for t in study.trials} <= {"resnet18-v1-none-t5", "resnet18-v2-none-t5"}
    rows = _rows(run_dir)
    search_rows = [r for r in rows if r["stage"] == "search"]
    confirm_rows = [r for r in rows if r["stage"] == "confirm"]
    assert len(search_rows) == 3
    arms_searched = {r["arm"] for r in search_rows}
    assert len(confirm_rows) == 2 * len(arms_searched)  # top 1 of every arm that ran, x 2 seeds
    # Never a search trial's seed (0 here): the first seeds from 1000 upward that no search trial used.
    assert sorted({r["seed"] for r in confirm_rows}) == ["1000", "1001"]
    for r in confirm_rows:
        assert r["status"] == "finished" and r["epochs_run"] == "1"


@pytest.mark.slow
def test_report_from_a_real_search(searched, tmp_path):
    from search import report

    space, run_dir = searched
    res = report.write_report(run_dir, tmp_path / "report")
    # With a confirmation stage the answer is its mean over seeds, from results.csv's confirm rows.
    confirm = {}
    for r in _rows(run_dir):
        if r["stage"] == "confirm":
            confirm.setdefault(r["arm"], []).append(float(r["best_map50"]))
    best = max(confirm, key=lambda a: statistics.mean(confirm[a]))
    assert (f"Best arm on validation: **{best}**, map50 {statistics.mean(confirm[best]):.4f} ± "
            f"{statistics.stdev(confirm[best]):.4f} (mean ± standard deviation over 2 seeds)") in res["conclusion"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"{len(_rows(run_dir))} trials: " in text and "## Early stopping" in text  # every run of every stage
    for name in res["figures"]:
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(res["figures"]) >= 6


@pytest.mark.slow
def test_resume_refuses_a_truncated_experiment_state(searched, tmp_path, capsys):
    import shutil

    space, run_dir = searched
    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoint_*"))  # 230 MB each: not needed here
    state = next((copy / "trials").glob("experiment_state-*.json"))
    state.write_text(state.read_text()[:200])
    before = sorted((p, p.stat().st_size) for p in copy.rglob("*"))
    assert run.main(["--space", space.path, "--storage", str(tmp_path), "--name", "r", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "is truncated or corrupt" in err and state.name in err
    assert sorted((p, p.stat().st_size) for p in copy.rglob("*")) == before  # nothing touched


def test_unusable_data_is_refused_before_the_run_folder_exists(tmp_path, capsys):
    (tmp_path / "empty.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    space = _space(tmp_path, tmp_path / "empty.json", "arms: {backbone: [resnet18]}\n")
    assert run.main(["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "x"]) == 2
    assert "no readable image" in capsys.readouterr().err and not ray.is_initialized()
    assert not (tmp_path / "runs").exists()


def test_an_error_at_the_end_still_shuts_ray_down_shows_the_first_error_and_keeps_logs_apart(
        tiny_data, tmp_path, monkeypatch, capsys):
    """The search fails, then saving its results fails too (object storage unreachable): Ray is shut
    down all the same, the search's own error is the one raised, the storage error is reported beside
    it. Two runs in one process each write only their own run.log."""
    import logging

    from search.storage import RunLocation

    def failing_search(*args, **kwargs):
        raise RuntimeError("the search's own error")

    def unreachable(self):
        raise OSError("bucket unreachable")

    monkeypatch.setattr(driver, "run_search", failing_search)
    monkeypatch.setattr(RunLocation, "pull", unreachable)
    space = _space(tmp_path, tiny_data, "arms: {backbone: [resnet18]}\nbudget: {max_epochs: 1, trials_per_arm: 1}\n")
    for name in ("a", "b"):
        with pytest.raises(RuntimeError, match="the search's own error"):
            run.main(["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", name, "--num-cpus", "1"])
        assert not ray.is_initialized()
        assert "could not save the results after the search failed: OSError: bucket unreachable" in capsys.readouterr().err
    log_a = (tmp_path / "runs" / "a" / "run.log").read_text()
    assert "runs/a (resume=False)" in log_a and "runs/b" not in log_a
    assert "runs/b (resume=False)" in (tmp_path / "runs" / "b" / "run.log").read_text()
    assert not [h for n in ("search", "ray") for h in logging.getLogger(n).handlers
                if str(tmp_path) in getattr(h, "baseFilename", "")]  # both runs' log files detached


def test_a_run_whose_stages_had_folders_of_their_own_is_not_resumed(tiny_data, tmp_path, capsys):
    """Runs made before the later stages shared the search's queue cannot be continued by this
    version: --resume says so, before touching anything."""
    space = _space(tmp_path, tiny_data, """
arms: {backbone: [resnet18]}
params:
  lr: {type: float, low: 0.005, high: 0.02, log: true}
budget: {max_epochs: 2, grace_period: 2, reduction_factor: 2, trials_per_arm: 2}
confirm: {top_k: 1, seeds: 2}
""")
    run_dir = tmp_path / "runs" / "old"
    (run_dir / "trials").mkdir(parents=True)
    write_experiment_state(run_dir / "trials", {"t1": "TERMINATED"})
    (run_dir / "trials" / "tuner.pkl").write_bytes(b"")
    (run_dir / "confirm").mkdir()  # the later stages' own Tuner folder, as earlier versions had it
    (run_dir / "run.json").write_text(json.dumps({"stages": ["search", "confirm"]}))
    before = sorted(p for p in run_dir.rglob("*"))
    args = ["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "old", "--num-cpus", "2", "--resume"]
    assert run.main(args) == 2
    err = capsys.readouterr().err
    assert f"error: --resume: {run_dir}: a run folder of an earlier layout (it has a folder per stage (confirm))" in err
    assert sorted(p for p in run_dir.rglob("*")) == before
