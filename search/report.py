"""Write the study's chapter from a search run: figures, the comparison table, and a conclusion.

    python -m search.report RUN_DIR [--out DIR]

Writes DIR/report.md (default RUN_DIR/report/) with PNG figures beside it, and prints a short
summary. Works on finished, running, resumed and partly failed runs (it says which). Writes
nothing outside DIR; a rewritten report replaces the old one whole.

This module writes the text (the verdict, the conclusion, the tables as markdown) and decides what
is drawn; the numbers are search/stats.py's, the figures search/figures.py's.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

from search import detections, figures, latency, stats
from search.results import (STATUS_FAILED, STATUS_FINISHED, STATUS_RUNNING, STATUS_STOPPED, TrialRecord, collect,
                            ranked, read_run_info)


# ----------------------------------------------------------------------------------------------
# The study's question in words: shared hyperparameters against a search per arm


def study_verdict(rows: list[dict], pairs: list[dict], tau: tuple[float, float, float], metric: str) -> str:
    """One paragraph: did tuning raise each arm's score, and did it change the ranking beyond the
    noise (a pair reversed only when significant in opposite directions, Holm-corrected)."""
    if len(rows) < 1:
        return ""
    up = [r["arm"] for r in rows if r["gain_lo"] > 0]
    down = [r["arm"] for r in rows if r["gain_hi"] < 0]
    none = [r["arm"] for r in rows if not math.isfinite(r["gain_lo"])]
    n_seeds = sorted({len(r["base"]) for r in rows} | {len(r["tuned"]) for r in rows})
    text = [f"Tuning raised {metric} beyond its 95% interval for {len(up)} of {len(rows)} arm(s)"
            + (f" ({', '.join(up)})" if up else "") + (f" and lowered it for {', '.join(down)}" if down else "")
            + "; for the others the interval includes zero (not significant)"
            + (f" or there is none ({', '.join(none)}: fewer than 2 distinct values, no spread to judge by)"
               if none else "") + "."]
    if len(rows) >= 2:
        t, lo, hi = tau
        swapped = [p for p in pairs if p["swapped"]]
        rev = [p for p in pairs if p["reversed"]]
        ci = f"95% bootstrap interval over seeds {_fmt(lo, '.2f')} to {_fmt(hi, '.2f')}"
        if rev:
            text.append(f"It changed the ranking (Kendall's τ = {t:.2f}, {ci}): of {len(pairs)} pair(s) of arms "
                        f"tested, {len(rev)} reversed, significant in opposite directions under the two settings "
                        f"(Welch's t, Holm-corrected over the {2 * len(pairs)} tests at 5%): "
                        + ", ".join(f"{p['a']} over {p['b']}" for p in rev) + ".")
        else:
            text.append(f"No change of the ranking is shown (Kendall's τ = {t:.2f}, {ci}): of {len(pairs)} pair(s) "
                        f"of arms tested, none reversed significantly in opposite directions under the two settings "
                        f"(Welch's t, Holm-corrected over the {2 * len(pairs)} tests at 5%)"
                        + (f"; {len(swapped)} swapped order within the spread between seeds" if swapped else "")
                        + ".")
    methods = sorted({r["gain_method"] for r in rows})
    text.append(f"Each mean is over {' or '.join(map(str, n_seeds))} seed(s); the gains' intervals are "
                + " and ".join({"paired": "paired by seed (t on the per-seed differences)",
                                "Welch": "Welch's t (the runs do not pair by seed)"}[m] for m in methods) + ".")
    return " ".join(text)


LIST_OVER = 6  # above this many arms the conclusion gives a table, not a list in a sentence


def conclusion(rows: list[dict], metric: str) -> str:
    """Only what the numbers show: the best arm, and which gaps are within the spread between seeds."""
    scored = [r for r in rows if "best" in r]
    if not scored:
        return f"No trial has reported {metric} yet."
    confirmed_rows = [r for r in scored if "confirm_mean" in r]
    if len(confirmed_rows) >= 2 and len(confirmed_rows) == len(scored):
        confirmed_rows.sort(key=lambda r: -r["confirm_mean"])
        top = confirmed_rows[0]
        lines = [f"Best arm on validation: **{top['arm']}**, {metric} {top['confirm_mean']:.4f} ± "
                 f"{top['confirm_std']:.4f} (mean ± standard deviation over {top['confirm_n']} seeds)."]
        close, far, table = [], [], []
        for r in confirmed_rows[1:]:
            d, lo, hi = stats.welch_interval(top["confirm_values"], r["confirm_values"])
            (far if stats.separates(lo, hi) else close).append(
                f"{r['arm']} ({r['confirm_mean']:.4f} ± {r['confirm_std']:.4f}; gap {d:.4f}, 95% interval "
                f"{_fmt(lo)} to {_fmt(hi)})")
            table.append(f"| {r['arm']} | {r['confirm_mean']:.4f} ± {r['confirm_std']:.4f} (n={r['confirm_n']}) | "
                         f"{d:.4f} | {_fmt(lo)} to {_fmt(hi)} | {'behind' if stats.separates(lo, hi) else 'not significant'} |")
        if len(confirmed_rows) > LIST_OVER:  # 38 arms in two sentences cannot be read: a table
            lines.append(f"{len(close)} arm(s) are not significantly behind it (the 95% interval of the gap "
                         f"includes zero), {len(far)} are behind it beyond that interval:")
            return "\n".join([" ".join(lines), "", "| arm | mean ± sd | gap to the best | 95% interval | verdict |",
                              "|---|---|---|---|---|", *table])
        if close:
            lines.append("Not significantly behind it (the 95% interval of the gap includes zero): " + ", ".join(close) + ".")
        if far:
            lines.append("Behind it beyond the 95% interval: " + ", ".join(far) + ".")
        return " ".join(lines)
    scored.sort(key=lambda r: -r["best"])
    top = scored[0]
    text = f"Best arm: **{top['arm']}**, {metric} {top['best']:.4f} (trial {top['best_trial']})."
    if len(scored) > 1:
        others = (", ".join(f"{r['arm']} ({r['best']:.4f})" for r in scored[1:]) if len(scored) <= LIST_OVER
                  else f"the other {len(scored) - 1} arms (their best is in the table below)")
        text += (" Without a confirmation stage (`confirm:` in the space) there is one run per configuration, so "
                 "the gaps to " + others + " cannot be judged against the spread between seeds.")
    return text


def latency_note(rows: list[dict]) -> str:
    """How the latency column was measured, or why it is empty."""
    timed = [r for r in rows if math.isfinite(r.get("latency_ms", math.nan))]
    if not timed:
        return ("Latency: not measured (latency.json is written when search.run ends normally; a run that "
                "stopped early has none, so the latency figure is empty).")
    devices = sorted({str(r.get("latency_device")) for r in timed})
    ns = sorted({r.get("latency_n") for r in timed})
    return (f"Latency: each arm's best model (the weights of the epoch validation chose) timed after the search, one model at a "
            f"time on {', '.join(devices)}, batch size 1, median of {', '.join(map(str, ns))} passes after warm-up.")


def study_section(records: list[TrialRecord], info: dict, metric: str, tmp: Path,
                  stages: tuple[str, ...] | None) -> tuple[list[str], list[str]]:
    """The report's first section (markdown lines, figure names): the study's question answered.
    `stages`: the stages after the search that the run's space has (None: its space is unreadable)."""
    tested = any(r.test for r in records if r.stage in ("confirm", "baseline"))
    n_test = info.get("test_images", 0)
    if tested:
        scored_on = (f"Scored on {n_test} held-out test images, which chose nothing: each run's epoch was chosen "
                     f"on the validation images, and so was each arm's configuration.")
    else:
        scored_on = (f"**Scored on {_images(info, 'val')}, which selected the configurations** (this run has no test "
                     "images: set `test_data` or `fixed.test_fraction`): the figures below are optimistic, and more "
                     "so for arms that had more trials.")
    rows = stats.study_rows(records)
    drawn: list[str] = []
    if not rows:  # one line, and the report goes on with what the run has
        lacks = [f"`{s}:`" for s in ("baseline", "confirm") if stages is not None and s not in stages]
        why = (f"its space has no {' and no '.join(lacks)} section" if lacks else
               "no arm has both a finished baseline and a confirmed tuned configuration yet")
        return [f"This run does not compare shared hyperparameters with a search per arm ({why}); the search's "
                f"conclusion follows.", ""], drawn
    md = ["## Shared hyperparameters against a search per arm", "", scored_on, ""]
    pairs = stats.pair_tests(rows)
    tau = stats.tau_interval(rows)
    which = "test" if tested else "validation"
    md += [f"| arm | shared hyperparameters: {which} {metric} | tuned: {which} {metric} | gain (95% interval) | "
           "rank shared | rank tuned |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["rank_tuned"]):
        interval = (f"{_fmt(r['gain_lo'], '+.4f')} to {_fmt(r['gain_hi'], '+.4f')}, {r['gain_method']}"
                    if math.isfinite(r["gain_lo"]) else "no interval: fewer than 2 distinct values")
        md.append(f"| {r['arm']} | {r['base_mean']:.4f} ± {_fmt(r['base_sd'])} (n={len(r['base'])}) | "
                  f"{r['tuned_mean']:.4f} ± {_fmt(r['tuned_sd'])} (n={len(r['tuned'])}) | "
                  f"{r['gain']:+.4f} ({interval}) | {r['rank_base']} | {r['rank_tuned']} |")
    md += ["", "Mean ± standard deviation over seeds (n = runs); the tuned configuration is the arm's best "
           "confirmed one on validation. The gain's interval is paired by seed (t on the per-seed differences) "
           "where the two stages trained with the same seeds, Welch's otherwise; one that includes zero means "
           "not significant.", ""]
    if len(rows) >= 2:
        md.append(f"Kendall's τ between the two rankings: {_fmt(tau[0], '.2f')} (95% bootstrap interval over seeds "
                  f"{_fmt(tau[1], '.2f')} to {_fmt(tau[2], '.2f')}; {len(rows)} arms).")
        swapped = [p for p in pairs if p["swapped"]]  # a reversed pair is a swapped one
        if swapped:
            md += ["", "| pair whose order changed (ahead after tuning first) | difference tuned (95% interval) | "
                   "p (Welch) | difference shared (95% interval) | p (Welch) | reversed (Holm, 5%)? |",
                   "|---|---|---|---|---|---|"]
            for p in swapped:
                md.append(f"| {p['a']} vs {p['b']} | {p['tuned_diff']:+.4f} ({_fmt(p['tuned_lo'], '+.4f')} to "
                          f"{_fmt(p['tuned_hi'], '+.4f')}) | {_fmt(p['tuned_p'], '.3g')} | "
                          f"{p['base_diff']:+.4f} ({_fmt(p['base_lo'], '+.4f')} to {_fmt(p['base_hi'], '+.4f')}) | "
                          f"{_fmt(p['base_p'], '.3g')} | {'yes' if p['reversed'] else 'no'} |")
        else:
            md.append("No pair of arms changed order.")
    md += ["", "**Verdict.** " + study_verdict(rows, pairs, tau, metric), ""]
    for r in rows:
        name = f"study_curves_{r['arm']}.png"
        figures.fig_study_curves(records, r, tmp / name)
        drawn.append(name)
        md.append(f"![{r['arm']}]({name})")
    md.append("")
    return md, drawn


def detections_section(run_dir: Path, arms: list[str], tmp: Path) -> tuple[list[str], list[str]]:
    """Each arm's detection figures (search/detections.py), its curves and their numbers in words."""
    folder = run_dir / detections.FOLDER
    md, drawn = [], []
    for arm in arms:
        f = folder / f"{arm}.json"
        if not f.exists() or not (folder / f"{arm}.png").exists():
            continue
        s = json.loads(f.read_text())
        if not md:
            md = ["## Detections", "",
                  "Each model at its operating threshold: the score that maximised F1 on the validation images at "
                  "the epoch its weights are from (`score_threshold` in its model file; detector.predict applies it), "
                  "or its `box_score_thresh` where its model file has none (the table says which). "
                  "Its detections are matched one-to-one to the objects at IoU 0.5, highest score first, as COCO "
                  "evaluation matches: true positives blue and solid, false positives vermillion and dashed, missed "
                  "objects yellow and dotted.", ""]
        pool = f"{s['pool']} {s['images']} images" + (f" (the first {s['pool']} of {s['of']})" if s["pool"] < s["of"] else "")
        md += [f"### {arm}: on {pool}", "",
               "| model | threshold (from) | true positives | false positives | missed | precision | recall | F1 | "
               "AP50 |", "|---|---|---|---|---|---|---|---|---|"]
        for m in s["models"]:
            md.append(f"| {m['model']} | {m['threshold']:.3f} ({m['threshold_from']}) | {m['true_positives']} | "
                      f"{m['false_positives']} | {m['missed']} | {m['precision']:.3f} | {m['recall']:.3f} | "
                      f"{m['f1']:.3f} | {_fmt(m['ap50'], '.3f')} |")
        for name in (f"{arm}.png", f"{arm}_curves.png"):
            if (folder / name).exists():
                shutil.copy(folder / name, tmp / f"detections_{name}")
                drawn.append(f"detections_{name}")
                md += ["", f"![{name.removesuffix('.png')}](detections_{name})"]
        md += ["", s["rule"] + " Shown: " + "; ".join(f"image {c['image_id']}, {c['why']}" for c in s["chosen"]) + ".",
               ""]
        md += [f"Not drawn: {label} ({why})." for label, why in s.get("failed", {}).items()]
        md += [""] if s.get("failed") else []
    return md, drawn


# ----------------------------------------------------------------------------------------------
# The report


def _images(info: dict, split: str) -> str:
    """'the 12 validation images' (run.json's counts; runs that lack them: without the number)."""
    name = {"val": "validation", "test": "test", "train": "training"}[split]
    n = info.get(f"{split}_images")
    return f"the {n} {name} images" if n is not None else f"the {name} images"


def _fmt(v, spec=".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def write_report(run_dir: Path, out: Path) -> dict:
    info = read_run_info(run_dir)
    metric, max_epochs = info["metric"], info["max_epochs"]
    # results.csv is written when the search command ends (also after an error or Ctrl-C).
    state_done = (run_dir / "results.csv").exists()
    records = collect(run_dir, metric, max_epochs)
    arms = list(dict.fromkeys(info.get("arms", [])) | dict.fromkeys(r.arm for r in records))
    colours = figures.arm_colours(arms)
    rows = stats.arm_rows(records, metric, latency.read(run_dir))
    space = _space(run_dir / "space.yaml")
    rungs = space.asha_rungs() if space else []

    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent if out.parent.exists() else None))
    drawn = []
    best_ids = {r["best_trial"] for r in rows if "best_trial" in r}
    curves = [f"curves_{key}.png" for key, label in figures.CURVES
              if figures.fig_curves(records, key, label, colours, best_ids, tmp / f"curves_{key}.png")]
    drawn += curves
    front_lat = figures.fig_cost(rows, "latency_ms", "inference latency (ms per image, batch 1)", metric, colours,
                         tmp / "cost_latency.png")
    front_par = figures.fig_cost([{**r, "params_m": r.get("params_total", math.nan) / 1e6} for r in rows], "params_m",
                         "parameters (millions)", metric, colours, tmp / "cost_params.png")
    drawn += ["cost_latency.png", "cost_params.png"]

    md = [f"# Search report: {info['name']}", ""]
    n_running = sum(r.status == STATUS_RUNNING for r in records)
    status = "in progress (what is there so far)" if not state_done or n_running else "finished"
    md += [f"Run `{run_dir}`: {status}. Metric **{metric}** (maximised), up to {max_epochs} epochs per trial, "
           f"strategy {info.get('strategy', '?')}, data {info.get('data')} (fingerprint `{info.get('data_fingerprint')}`).",
           f"{len(records)} trials: {sum(r.status == STATUS_FINISHED for r in records)} finished, "
           f"{sum(r.status == STATUS_STOPPED for r in records)} stopped by ASHA, "
           f"{sum(r.status == STATUS_FAILED for r in records)} failed, {n_running} running.", ""]
    study_md, study_figs = study_section(records, info, metric, tmp, space.eval_stages() if space else None)
    md += study_md
    drawn += study_figs
    summary_line = conclusion(rows, metric)
    val = _images(info, "val")
    md += ["## Conclusion of the search", "", f"On {val}, which chose the configurations.", "", summary_line, ""]
    det_md, det_figs = detections_section(run_dir, arms, tmp)
    md += det_md
    drawn += det_figs
    md += ["## Arms compared", "", f"Validation metrics ({val}) of each arm's best trial, and what it cost.", "",
           f"| arm | best {metric} | mean ± sd over seeds | map | map_small | epochs to 95% | s/epoch | train img/s | "
           "inference ms | params total (M) | trainable (M) | peak mem (MiB): best / any run | trials run: usable (of them stopped by ASHA) / failed |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r.get("best", -1)):
        conf = f"{r['confirm_mean']:.4f} ± {r['confirm_std']:.4f} (n={r['confirm_n']})" if "confirm_mean" in r else "-"
        md.append(f"| {r['arm']} | {_fmt(r.get('best'))} | {conf} | {_fmt(r.get('map'))} | {_fmt(r.get('map_small'))} | "
                  f"{_fmt(r.get('epochs_to_95'), 'd')} | {_fmt(r.get('epoch_time_s'), '.1f')} | "
                  f"{_fmt(r.get('train_img_s'), '.1f')} | {_fmt(r.get('latency_ms'), '.1f')} | "
                  f"{_fmt(r.get('params_total', math.nan) / 1e6, '.2f')} | "
                  f"{_fmt(r.get('params_trainable', math.nan) / 1e6, '.2f')} | {_fmt(r.get('peak_mem_mb'), '.0f')} / {_fmt(r.get('arm_peak_mem_mb'), '.0f')} | "
                  f"{r['trials']}: {r['usable']} ({r['stopped']}) / {r['failed']} |")
    md += [""] + short_arms(rows, space, done=state_done and not n_running)
    md += ["", "## Learning curves", "", f"Every search trial's training loss and its metrics on {val}, per epoch.",
           ""] + ([f"![{k}]({k})" for k in curves] or ["No search trial has reported an epoch."])
    md += ["", "## Accuracy against cost", "", f"Each arm's best {metric} on {val} against its latency and size.", "",
           "![latency](cost_latency.png) ![params](cost_params.png)", "",
           f"Pareto front (latency): {', '.join(front_lat) or '-'}. Pareto front (parameters): {', '.join(front_par) or '-'}.",
           "", latency_note(rows), ""]
    md += ["## Inside each arm", "", f"The search's trials of each arm, scored on {val}.", ""]
    for arm in arms:
        mine = ranked(records, arm)
        if not mine:
            continue
        best = mine[0]
        md.append(f"### {arm}")
        md.append("Best values found (trial " + best.trial_id + "): "
                  + ", ".join(f"`{k}` = {_fmt(v, '.4g') if isinstance(v, float) else v}" for k, v in best.params.items()))
        imp = stats.importances(run_dir, best.study)
        if isinstance(imp, dict):
            md.append("Parameter importance (Optuna, fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()))
        else:
            md.append(f"Parameter importance: {imp}.")
        name = f"slices_{arm}.png"
        if figures.fig_slices(records, arm, metric, colours[arm], tmp / name):
            drawn.append(name)
            md.append(f"\n![{arm}]({name})")
        md.append("")
    md += ["## Early stopping", "", f"ASHA's rungs, on {val}.", "", "| arm | rung (epoch) | stopped there | continued to the end | "
           f"rank correlation of rung {metric} with final best |", "|---|---|---|---|---|"]
    for e in stats.rung_analysis(records, metric, rungs):
        md.append(f"| {e['arm']} | {e['rung']} | {e['stopped']} | {e['continued']} | {_fmt(e['spearman'], '.2f')} |")
    md += ["", "A low or negative correlation means the rung's ranking did not predict the final one: the grace "
           "period may be too short for that arm.", ""]
    failed = [r for r in records if r.status == STATUS_FAILED]
    if failed:
        md += ["## Failed trials", ""] + [f"- {r.trial_id} ({r.arm}): {r.reason}" for r in failed] + [""]
    (tmp / "report.md").write_text("\n".join(md))

    # Replace the old report whole: nothing of a previous version lingers.
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp), str(out))
    return {"rows": rows, "records": records, "figures": drawn, "status": status, "conclusion": summary_line}


