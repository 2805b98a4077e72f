"""Report: from a hand-written run folder with known numbers, and from a real tiny search."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from search import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _trial(run_dir, stage, arm, tid, epochs_map50, params, fail=None, extra_cfg=None):
    d = run_dir / stage / f"{arm}_{tid}"
    d.mkdir(parents=True)
    cfg = {"epochs": 4, "seed": 0, **(extra_cfg or {})}
    (d / "params.json").write_text(json.dumps({"arm": arm, "study": arm, "stage": stage, "cfg": cfg,
                                               "params": {"lr": 0.01 * (1 + len(epochs_map50))}}))
    lines = []
    for e, m in enumerate(epochs_map50, start=1):
        lines.append({"trial_id": tid, "epoch": float(e), "map50": m, "map": m / 2, "map_small": m / 3,
                      "loss": 2.0 / e, "iou_per_pred": 0.5, "iou_per_gt": m, "epoch_time_s": 10.0,
                      "train_img_per_s": 4.0, "params_total": params,
                      "params_trainable": params / 2, "peak_mem_mb": 500.0})
    if fail:
        lines.append({"trial_id": tid, "fail_reason": fail, "epoch": float(len(epochs_map50)), "map50": math.nan})
    (d / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture
def handmade(tmp_path):
    """Two arms, known numbers; arm A's best 0.80 (confirmed 0.78 ± 0.02), arm B's best 0.60 (0.59 ± 0.01)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"name": "hand", "metric": "map50", "max_epochs": 4, "strategy":
                                              "per-architecture", "arms": ["A", "B"], "data": "x.json",
                                              "data_fingerprint": "abc"}))
    (run / "space.yaml").write_text("budget: {max_epochs: 4, grace_period: 1, reduction_factor: 2}\n")
    _trial(run, "trials", "A", "a1", [0.2, 0.5, 0.7, 0.8], params=41_290_000)
    _trial(run, "trials", "A", "a2", [0.1], params=41_290_000)             # stopped at rung 1
    _trial(run, "trials", "A", "a3", [0.3, 0.4, 0.5, 0.6], params=41_290_000)
    _trial(run, "trials", "B", "b1", [0.3, 0.5, 0.6, 0.55], params=28_270_000)
    _trial(run, "trials", "B", "b2", [0.2, 0.3], params=28_270_000)       # stopped at rung 2
    _trial(run, "trials", "B", "b3", [], params=28_270_000, fail="NonFiniteLossError: boom")
    for tid, v in (("c1", 0.76), ("c2", 0.80)):
        _trial(run, "confirm", "A", tid, [0.5, 0.6, 0.7, v], params=41_290_000)
    for tid, v in (("c3", 0.58), ("c4", 0.60)):
        _trial(run, "confirm", "B", tid, [0.4, 0.5, 0.55, v], params=28_270_000)
    # Measured after the search (search.latency), one model at a time: B's model is the faster one.
    (run / "latency.json").write_text(json.dumps({
        "A": {"trial_id": "a1", "latency_ms": 30.0, "latency_n": 20, "device": "cpu"},
        "B": {"trial_id": "b1", "latency_ms": 10.0, "latency_n": 20, "device": "cpu"}}))
    (run / "results.csv").write_text("done\n")
    return run


def test_table_values_figures_and_conclusion_from_known_numbers(handmade):
    res = report.write_report(handmade, handmade / "report")
    rows = {r["arm"]: r for r in res["rows"]}
    a, b = rows["A"], rows["B"]
    assert a["best"] == 0.8 and a["best_trial"] == "a1" and a["map"] == 0.4 and a["epochs_to_95"] == 4
    assert b["best"] == 0.6 and b["best_trial"] == "b1" and b["epochs_to_95"] == 3
    assert (a["trials"], a["stopped"], a["failed"]) == (3, 1, 0) and (b["trials"], b["stopped"], b["failed"]) == (3, 1, 1)
    assert a["confirm_mean"] == pytest.approx(0.78) and a["confirm_std"] == pytest.approx(0.028284, abs=1e-5)
    assert b["confirm_mean"] == pytest.approx(0.59)
    text = (handmade / "report" / "report.md").read_text()
    assert "Best arm: **A**, map50 0.7800 ± 0.0283" in text
    assert "Behind it by more than the spread between seeds: B (0.5900" in text
    assert "| A | 0.8000 | 0.7800 ± 0.0283 (n=2) | 0.4000 |" in text and "| 41.29 | 20.64 |" in text
    assert "b3 (B): NonFiniteLossError: boom" in text
    # Pareto front: B is faster and smaller, A more accurate: both on it.
    assert "Pareto front (latency): A, B" in text or "Pareto front (latency): B, A" in text
    assert a["latency_ms"] == 30.0 and b["latency_ms"] == 10.0
    assert "one model at a time on cpu, batch size 1, median of 20 passes" in text
    for name in res["figures"]:
        assert (handmade / "report" / name).read_bytes()[:8] == PNG_MAGIC
    assert {"curves_map50.png", "curves_loss.png", "cost_latency.png", "cost_params.png"} <= set(res["figures"])


def test_latency_comes_from_the_measurement_after_the_search_only(handmade):
    """A slower B (measured after the search) falls off the latency front; a measurement of a trial
    that is not the arm's best is not shown as the arm's latency; without latency.json, no latency."""
    (handmade / "latency.json").write_text(json.dumps({
        "A": {"trial_id": "a1", "latency_ms": 30.0, "latency_n": 20, "device": "cpu"},
        "B": {"trial_id": "b2", "latency_ms": 5.0, "latency_n": 20, "device": "cpu"}}))
    rows = {r["arm"]: r for r in report.write_report(handmade, handmade / "report")["rows"]}
    assert math.isnan(rows["B"]["latency_ms"])
    (handmade / "latency.json").write_text(json.dumps({
        "A": {"trial_id": "a1", "latency_ms": 30.0, "latency_n": 20, "device": "cpu"},
        "B": {"trial_id": "b1", "latency_ms": 50.0, "latency_n": 20, "device": "cpu"}}))
    report.write_report(handmade, handmade / "report")
    assert "Pareto front (latency): A." in (handmade / "report" / "report.md").read_text()
    (handmade / "latency.json").unlink()
    res = report.write_report(handmade, handmade / "report")
    assert all(math.isnan(r["latency_ms"]) for r in res["rows"])
    assert "Latency: not measured" in (handmade / "report" / "report.md").read_text()


def test_rewriting_replaces_the_report_and_writes_nothing_else(handmade):
    before = sorted(p for p in handmade.rglob("*") if "report" not in p.parts)
    report.write_report(handmade, handmade / "report")
    (handmade / "report" / "stale.txt").write_text("old")
    report.write_report(handmade, handmade / "report")
    assert not (handmade / "report" / "stale.txt").exists()
    assert sorted(p for p in handmade.rglob("*") if "report" not in p.parts) == before


def test_in_progress_run_says_so(handmade):
    (handmade / "results.csv").unlink()
    shutil.rmtree(handmade / "confirm")
    res = report.write_report(handmade, handmade / "report")
    assert res["status"].startswith("in progress")
    assert "cannot be judged against the spread between seeds" in res["conclusion"]


def test_spearman_and_pareto():
    assert report.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert report.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert report.pareto_front([(1, 0.5), (2, 0.9), (3, 0.8), (1, 0.4)]) == [0, 1]
