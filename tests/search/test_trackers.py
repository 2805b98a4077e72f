"""Trackers on a real local Ray, offline: MLflow (SQLite store), W&B (offline mode), TensorBoard
(event files read back with tensorboard's own reader); and no credential in any file a run writes."""
from __future__ import annotations

from pathlib import Path

import pytest

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search import export, run, trackers

from searchutil import SECRET


@pytest.fixture
def tracked(study_run):
    """The suite's shared real search (tests/search/conftest.py `study_run`), which ran with every
    tracker: (run folder, records, MLflow URI, its folder)."""
    return study_run.run_dir, study_run.records, study_run.mlflow_uri, study_run.folder


STAGES = ("search", "confirm", "baseline")


@pytest.mark.slow
def test_mlflow_has_one_run_per_trial_with_its_configuration_metrics_and_tags(tracked):
    import mlflow

    run_dir, records, uri, _ = tracked
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("study")  # the experiment is named after the search
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == len(records) == 12  # 4 search trials, 4 confirmation and 4 baseline runs (2 seeds)
    by_arm_stage = {(r.data.tags["arm"], r.data.tags["stage"]) for r in runs}
    assert by_arm_stage == {(a, s) for a in ("resnet18-v1-none-t5", "resnet18-v2-none-t5") for s in STAGES}
    lengths = []
    for r in runs:
        assert r.data.tags["search"] == "study"
        lr = r.data.params.get("cfg/lr")
        assert lr is not None and float(lr) > 0
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "map50")]
        assert steps == list(range(1, len(steps) + 1)), r.data.tags  # every epoch, in order
        lengths.append(len(steps))
    assert sorted(lengths) == sorted(r.epochs for r in records)  # ASHA stopped some search trials at epoch 1


def _wandb_runs(run_dir: Path) -> list[dict]:
    """Each W&B run file of the run (offline mode: one per trial folder): its run record and the
    (step, map50) of its history records."""
    from tests.conftest import wandb_records

    out = []
    for f in sorted(run_dir.glob("*/*/wandb/offline-run-*/run-*.wandb")):
        run, history, exit_ = None, [], False
        for rec in wandb_records(f):
            if rec.WhichOneof("record_type") == "run":
                run = rec.run
            elif rec.WhichOneof("record_type") == "exit":
                exit_ = True
            elif rec.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
                if "map50" in items:
                    history.append((int(rec.history.step.num), float(items["map50"])))
        out.append({"file": f, "run": run, "history": history, "exit": exit_})
    return out


@pytest.mark.slow
def test_wandb_offline_has_one_run_per_trial_grouped_and_tagged(tracked):
    run_dir, records, _, _ = tracked
    runs = _wandb_runs(run_dir)
    assert len(runs) == len(records) == 12
    stages = []
    for r in runs:
        tags = list(r["run"].tags)
        assert r["run"].run_group == "study" and r["run"].project == "smallobj-test"
        assert "search:study" in tags and any(t.startswith("arm:resnet18-") for t in tags)
        stages += [t.split(":")[1] for t in tags if t.startswith("stage:")]
    assert sorted(stages) == sorted(r.stage for r in records)


@pytest.mark.slow
@pytest.mark.slow
def test_wandb_offline_runs_hold_every_epoch(tracked):
    """Each run file in the run folder holds every epoch and its exit record, also the runs of the
    trials that ended last in their stage, which Ray's last upload of the trial folders caught
    unfinished (search.trackers.WandbCallback.on_experiment_end)."""
    run_dir, records, _, _ = tracked
    by_folder = {Path(r.path).name: r for r in records}
    runs = _wandb_runs(run_dir)
    assert len(runs) == len(records)
    for r in runs:
        rec = by_folder[r["file"].relative_to(run_dir).parts[1]]  # trials/<trial folder>/wandb/...
        assert r["history"] == [(h["epoch"], pytest.approx(h["map50"])) for h in rec.history], r["file"]
        assert r["exit"], r["file"]


