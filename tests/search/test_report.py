"""Report: from a hand-written run folder with known numbers, and from a real tiny search."""
from __future__ import annotations

import json
import math
import shutil
import statistics

import pytest

from search import report
from search.stats import pair_tests, pareto_front, spearman, study_rows
from search import results as R

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _trial(run_dir, stage, arm, tid, epochs_map50, params, fail=None, extra_cfg=None, source="", test=None, seed=0,
           peak=500.0):
    """A trial folder as Ray leaves it (`stage` "trials": a search trial). `test`: the test mAP50
    reported at the best validation epoch (as detector.engine.fit does); `source`: the search trial a
    confirmation run retrains."""
    d = run_dir / "trials" / f"{arm}_{tid}"  # every stage's runs share the search's Tuner folder
    d.mkdir(parents=True)
    cfg = {"epochs": 4, "seed": seed, **(extra_cfg or {})}
    stage = "search" if stage == "trials" else stage
    (d / "params.json").write_text(json.dumps({"arm": arm, "study": arm, "stage": stage, "cfg": cfg,
                                               "source_trial": source,
                                               "params": {"lr": 0.01 * (1 + len(epochs_map50))}}))
    lines = []
    best = max(epochs_map50, default=None)
    for e, m in enumerate(epochs_map50, start=1):
        lines.append({"trial_id": tid, "epoch": float(e), "map50": m, "map": m / 2, "map75": m * 0.75, "map_small": m / 3,
                      "loss": 2.0 / e, "iou_per_pred": 0.5, "iou_per_gt": m, "epoch_time_s": 10.0,
                      "train_img_per_s": 4.0, "params_total": params,
                      "params_trainable": params / 2, "peak_mem_mb": peak + e})
        if test is not None and m == best and epochs_map50.index(m) == e - 1:
            lines[-1].update(test_map50=test, test_map=test / 2, test_map75=test * 0.75, test_map_small=test / 3,
                             test_iou_per_pred=0.5,
                             test_iou_per_gt=test)
    if fail:
        lines.append({"trial_id": tid, "fail_reason": fail, "epoch": float(len(epochs_map50)), "map50": math.nan})
    (d / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))


def _drop_stage(run_dir, stage):
    for d in (run_dir / "trials").iterdir():
        if json.loads((d / "params.json").read_text())["stage"] == stage:
            shutil.rmtree(d)


def test_a_run_folder_of_an_earlier_layout_is_refused_naming_the_folder_and_why(handmade, tmp_path):
    """Runs made before the later stages shared the search's queue kept each stage in its own Tuner
    folder (version 0.1 has none to keep): the report, the export and the results refuse them with
    one message naming the folder and what is different, and write nothing."""
    from search import export

    for d in list((handmade / "trials").iterdir()):
        config = json.loads((d / "params.json").read_text())
        if config["stage"] != "search":
            (handmade / config["stage"]).mkdir(exist_ok=True)
            d.rename(handmade / config["stage"] / d.name)
    message = rf"{handmade}: a run folder of an earlier layout \(it has a folder per stage \(confirm, baseline\)\)"
    for call in (lambda: report.write_report(handmade, tmp_path / "rep"), lambda: export.export(handmade, tmp_path / "exp"),
                 lambda: R.collect(handmade, "map50", 4)):
        with pytest.raises(R.RunLayoutError, match=message):
            call()
    assert not (tmp_path / "rep").exists() and not (tmp_path / "exp").exists()
    shutil.rmtree(handmade / "confirm")
    shutil.rmtree(handmade / "baseline")
    info = json.loads((handmade / "run.json").read_text())
    (handmade / "run.json").write_text(json.dumps({k: v for k, v in info.items() if k != "stages_share_queue"}))
    with pytest.raises(R.RunLayoutError, match="its run.json lacks stages_share_queue"):
        report.write_report(handmade, tmp_path / "rep")


