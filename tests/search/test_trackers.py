"""Trackers on a real local Ray, offline: MLflow (SQLite store), W&B (offline mode), TensorBoard
(event files read back with tensorboard's own reader); and no credential in any file a run writes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from search import export, run, trackers
from search.results import collect

from searchutil import write_space

# Credentials as the trackers' own clients read them: planted, so that a copy of them anywhere in the
# run folder is found. (40 hex digits: the shape of a W&B key.)
SECRET = "5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa"
ENV = {"WANDB_API_KEY": SECRET, "WANDB_MODE": "offline", "MLFLOW_TRACKING_TOKEN": SECRET,
       "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def tracked(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracked")
    space = write_space(tmp, tiny_data, """
arms: {backbone: [resnet18], version: [v1, v2]}
params:
  lr: {type: float, low: 0.005, high: 0.02, log: true}
budget: {max_epochs: 2, grace_period: 2, reduction_factor: 2, trials_per_arm: 1, max_concurrent: 2}
confirm: {top_k: 1, seeds: 1}
""")
    old = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)  # before Ray starts: its workers and the W&B logging actors inherit them
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    try:
        rc = run.main(["--space", str(space), "--storage", str(tmp / "runs"), "--name", "tracked", "--num-cpus", "2",
                       "--log", f"mlflow={uri}", "--log", "wandb=smallobj-test", "--log", "tensorboard"])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert rc == 0
    run_dir = tmp / "runs" / "tracked"
    return run_dir, collect(run_dir, "map50", 2), uri, tmp


@pytest.mark.slow
def test_mlflow_has_one_run_per_trial_with_its_configuration_metrics_and_tags(tracked):
    import mlflow

    run_dir, records, uri, _ = tracked
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("tracked")  # the experiment is named after the search
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == len(records) == 4  # 2 search trials + 2 confirmation runs
    by_arm_stage = {(r.data.tags["arm"], r.data.tags["stage"]) for r in runs}
    assert by_arm_stage == {(a, s) for a in ("resnet18-v1-none-t5", "resnet18-v2-none-t5") for s in ("search", "confirm")}
    for r in runs:
        assert r.data.tags["search"] == "tracked"
        lr = r.data.params.get("cfg/lr") or r.data.params.get("trial/cfg/lr")
        assert lr is not None and float(lr) > 0
        history = client.get_metric_history(r.info.run_id, "map50")
        assert [m.step for m in history] == [1, 2]


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
    assert len(runs) == len(records) == 4
    for r in runs:
        tags = list(r["run"].tags)
        assert r["run"].run_group == "tracked" and r["run"].project == "smallobj-test"
        assert "search:tracked" in tags and any(t.startswith("arm:resnet18-") for t in tags)
        assert any(t in tags for t in ("stage:search", "stage:confirm"))


@pytest.mark.slow
@pytest.mark.slow
def test_wandb_offline_runs_hold_every_epoch(tracked):
    """Each run file in the run folder holds every epoch and its exit record, also the runs of the
    trials that ended last in their stage, which Ray's last upload of the trial folders caught
    unfinished (search.trackers.WandbCallback.on_experiment_end)."""
    run_dir, records, _, _ = tracked
    for r in _wandb_runs(run_dir):
        assert [step for step, _ in r["history"]] == [1, 2], r["file"]
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
            assert [t["state"] for t in trials] == ["Complete"]  # one trial per arm, full budget
    finally:
        server.terminate()
        server.wait(10)
    assert "mlflow ui --backend-store-uri" in text and "wandb sync" in text and "tensorboard --logdir" in text


@pytest.mark.slow
def test_no_credential_is_written_anywhere_the_run_writes(tracked):
    run_dir, _, _, tmp = tracked
    export.export(run_dir, run_dir / "export")
    found = [p for p in Path(tmp).rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert found == []


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