@pytest.mark.slow
def test_tensorboard_files_hold_every_epoch_s_metric(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, records, _, _ = tracked
    for rec in records:
        acc = EventAccumulator(rec.path)
        acc.Reload()
        tag = next(t for t in acc.Tags()["scalars"] if t.endswith("/map50"))
        assert [round(e.value, 6) for e in acc.Scalars(tag)] == [round(h["map50"], 6) for h in rec.history]


@pytest.mark.slow
def test_optuna_dashboard_serves_one_study_per_arm_with_its_trials(tracked, tmp_path):
    """The command search.watch prints, started as written, asked over HTTP on localhost."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from search import watch

    run_dir, records, _, _ = tracked
    text = watch.watch_text(run_dir)
    line = next(x.strip() for x in text.splitlines() if x.strip().startswith("optuna-dashboard "))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = line.split("#")[0].split()[:2]  # optuna-dashboard JOURNAL (the port is this test's own)
    exe = str(Path(sys.executable).parent / cmd[0])
    with open(tmp_path / "dashboard.log", "w") as log:
        server = subprocess.Popen([exe, cmd[1], "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=log)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
            except OSError:
                assert time.time() < deadline and server.poll() is None, (tmp_path / "dashboard.log").read_text()
                time.sleep(0.5)
        assert sorted(s["study_name"] for s in studies) == ["resnet18-v1-none-t5", "resnet18-v2-none-t5"]
        for s in studies:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{s['study_id']}", timeout=10) as r:
                trials = json.load(r)["trials"]
            # The journal's own states: finished trials Complete, ASHA's stops Pruned.
            expected = sorted(t.state.name.capitalize() for t in optuna.load_study(
                study_name=s["study_name"], storage=JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))).trials)
            assert sorted(t["state"] for t in trials) == expected and len(trials) == 2
    finally:
        server.terminate()
        server.wait(10)
    assert "mlflow ui --backend-store-uri" in text and "wandb sync" in text and "tensorboard --logdir" in text


@pytest.mark.slow
def test_no_credential_is_written_anywhere_the_run_writes(tracked, tmp_path):
    run_dir, _, _, tmp = tracked
    export.export(run_dir, tmp_path / "export")
    files = [p for folder in (Path(tmp), tmp_path) for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "mlflow.db" for p in files)
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []


def test_a_tracker_that_is_not_installed_is_refused_before_anything_runs(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "wandb" else real(m, *a))
    with pytest.raises(trackers.TrackerError, match=r"--log wandb: the wandb package is not installed: pip install '\.\[wandb\]'"):
        trackers.parse(["tensorboard", "wandb=p"])
    with pytest.raises(trackers.TrackerError, match="unknown tracker 'neptune'"):
        trackers.parse(["neptune"])
    space = tmp_path / "s.yaml"
    space.write_text("arms: {backbone: [resnet18]}\n")
    assert run.main(["--space", str(space), "--storage", str(tmp_path / "runs"), "--log", "wandb"]) == 2
    assert "pip install '.[wandb]'" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_watch_says_when_a_run_wrote_no_tensorboard_files(tmp_path):
    """Ray's own TensorBoard logger is off unless asked for (search.run turns its default loggers off)."""
    import json

    from search import watch

    (tmp_path / "run.json").write_text(json.dumps({"name": "r", "arms": ["a"], "trackers": [], "ray_loggers": "json",
                                                   "stages_share_queue": True}))
    text = watch.watch_text(tmp_path)
    assert "TensorBoard: this run wrote no event files (start a search with --log tensorboard)" in text
    assert "tensorboard --logdir" not in text
    (tmp_path / "run.json").write_text(json.dumps({"name": "r", "arms": ["a"], "trackers": ["tensorboard"],
                                                   "ray_loggers": "json", "stages_share_queue": True}))
    assert "tensorboard --logdir" in watch.watch_text(tmp_path)