@pytest.fixture
def handmade(tmp_path):
    """Two arms, known numbers; arm A's best 0.80 (confirmed 0.78 ± 0.02), arm B's best 0.60 (0.59 ± 0.01)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"name": "hand", "metric": "map50", "max_epochs": 4, "strategy":
                                              "per-architecture", "arms": ["A", "B"], "data": "x.json",
                                              "data_fingerprint": "abc", "test_images": 5, "val_images": 8,
                                              "stages_share_queue": True,
                                              "versions": {"torch": "x"}}))
    (run / "space.yaml").write_text("budget: {max_epochs: 4, grace_period: 1, reduction_factor: 2}\n"
                                    "confirm: {top_k: 1, seeds: 2}\nbaseline: {lr: 0.01}\n")
    _trial(run, "trials", "A", "a1", [0.2, 0.5, 0.7, 0.8], params=41_290_000)
    _trial(run, "trials", "A", "a2", [0.1], params=41_290_000)             # stopped at rung 1
    _trial(run, "trials", "A", "a3", [0.3, 0.4, 0.5, 0.6], params=41_290_000, peak=2000.0)  # a larger batch
    _trial(run, "trials", "B", "b1", [0.3, 0.5, 0.6, 0.55], params=28_270_000)
    _trial(run, "trials", "B", "b2", [0.2, 0.3], params=28_270_000)       # stopped at rung 2
    _trial(run, "trials", "B", "b3", [], params=28_270_000, fail="NonFiniteLossError: boom")
    # Confirmation (validation best, test at that epoch) and the shared-hyperparameter baseline:
    # B is ahead under shared hyperparameters (test 0.61 vs 0.525), A after tuning (0.72 vs 0.59).
    for tid, v, t, seed in (("c1", 0.76, 0.70, 1000), ("c2", 0.80, 0.74, 1001)):
        _trial(run, "confirm", "A", tid, [0.5, 0.6, 0.7, v], params=41_290_000, source="a1", test=t, seed=seed)
    for tid, v, t, seed in (("c3", 0.58, 0.58, 1000), ("c4", 0.60, 0.60, 1001)):
        _trial(run, "confirm", "B", tid, [0.4, 0.5, 0.55, v], params=28_270_000, source="b1", test=t, seed=seed)
    for arm, tid, t, seed in (("A", "d1", 0.50, 1000), ("A", "d2", 0.55, 1001), ("B", "d3", 0.60, 1000),
                              ("B", "d4", 0.62, 1001)):
        _trial(run, "baseline", arm, tid, [0.4, 0.5, 0.55, 0.6], params=28_270_000, test=t, seed=seed)
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
    assert (a["usable"], b["usable"]) == (3, 2)
    assert a["confirm_mean"] == pytest.approx(0.78) and a["confirm_std"] == pytest.approx(0.028284, abs=1e-5)
    assert b["confirm_mean"] == pytest.approx(0.59)
    text = (handmade / "report" / "report.md").read_text()
    assert "Best arm on validation: **A**, map50 0.7800 ± 0.0283" in text
    assert "Behind it beyond the 95% interval: B (0.5900 ± 0.0141; gap 0.1900, 95% interval" in text
    assert "| A | 0.8000 | 0.7800 ± 0.0283 (n=2) | 0.4000 |" in text and "| 41.29 | 20.64 |" in text
    # Peak memory: the best trial's (a1: 500 + 4 epochs) and the largest of any of the arm's runs (a3).
    assert a["peak_mem_mb"] == 504.0 and a["arm_peak_mem_mb"] == 2004.0 and "| 504 / 2004 |" in text
    assert "b3 (B): NonFiniteLossError: boom" in text and "| 3: 2 (1) / 1 |" in text
    assert "usable trials of the" not in text  # B's one failure is within what max_failed_per_arm replaces
    # Pareto front: B is faster and smaller, A more accurate: both on it.
    assert "Pareto front (latency): A, B" in text or "Pareto front (latency): B, A" in text
    assert a["latency_ms"] == 30.0 and b["latency_ms"] == 10.0
    assert "one model at a time on cpu, batch size 1, median of 20 passes" in text
    for name in res["figures"]:
        assert (handmade / "report" / name).read_bytes()[:8] == PNG_MAGIC
    assert {"curves_map50.png", "curves_loss.png", "cost_latency.png", "cost_params.png"} <= set(res["figures"])


def test_study_table_from_known_numbers(handmade):
    from scipy import stats

    res = report.write_report(handmade, handmade / "report")
    text = (handmade / "report" / "report.md").read_text()
    first = text.split("## ")[1]
    assert first.startswith("Shared hyperparameters against a search per arm")
    assert "Scored on 5 held-out test images, which chose nothing" in first
    rows = {r["arm"]: r for r in study_rows(res["records"])}
    a, b = rows["A"], rows["B"]
    assert a["base_by_seed"] == {1000: 0.50, 1001: 0.55} and a["tuned_by_seed"] == {1000: 0.70, 1001: 0.74}
    assert a["trial"] == "a1" and (a["rank_base"], a["rank_tuned"], b["rank_base"], b["rank_tuned"]) == (2, 1, 1, 2)
    assert a["gain"] == pytest.approx(0.195) and b["gain"] == pytest.approx(-0.02)
    # The stages share their seeds, so the gain is paired: scipy's paired t interval.
    ci = stats.ttest_rel([0.70, 0.74], [0.50, 0.55]).confidence_interval(0.95)
    assert a["gain_method"] == "paired" and (a["gain_lo"], a["gain_hi"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # B's two seeds gained exactly the same (-0.02 twice): no spread, so no interval, not certainty.
    assert math.isnan(b["gain_lo"]) and math.isnan(b["gain_hi"])
    assert "| A | 0.5250 ± 0.0354 (n=2) | 0.7200 ± 0.0283 (n=2) | +0.1950 (+0.1315 to +0.2585, paired) | 2 | 1 |" in first
    assert "| B | 0.6100 ± 0.0141 (n=2) | 0.5900 ± 0.0141 (n=2) | -0.0200 (no interval: fewer than 2 distinct values)" in first
    assert "Kendall's τ between the two rankings: -1.00 (95% bootstrap interval over seeds" in first
    [pair] = pair_tests(list(rows.values()))
    assert (pair["a"], pair["b"]) == ("A", "B") and pair["tuned_diff"] == pytest.approx(0.13) and pair["swapped"]
    assert pair["base_diff"] == pytest.approx(-0.085)
    p_tuned = stats.ttest_ind([0.70, 0.74], [0.58, 0.60], equal_var=False).pvalue  # 0.055
    p_base = stats.ttest_ind([0.50, 0.55], [0.60, 0.62], equal_var=False).pvalue  # 0.146
    assert (pair["tuned_p"], pair["base_p"]) == (pytest.approx(p_tuned), pytest.approx(p_base))
    assert not pair["reversed"]  # swapped in order, significant in neither setting
    assert "| A vs B | +0.1300" in first and "| no |" in first
    assert "Tuning raised map50 beyond its 95% interval for 1 of 2 arm(s) (A)" in first
    assert "or there is none (B: fewer than 2 distinct values" in first
    assert ("No change of the ranking is shown (Kendall's τ = -1.00, 95% bootstrap interval over seeds" in first
            and "of 1 pair(s) of arms tested, none reversed" in first and "1 swapped order within the spread" in first)
    assert "the gains' intervals are paired by seed (t on the per-seed differences)." in first
    assert {"study_curves_A.png", "study_curves_B.png"} <= set(res["figures"])


def test_without_test_images_the_report_says_what_scored_it(handmade):
    for f in handmade.glob("*/*/result.json"):
        f.write_text("".join(json.dumps({k: v for k, v in json.loads(x).items() if not k.startswith("test_")}) + "\n"
                             for x in f.read_text().splitlines()))
    res = report.write_report(handmade, handmade / "report")
    text = (handmade / "report" / "report.md").read_text()
    assert "**Scored on the 8 validation images, which selected the configurations**" in text.split("## ")[1]
    rows = {r["arm"]: r for r in study_rows(res["records"])}
    assert rows["A"]["tuned"] == [0.76, 0.80] and rows["A"]["base"] == [0.6, 0.6]


def test_a_run_without_a_baseline_says_so_in_one_line_and_opens_with_the_search_s_conclusion(handmade):
    # Its baseline runs have not run yet: the space has the section, the report says why there is no study.
    _drop_stage(handmade, "baseline")
    report.write_report(handmade, handmade / "report")
    assert ("(no arm has both a finished baseline and a confirmed tuned configuration yet)"
            in (handmade / "report" / "report.md").read_text().split("\n## ")[0])
    (handmade / "space.yaml").write_text("budget: {max_epochs: 4, grace_period: 1, reduction_factor: 2}\n"
                                         "confirm: {top_k: 1, seeds: 2}\n")  # a space without one
    report.write_report(handmade, handmade / "report")
    text = (handmade / "report" / "report.md").read_text()
    head, *sections = text.split("\n## ")
    assert head.strip().endswith("This run does not compare shared hyperparameters with a search per arm (its "
                                 "space has no `baseline:` section); the search's conclusion follows.")
    assert sections[0].startswith("Conclusion of the search\n\nOn the 8 validation images, which chose the "
                                  "configurations.\n\nBest arm on validation: **A**")
    # Every section says which images its numbers are from, and how many.
    for s in sections:
        if not s.startswith("Failed trials"):
            assert "the 8 validation images" in s, s.splitlines()[0]


@pytest.mark.parametrize("metric, scale", [("map75", 0.75), ("map_small", 1 / 3)])
def test_every_selectable_metric_scores_the_study(handmade, metric, scale):
    """A run selecting by map75 or map_small gets its study table in that metric (the test metrics
    are every metric a configuration can be selected by), not a message about missing sections."""
    info = json.loads((handmade / "run.json").read_text())
    (handmade / "run.json").write_text(json.dumps({**info, "metric": metric}))
    res = report.write_report(handmade, handmade / "report")
    rows = {r["arm"]: r for r in study_rows(res["records"])}
    assert rows["A"]["tuned"] == [pytest.approx(0.70 * scale), pytest.approx(0.74 * scale)]
    assert rows["A"]["base"] == [pytest.approx(0.50 * scale), pytest.approx(0.55 * scale)]
    first = (handmade / "report" / "report.md").read_text().split("## ")[1]
    assert first.startswith("Shared hyperparameters against a search per arm") and f"test {metric}" in first


def test_the_detections_section_gives_each_model_s_threshold_numbers_and_images(handmade):
    folder = handmade / "detections"
    folder.mkdir()
    for name in ("A.png", "A_curves.png"):
        (folder / name).write_bytes(PNG_MAGIC + b"figure")
    (folder / "A.json").write_text(json.dumps({
        "arm": "A", "images": "test", "pool": 5, "of": 5, "rule": "Images chosen by rule: most objects first.",
        "chosen": [{"image_id": 12, "file_name": "x.png", "why": "most objects (9)"}],
        "models": [{"model": "tuned (trial a1, seed 1000)", "threshold": 0.4213, "threshold_from": "validation F1",
                    "true_positives": 7, "false_positives": 2, "missed": 3, "precision": 7 / 9, "recall": 0.7,
                    "f1": 0.7368, "ap50": 0.6523}],
        "failed": {"shared hyperparameters (seed 1000)": "RuntimeError: out of memory"}}))
    res = report.write_report(handmade, handmade / "report")
    text = (handmade / "report" / "report.md").read_text()
    section = text.split("\n## Detections\n")[1].split("\n## ")[0]
    assert "### A: on 5 test images" in section and "operating threshold" in section
    assert "| tuned (trial a1, seed 1000) | 0.421 (validation F1) | 7 | 2 | 3 | 0.778 | 0.700 | 0.737 | 0.652 |" in section
    assert "Images chosen by rule: most objects first. Shown: image 12, most objects (9)." in section
    assert "Not drawn: shared hyperparameters (seed 1000) (RuntimeError: out of memory)." in section
    assert {"detections_A.png", "detections_A_curves.png"} <= set(res["figures"])
    assert text.index("## Detections") > text.index("## Conclusion of the search")


def test_export_takes_the_confirmation_s_ranking_unless_told_otherwise(handmade, tmp_path):
    import yaml

    from search import export

    export.export(handmade, tmp_path / "c", weights=False)  # a hand-made run has no weights
    meta = yaml.safe_load((tmp_path / "c" / "best.yaml").read_text())["search"]
    assert meta["trial_id"] == "a1" and meta["selected_by"] == "confirm" and meta["split_seed"] == 0
    assert meta["confirmation"] == {"seeds": [1000, 1001], "mean": 0.78, "sd": pytest.approx(0.028284, abs=1e-6), "n": 2}
    assert meta["test"]["map50"]["mean"] == pytest.approx(0.72) and meta["data_fingerprint"] == "abc"
    export.export(handmade, tmp_path / "s", source="search", weights=False)
    meta = yaml.safe_load((tmp_path / "s" / "best.yaml").read_text())["search"]
    assert meta["selected_by"] == "search" and "confirmation" not in meta and meta["trial_id"] == "a1"
    _drop_stage(handmade, "confirm")
    with pytest.raises(ValueError, match="--from confirm: the run has no confirmation stage"):
        export.export(handmade, tmp_path / "x", source="confirm", weights=False)


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
    _drop_stage(handmade, "confirm")
    res = report.write_report(handmade, handmade / "report")
    assert res["status"].startswith("in progress")
    assert "cannot be judged against the spread between seeds" in res["conclusion"]


def test_spearman_and_pareto():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert pareto_front([(1, 0.5), (2, 0.9), (3, 0.8), (1, 0.4)]) == [0, 1]


def test_the_conclusion_over_many_arms_is_a_table_not_a_sentence():
    """38 arms in one sentence could not be read (issue 17): above LIST_OVER arms one row per arm."""
    def row(i, values):
        return {"arm": f"arm{i}", "best": max(values), "best_trial": f"t{i}", "confirm_values": values,
                "confirm_mean": statistics.mean(values), "confirm_std": statistics.stdev(values),
                "confirm_n": len(values)}

    rows = [row(0, [0.50, 0.51, 0.52])] + [row(i, [0.50 - 0.02 * i, 0.51 - 0.02 * i, 0.52 - 0.02 * i])
                                           for i in range(1, report.LIST_OVER + 2)]
    rows[1] = row(1, [0.49, 0.52, 0.50])  # overlapping the best: not significant
    text = report.conclusion(rows, "map50")
    lines = text.splitlines()
    assert lines[0].startswith("Best arm on validation: **arm0**")
    assert "1 arm(s) are not significantly behind it" in lines[0] and f"{len(rows) - 2} are behind it" in lines[0]
    arm_rows = [ln for ln in lines if ln.startswith("| arm") and not ln.startswith("| arm |")]
    assert len(arm_rows) == len(rows) - 1  # one row per arm but the best
    assert "| arm1 |" in text and text.count("| behind |") == len(rows) - 2
    few = report.conclusion(rows[:3], "map50")
    assert "\n" not in few and "Not significantly behind it" in few  # a few arms: sentences, as before


def test_the_curves_of_more_arms_than_facet_over_are_drawn_one_panel_per_backbone(tmp_path):
    """Above figures.FACET_OVER arms (the full space has 38) the learning curves are split by backbone,
    each panel with its own colours: drawn, not an error."""
    from search import figures

    arms = [f"{bb}-v{v}-none-t{t}" for bb in ("resnet18", "resnet50") for v in (1, 2) for t in range(3)]
    assert len(arms) > figures.FACET_OVER
    records = [R.TrialRecord(trial_id=f"t{i}", arm=arm, study=arm, stage="search", metric="map50",
                             status=R.STATUS_FINISHED, epochs=2, best=0.3, last=0.3, best_epoch=2, reason="",
                             unreadable_lines=0, path=str(tmp_path), config={"backbone": arm.split("-")[0]},
                             params={}, history=[{"epoch": 1.0, "map50": 0.2}, {"epoch": 2.0, "map50": 0.3}])
               for i, arm in enumerate(arms)]
    figures.fig_curves(records, "map50", "mAP50", figures.arm_colours(arms), {"t0"}, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC
