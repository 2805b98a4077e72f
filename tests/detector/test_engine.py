"""Training engine: metrics, checkpoints, resume equivalence, failures that explain themselves."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from detector import config as C
from detector.data import load_splits
from detector.engine import NonFiniteLossError, evaluate, fit, load_checkpoint, lr_factor, Setup
from tests.conftest import TINY

CFG = dict(TINY, backbone="resnet18", epochs=2, lr=0.01, warmup_epochs=0.5, seed=1)
KEYS = {"map50", "map", "map_small", "iou_per_pred", "iou_per_gt", "loss", "loss_classifier", "loss_box_reg",
        "loss_objectness", "loss_rpn_box_reg", "epoch", "epoch_time_s", "train_img_per_s", "peak_mem_mb", "lr",
        "latency_ms", "params_total", "params_trainable"}


@pytest.fixture(scope="module")
def splits(tiny_data):
    return load_splits(str(tiny_data), val_fraction=0.3, seed=0)


def test_two_epochs_write_metrics_checkpoints_and_summary(splits, tmp_path):
    seen = []
    fit(C.from_dict(CFG), *splits, tmp_path, on_epoch=lambda m, ck: seen.append((m, ck.exists())))
    assert [m["epoch"] for m, _ in seen] == [1.0, 2.0] and all(ok for _, ok in seen)
    for m, _ in seen:
        assert KEYS <= set(m) and all(isinstance(v, float) for v in m.values())
        for k in ("map50", "map", "iou_per_pred", "iou_per_gt"):
            assert 0.0 <= m[k] <= 1.0, k
        assert m["loss"] > 0 and math.isfinite(m["loss"]) and m["train_img_per_s"] > 0 and m["latency_ms"] > 0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1.0, 2.0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["params_total"] > summary["params_trainable"] * 0.5
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["epoch"] == 2 and C.from_dict(ck["config"]) == C.from_dict(CFG)
    assert set(ck) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config"}


def test_resumed_run_ends_with_the_same_metrics(splits, tmp_path):
    cfg = C.from_dict({**CFG, "epochs": 3})
    straight = fit(cfg, *splits, tmp_path / "a")
    # Interrupted after epoch 1: train a 3-epoch run, stopping it from the callback.

    class Stop(Exception):
        pass

    def stop_after_1(m, ck):
        if m["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(cfg, *splits, tmp_path / "b", on_epoch=stop_after_1)
    resumed = fit(cfg, *splits, tmp_path / "b", resume=True)
    a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in b] == [1.0, 2.0, 3.0]
    for x, y in zip(a, b):
        for k in ("loss", "map50", "map", "iou_per_gt", "lr"):
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), k
    assert resumed["best"]["map50"] == pytest.approx(straight["best"]["map50"], abs=1e-6)


def test_resume_with_another_configuration_is_refused(splits, tmp_path):
    fit(C.from_dict({**CFG, "epochs": 1}), *splits, tmp_path)
    with pytest.raises(C.ConfigError, match="another configuration.*'lr'"):
        fit(C.from_dict({**CFG, "epochs": 1, "lr": 0.5}), *splits, tmp_path, resume=True)


def test_nonfinite_loss_is_a_named_error(splits, tmp_path):
    cfg = C.from_dict({**CFG, "lr": 1e6, "warmup_epochs": 0.0, "clip_grad_norm": None, "epochs": 3})
    with pytest.raises(NonFiniteLossError, match="non-finite loss for 3 consecutive steps"):
        fit(cfg, *splits, tmp_path)


def test_early_stopping_with_patience(splits, tmp_path):
    # lr so small nothing improves after the first epoch: patience 1 stops at epoch 2.
    cfg = C.from_dict({**CFG, "lr": 1e-9, "epochs": 5, "patience": 1, "warmup_epochs": 0.0})
    s = fit(cfg, *splits, tmp_path)
    assert s["stopped_early"] and s["epochs_run"] < 5


def test_map_counts_more_than_100_objects_per_image():
    """150 objects, perfect predictions: mAP50 must be 1.0 (torchmetrics' default cap of 100 gives ~0.66)."""
    xy = torch.stack(torch.meshgrid(torch.arange(15.0), torch.arange(10.0), indexing="ij"), -1).reshape(-1, 2) * 8
    boxes = torch.cat([xy, xy + 6], dim=1)  # (150, 4)

    class Perfect(torch.nn.Module):
        def forward(self, imgs):
            return [{"boxes": boxes, "scores": torch.linspace(1, 0.5, 150), "labels": torch.ones(150, dtype=torch.long)}
                    for _ in imgs]

    loader = [([torch.zeros(1, 128, 128)], [{"boxes": boxes, "labels": torch.ones(150, dtype=torch.long)}])]
    setup = Setup(torch.device("cpu"), None, 1.0, None)
    m = evaluate(Perfect(), loader, setup, max_detections=300)
    assert m["map50"] == pytest.approx(1.0) and m["iou_per_gt"] == pytest.approx(1.0)


def test_lr_schedule_warms_up_then_follows_the_schedule():
    cfg = C.TrainConfig(epochs=10, warmup_iters=10, warmup_factor=0.1, schedule="step", milestones=(5, 8), gamma=0.1)
    assert lr_factor(cfg, 0, 10) == pytest.approx(0.1)
    assert lr_factor(cfg, 5, 10) == pytest.approx(0.55)
    assert lr_factor(cfg, 10, 10) == 1.0 and lr_factor(cfg, 49, 10) == 1.0
    assert lr_factor(cfg, 50, 10) == pytest.approx(0.1) and lr_factor(cfg, 80, 10) == pytest.approx(0.01)
    cos = C.TrainConfig(epochs=2, warmup_epochs=0.0, schedule="cosine")
    assert lr_factor(cos, 0, 5) == 1.0 and lr_factor(cos, 5, 5) == pytest.approx(0.5)


def test_config_yaml_round_trip_and_errors(tmp_path):
    cfg = C.TrainConfig(backbone="resnet34", version="v2", weights="imagenet", trainable_layers="stem",
                        anchor_sizes=(8, 16, 32, 64, 128), milestones=(3, 6), schedule="step", lr=0.003)
    path = tmp_path / "c.yaml"
    C.save(cfg, path, header="a header")
    assert C.load(path) == cfg
    path.write_text("lr: 0.01\nlearning_rate: 0.1\n")
    with pytest.raises(C.ConfigError, match=r"c.yaml: unknown field\(s\) \['learning_rate'\]"):
        C.load(path)
    path.write_text("lr: -1\n")
    with pytest.raises(C.ConfigError, match=r"c.yaml: lr: must be a number > 0, got -1.0"):
        C.load(path)
    path.write_text("schedule: step\n")
    with pytest.raises(C.ConfigError, match="milestones: must not be empty when schedule is 'step'"):
        C.load(path)


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, **kw)


