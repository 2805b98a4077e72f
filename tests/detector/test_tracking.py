"""detector.train --log: one training sent to MLflow (SQLite store), W&B (offline) and TensorBoard
with each library's own client, read back with each library's own reader."""
from __future__ import annotations

import json

import pytest

from detector import train
from tests.conftest import TINY, wandb_records


def _config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in
                           {**TINY, "backbone": "resnet18", "epochs": 2, "lr": 0.01, "warmup_epochs": 0.5}.items()))
    return cfg


def test_one_training_is_one_tracked_run_in_each_tracker(tiny_data, tmp_path, monkeypatch):
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    rc = train.main(["--config", str(_config(tmp_path)), "--data", str(tiny_data), "--out", str(out), "--quiet",
                     "--device", "cpu", "--log", f"mlflow={uri}", "--log", "wandb=smallobj-test", "--log", "tensorboard"])
    assert rc == 0
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("detector.train").experiment_id])
    assert run.data.params["lr"] == "0.01" and run.data.tags["arm"] == "resnet18-v1-none-t5"
    assert run.data.tags["stage"] == "train" and run.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "map50")] == pytest.approx(
        [e["map50"] for e in epochs])

    [f] = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    tags, steps, values = None, [], []
    for rec in wandb_records(f):
        if rec.WhichOneof("record_type") == "run":
            tags = list(rec.run.tags)
        elif rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
            if "map50" in items:
                steps.append(int(rec.history.step.num))
                values.append(json.loads(items["map50"]))
    assert tags == ["arm:resnet18-v1-none-t5", "stage:train"] and steps == [1, 2]
    assert values == pytest.approx([e["map50"] for e in epochs])

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [round(e.value, 6) for e in acc.Scalars("map50")] == [round(e["map50"], 6) for e in epochs]


def test_a_tracker_that_is_not_installed_is_refused_before_training(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "mlflow" else real(m, *a))
    assert train.main(["--log", "mlflow", "--out", str(tmp_path / "o")]) == 2
    assert "pip install '.[mlflow]'" in capsys.readouterr().err and not (tmp_path / "o").exists()