def short_arms(rows: list[dict], space, done: bool) -> list[str]:
    """A line for each arm whose search ended with fewer usable trials than `trials_per_arm` because
    more of its trials failed for their configuration than `budget.max_failed_per_arm` could replace
    (search.searcher)."""
    if space is None or not done or space.strategy != "per-architecture":
        return []
    out = [f"**{r['arm']} has {r['usable']} usable trials of the {space.trials_per_arm} every arm gets**: "
           f"{r['infeasible']} of its trials failed for their configuration, more than the "
           f"{space.max_failed_per_arm} `budget.max_failed_per_arm` lets the search replace (see Failed "
           "trials); its best was chosen from fewer configurations than the other arms'." for r in rows
           if r["usable"] < space.trials_per_arm and r["infeasible"] > space.max_failed_per_arm]
    return [*out, ""] if out else []


def _space(space_file: Path):
    """The run's copy of its space file, parsed; None if it is missing or unreadable (the report is
    still written, without what needs it: ASHA's rungs, which stages the space has)."""
    from search.space import SpaceError, load_space

    try:
        return load_space(space_file)
    except (SpaceError, ValueError, OSError):
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    a = p.parse_args(argv)
    run_dir = Path(a.run_dir)
    out = Path(a.out) if a.out else run_dir / "report"
    try:
        res = write_report(run_dir, out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report ({res['status']}): {out / 'report.md'}")
    for r in sorted(res["rows"], key=lambda r: -r.get("best", -1)):
        print(f"  {r['arm']:<24} best {_fmt(r.get('best'))}  trials {r['trials']} "
              f"(stopped {r['stopped']}, failed {r['failed']})")
    print(res["conclusion"].replace("**", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