def test_print_config_is_a_loadable_reference(tmp_path):
    out = _run("detector.train", "--print-config")
    assert out.returncode == 0 and "# peak learning rate" in out.stdout
    (tmp_path / "d.yaml").write_text(out.stdout)
    assert C.load(tmp_path / "d.yaml") == C.TrainConfig()


def test_train_evaluate_predict_commands(tiny_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    C.save(C.from_dict({**CFG, "epochs": 1}), cfg)
    out = _run("detector.train", "--config", str(cfg), "--data", str(tiny_data), "--out", str(tmp_path / "r"),
               "--set", "lr=0.02", "--quiet")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["epochs_run"] == 1
    assert C.from_dict(load_checkpoint(tmp_path / "r" / "model.pt")["config"]).lr == 0.02
    ev = _run("detector.evaluate", "--checkpoint", str(tmp_path / "r" / "model.pt"), "--data", str(tiny_data))
    assert ev.returncode == 0, ev.stderr
    assert 0.0 <= json.loads(ev.stdout)["map50"] <= 1.0
    pr = _run("detector.predict", "--checkpoint", str(tmp_path / "r" / "model.pt"),
              "--images", str(tiny_data.parent / "images"), "--out", str(tmp_path / "det.json"))
    assert pr.returncode == 0, pr.stderr
    dets = json.loads((tmp_path / "det.json").read_text())
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in dets)
    bad = _run("detector.train", "--config", str(cfg), "--set", "optimizer=adam", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "optimizer: must be one of ['sgd', 'adamw'], got 'adam'" in bad.stderr


def test_out_of_memory_becomes_a_named_error_with_the_sizes(splits, tmp_path):
    # No GPU here: the CUDA out-of-memory exception is raised from inside the loop (the epoch
    # callback), which exercises the same handler a real one reaches.
    from detector.engine import OutOfMemoryError

    def oom(m, ck):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(OutOfMemoryError, match="batch_size=2, min_size=64, max_size=64 \\(resnet18 v1\\)"):
        fit(C.from_dict({**CFG, "epochs": 1}), *splits, tmp_path, on_epoch=oom)
