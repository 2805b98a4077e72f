"""Write the study's chapter from a search run: figures, the comparison table, and a conclusion.

    python -m search.report RUN_DIR [--out DIR]

Writes DIR/report.md (default RUN_DIR/report/) with PNG figures beside it, and prints a short
summary. Works on finished, running, resumed and partly failed runs (it says which). Writes
nothing outside DIR; a rewritten report replaces the old one whole.
"""
from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from search import detections, latency  # noqa: E402
from search.results import (STATUS_FAILED, STATUS_FINISHED, STATUS_RUNNING, STATUS_STOPPED, TrialRecord,  # noqa: E402
                            collect, confirmed, ranked, read_run_info)

CURVES = (("loss", "training loss"), ("iou_per_pred", "IoU per prediction"), ("iou_per_gt", "IoU per ground truth"),
          ("map50", "mAP50"))


# ----------------------------------------------------------------------------------------------
# Numbers


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (ties get their average rank); nan with fewer than 3 pairs."""
    if len(x) < 3:
        return math.nan

    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for val in np.unique(v):  # average the ranks of ties
            idx = v == val
            r[idx] = r[idx].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when lower cost (x) and higher accuracy (y) are better."""
    front = []
    for i, (cx, ay) in enumerate(points):
        if not any((c2 <= cx and a2 >= ay) and (c2 < cx or a2 > ay) for j, (c2, a2) in enumerate(points) if j != i):
            front.append(i)
    return front


def epochs_to_fraction(history: list[dict], metric: str, best: float, fraction: float = 0.95) -> int | None:
    for h in history:
        if h.get(metric, -math.inf) >= fraction * best:
            return int(h["epoch"])
    return None


# ----------------------------------------------------------------------------------------------
# The study's question: shared hyperparameters against a search per arm

LEVEL = 0.95


def welch_interval(a: list[float], b: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): Welch's t interval for the difference of two means (unequal
    variances, Welch-Satterthwaite degrees of freedom). low/high are nan when either side has fewer
    than 2 values: one run says nothing about the spread between seeds."""
    from scipy import stats

    d = statistics.mean(a) - statistics.mean(b) if a and b else math.nan
    if len(a) < 2 or len(b) < 2:
        return d, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d, d
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return d, d - half, d + half


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b between two rankings' scores (ties handled); nan with fewer than 2 items."""
    from scipy import stats

    if len(x) < 2:
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


def _ranks(values: dict[str, float]) -> dict[str, int]:
    """1 = highest; ties share the better rank."""
    return {k: 1 + sum(v2 > v for v2 in values.values()) for k, v in values.items()}


def _separates(lo: float, hi: float) -> bool:
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


def study_rows(records: list[TrialRecord]) -> list[dict]:
    """Per arm: the scores (`TrialRecord.score`: test metric at the validation-chosen epoch, or the
    best validation metric without test images) of its baseline runs and of its tuned configuration's
    confirmation runs (`results.confirmed`: the best by validation mean), their means, standard
    deviations and counts, the gain (tuned - baseline) with its Welch interval, and both ranks.
    Only arms with both a baseline and a confirmed configuration are compared."""
    rows = []
    for arm in dict.fromkeys(r.arm for r in records):
        base = [r.score() for r in records if r.stage == "baseline" and r.arm == arm and r.status == STATUS_FINISHED]
        base = [v for v in base if math.isfinite(v)]
        conf = confirmed(records, arm)
        tuned = conf[0].values(test=True) if conf else []
        if not base or not tuned:
            continue
        gain, lo, hi = welch_interval(tuned, base)
        rows.append({"arm": arm, "base": base, "tuned": tuned, "trial": conf[0].source.trial_id,
                     "base_mean": statistics.mean(base), "base_sd": statistics.stdev(base) if len(base) > 1 else math.nan,
                     "tuned_mean": statistics.mean(tuned),
                     "tuned_sd": statistics.stdev(tuned) if len(tuned) > 1 else math.nan,
                     "gain": gain, "gain_lo": lo, "gain_hi": hi})
    rb = _ranks({r["arm"]: r["base_mean"] for r in rows})
    rt = _ranks({r["arm"]: r["tuned_mean"] for r in rows})
    for r in rows:
        r.update(rank_base=rb[r["arm"]], rank_tuned=rt[r["arm"]])
    return rows


def flipped_pairs(rows: list[dict]) -> list[dict]:
    """Pairs of arms whose order under shared hyperparameters is reversed after tuning, each with the
    Welch interval of their difference under both (a is the arm ahead after tuning)."""
    out = []
    for i, x in enumerate(rows):
        for y in rows[i + 1:]:
            if (x["base_mean"] - y["base_mean"]) * (x["tuned_mean"] - y["tuned_mean"]) >= 0:
                continue
            a, b = (x, y) if x["tuned_mean"] > y["tuned_mean"] else (y, x)
            d_t, lo_t, hi_t = welch_interval(a["tuned"], b["tuned"])
            d_b, lo_b, hi_b = welch_interval(a["base"], b["base"])
            out.append({"a": a["arm"], "b": b["arm"], "tuned_diff": d_t, "tuned_lo": lo_t, "tuned_hi": hi_t,
                        "base_diff": d_b, "base_lo": lo_b, "base_hi": hi_b,
                        "tuned_separate": _separates(lo_t, hi_t), "base_separate": _separates(lo_b, hi_b)})
    return out


def study_verdict(rows: list[dict], pairs: list[dict], tau: float, metric: str) -> str:
    """One paragraph: did tuning change the ranking, and which of its changes are beyond the noise."""
    if len(rows) < 1:
        return ""
    up = [r["arm"] for r in rows if r["gain_lo"] > 0]
    down = [r["arm"] for r in rows if r["gain_hi"] < 0]
    n_seeds = sorted({len(r["base"]) for r in rows} | {len(r["tuned"]) for r in rows})
    text = [f"Tuning raised {metric} beyond its 95% interval for {len(up)} of {len(rows)} arm(s)"
            + (f" ({', '.join(up)})" if up else "") + (f" and lowered it for {', '.join(down)}" if down else "")
            + "; for the others the interval includes zero (not significant)."]
    if len(rows) >= 2:
        if not pairs:
            text.append(f"It did not change the ranking of the arms (Kendall's τ = {tau:.2f}).")
        else:
            sep = [p for p in pairs if p["tuned_separate"]]
            text.append(f"It changed the ranking (Kendall's τ = {tau:.2f}): {len(pairs)} pair(s) swapped order, "
                        f"{len(sep)} of them with 95% intervals that separate after tuning"
                        + (f" ({', '.join(p['a'] + ' over ' + p['b'] for p in sep)})" if sep else "")
                        + "; the others are within the spread between seeds.")
    text.append(f"Each mean is over {' or '.join(map(str, n_seeds))} seed(s); intervals are Welch's t.")
    return " ".join(text)


def arm_rows(records: list[TrialRecord], metric: str, latencies: dict | None = None) -> list[dict]:
    """The comparison table: one row per arm, from its best search trial (`results.ranked`, the rule
    confirmation and export use too) and its confirmation seeds. Latency comes from `latencies`
    (latency.json: measured after the search, one model at a time), never from inside a trial."""
    latencies = latencies or {}
    rows = []
    for arm in dict.fromkeys(r.arm for r in records):
        search = [r for r in records if r.arm == arm and r.stage == "search"]
        ok = ranked(records, arm)
        row = {"arm": arm, "trials": len(search),
               "finished": sum(r.status == STATUS_FINISHED for r in search),
               "stopped": sum(r.status == STATUS_STOPPED for r in search),
               "failed": sum(r.status == STATUS_FAILED for r in search),
               "running": sum(r.status == STATUS_RUNNING for r in search)}
        if ok:
            best = ok[0]
            lat = latencies.get(arm, {})
            h = next((x for x in best.history if int(x["epoch"]) == best.best_epoch), best.history[-1])
            row.update(best_trial=best.trial_id, best=best.best, map=h.get("map", math.nan),
                       map_small=h.get("map_small", math.nan),
                       epochs_to_95=epochs_to_fraction(best.history, metric, best.best),
                       epoch_time_s=statistics.mean(x.get("epoch_time_s", math.nan) for x in best.history),
                       train_img_s=statistics.mean(x.get("train_img_per_s", math.nan) for x in best.history),
                       latency_ms=lat.get("latency_ms", math.nan) if lat.get("trial_id") == best.trial_id else math.nan,
                       latency_n=lat.get("latency_n"), latency_device=lat.get("device"),
                       params_total=h.get("params_total", math.nan),
                       params_trainable=h.get("params_trainable", math.nan),
                       peak_mem_mb=max(x.get("peak_mem_mb", 0.0) for x in best.history),
                       # The largest peak of any of the arm's runs: what to size a GPU share by
                       # (spaces/README.md, "Packing trials on a GPU").
                       arm_peak_mem_mb=max((x.get("peak_mem_mb", 0.0) for r in records if r.arm == arm
                                            for x in r.history), default=math.nan))
        conf = confirmed(records, arm)
        if conf:  # the arm's best confirmed configuration, on validation (as it was chosen)
            vals = conf[0].values()
            row.update(confirm_trial=conf[0].source.trial_id, confirm_values=vals, confirm_mean=statistics.mean(vals),
                       confirm_std=statistics.stdev(vals) if len(vals) > 1 else 0.0, confirm_n=len(vals))
        rows.append(row)
    return rows


def rung_analysis(records: list[TrialRecord], metric: str, rungs: list[int]) -> list[dict]:
    """Per arm and rung: trials stopped there, and how well the rung's metric ranked the final one."""
    out = []
    for arm in dict.fromkeys(r.arm for r in records):
        mine = [r for r in records if r.arm == arm and r.stage == "search" and r.status != STATUS_FAILED]
        for rung in rungs:
            stopped = sum(r.status == STATUS_STOPPED and r.epochs == rung for r in mine)
            went_on = [r for r in mine if r.epochs > rung and r.status == STATUS_FINISHED]
            at = [next((h.get(metric) for h in r.history if int(h["epoch"]) == rung), math.nan) for r in went_on]
            pairs = [(a, r.best) for a, r in zip(at, went_on) if a is not None and math.isfinite(a)]
            out.append({"arm": arm, "rung": rung, "stopped": stopped, "continued": len(went_on),
                        "spearman": spearman([p[0] for p in pairs], [p[1] for p in pairs])})
    return out


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
            d, lo, hi = welch_interval(top["confirm_values"], r["confirm_values"])
            (far if _separates(lo, hi) else close).append(
                f"{r['arm']} ({r['confirm_mean']:.4f} ± {r['confirm_std']:.4f}; gap {d:.4f}, 95% interval "
                f"{_fmt(lo)} to {_fmt(hi)})")
            table.append(f"| {r['arm']} | {r['confirm_mean']:.4f} ± {r['confirm_std']:.4f} (n={r['confirm_n']}) | "
                         f"{d:.4f} | {_fmt(lo)} to {_fmt(hi)} | {'behind' if _separates(lo, hi) else 'not significant'} |")
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
    return (f"Latency: each arm's best model (its last epoch's checkpoint) timed after the search, one model at a "
            f"time on {', '.join(devices)}, batch size 1, median of {', '.join(map(str, ns))} passes after warm-up.")


# ----------------------------------------------------------------------------------------------
# Figures


def _colours(arms: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    return {a: cmap(i % cmap.N) for i, a in enumerate(arms)}


FACET_OVER = 10  # more arms than this: one panel per backbone (38 arms in one legend cannot be read)


def fig_curves(records, metric_key, label, colours, best_ids, path: Path) -> None:
    """Every search trial's curve, thin, its arm's best bold; with more than FACET_OVER arms, one panel
    per backbone, each with its own colours and legend."""
    order = {a: i for i, a in enumerate(colours)}  # the space's order of arms
    shown = sorted((r for r in records if r.stage == "search" and r.history), key=lambda r: order.get(r.arm, len(order)))
    arms = list(dict.fromkeys(r.arm for r in shown))
    groups: dict[str, list[str]] = {}
    backbone = {r.arm: str(r.config.get("backbone", "?")) for r in shown} if len(arms) > FACET_OVER else {}
    for arm in arms:
        groups.setdefault(backbone.get(arm, ""), []).append(arm)
    cols = min(2, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.2 * rows), squeeze=False, sharey=True)
    for ax, (group, members) in zip(axes.flat, groups.items()):
        own = colours if not group else _colours(members)
        for r in (r for r in shown if r.arm in members):
            x = [h["epoch"] for h in r.history]
            y = [h.get(metric_key, math.nan) for h in r.history]
            bold = r.trial_id in best_ids
            name = r.arm.removeprefix(f"{group}-") if group else r.arm
            ax.plot(x, y, color=own[r.arm], lw=2.4 if bold else 0.9, alpha=1.0 if bold else 0.3,
                    label=f"{name} (best trial)" if bold else None)
            if r.status == STATUS_STOPPED:
                ax.plot(x[-1], y[-1], marker="x", color=own[r.arm], alpha=0.6, ms=6)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if group:
            ax.set_title(group, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right", ncol=2 if len(members) > 7 else 1)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(f"{label} per epoch (bold: best trial of each arm; x: stopped by ASHA)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_study_curves(records: list[TrialRecord], row: dict, path: Path) -> None:
    """The study's four curves for one arm: its shared-hyperparameter runs and its tuned
    configuration's confirmation runs side by side (thin: each seed; bold: the mean over seeds)."""
    arm = row["arm"]
    groups = (("shared hyperparameters", "tab:grey",
               [r for r in records if r.stage == "baseline" and r.arm == arm and r.status == STATUS_FINISHED]),
              (f"tuned (trial {row['trial']})", "tab:blue",
               [r for r in records if r.stage == "confirm" and r.source_trial == row["trial"]
                and r.status == STATUS_FINISHED]))
    fig, axes = plt.subplots(1, len(CURVES), figsize=(3.4 * len(CURVES), 3.2))
    for ax, (key, label) in zip(axes, CURVES):
        for name, colour, runs in groups:
            for r in runs:
                ax.plot([h["epoch"] for h in r.history], [h.get(key, math.nan) for h in r.history], color=colour,
                        lw=0.7, alpha=0.4)
            n = min((len(r.history) for r in runs), default=0)
            if n:
                mean = [statistics.mean(r.history[i].get(key, math.nan) for r in runs) for i in range(n)]
                ax.plot([runs[0].history[i]["epoch"] for i in range(n)], mean, color=colour, lw=2,
                        label=f"{name}, mean of {len(runs)}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{arm}: validation curves, shared hyperparameters against tuned", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def study_section(records: list[TrialRecord], info: dict, metric: str, tmp: Path, run_dir: Path) -> tuple[list[str], list[str]]:
    """The report's first section (markdown lines, figure names): the study's question answered."""
    tested = any(r.test for r in records if r.stage in ("confirm", "baseline"))
    n_test = info.get("test_images", 0)
    if tested:
        scored_on = (f"Scored on {n_test} held-out test images, which chose nothing: each run's epoch was chosen "
                     f"on the validation images, and so was each arm's configuration.")
    else:
        scored_on = ("**Scored on the validation images that selected the configurations** (this run has no test "
                     "images: set `test_data` or `fixed.test_fraction`): the figures below are optimistic, and more "
                     "so for arms that had more trials.")
    md = ["## Shared hyperparameters against a search per arm", "", scored_on, ""]
    rows = study_rows(records)
    figures: list[str] = []
    if not rows:
        md += ["No arm has both a shared-hyperparameter baseline and a confirmed tuned configuration, so the "
               "study's comparison cannot be made (a space needs `baseline:` and `confirm:` sections).", ""]
        return md, figures
    pairs = flipped_pairs(rows)
    tau = kendall_tau([r["base_mean"] for r in rows], [r["tuned_mean"] for r in rows])
    which = "test" if tested else "validation"
    md += [f"| arm | shared hyperparameters: {which} {metric} | tuned: {which} {metric} | gain (95% interval, Welch) | "
           "rank shared | rank tuned |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["rank_tuned"]):
        md.append(f"| {r['arm']} | {r['base_mean']:.4f} ± {_fmt(r['base_sd'])} (n={len(r['base'])}) | "
                  f"{r['tuned_mean']:.4f} ± {_fmt(r['tuned_sd'])} (n={len(r['tuned'])}) | "
                  f"{r['gain']:+.4f} ({_fmt(r['gain_lo'], '+.4f')} to {_fmt(r['gain_hi'], '+.4f')}) | "
                  f"{r['rank_base']} | {r['rank_tuned']} |")
    md += ["", "Mean ± standard deviation over seeds (n = runs); the tuned configuration is the arm's best "
           "confirmed one on validation. An interval that includes zero means not significant.", ""]
    if len(rows) >= 2:
        md.append(f"Kendall's τ between the two rankings: {_fmt(tau, '.2f')} ({len(rows)} arms).")
        if pairs:
            md += ["", "| pair whose order changed (ahead after tuning first) | difference tuned (95% interval) | "
                   "separate? | difference shared (95% interval) | separate? |", "|---|---|---|---|---|"]
            for p in pairs:
                md.append(f"| {p['a']} vs {p['b']} | {p['tuned_diff']:+.4f} ({_fmt(p['tuned_lo'], '+.4f')} to "
                          f"{_fmt(p['tuned_hi'], '+.4f')}) | {'yes' if p['tuned_separate'] else 'no'} | "
                          f"{p['base_diff']:+.4f} ({_fmt(p['base_lo'], '+.4f')} to {_fmt(p['base_hi'], '+.4f')}) | "
                          f"{'yes' if p['base_separate'] else 'no'} |")
        else:
            md.append("No pair of arms changed order.")
    md += ["", "**Verdict.** " + study_verdict(rows, pairs, tau, metric), ""]
    for r in rows:
        name = f"study_curves_{r['arm']}.png"
        fig_study_curves(records, r, tmp / name)
        figures.append(name)
        md.append(f"![{r['arm']}]({name})")
    shots = sorted((run_dir / detections.FOLDER).glob("*.png")) if (run_dir / detections.FOLDER).is_dir() else []
    if shots:
        md += ["", f"### Detections ({'test' if n_test else 'validation'} images)", ""]
        for f in shots:
            shutil.copy(f, tmp / f"detections_{f.name}")
            figures.append(f"detections_{f.name}")
            md.append(f"![{f.stem}](detections_{f.name})")
    md.append("")
    return md, figures


def fig_cost(rows, key, xlabel, metric, colours, path: Path) -> list[str]:
    pts = [(r[key], r["best"], r["arm"]) for r in rows
           if "best" in r and math.isfinite(r.get(key, math.nan))]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    front = pareto_front([(p[0], p[1]) for p in pts])
    for i, (x, y, arm) in enumerate(pts):
        ax.scatter(x, y, color=colours[arm], s=60 if i in front else 30, edgecolor="black" if i in front else "none",
                   label=arm, zorder=3)
    if front:
        fx = sorted((pts[i][0], pts[i][1]) for i in front)
        ax.plot([p[0] for p in fx], [p[1] for p in fx], "k--", lw=1, label="Pareto front", zorder=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"{metric} against {xlabel.split(' (')[0]}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [pts[i][2] for i in front]


def fig_slices(records: list[TrialRecord], arm: str, metric: str, colour, path: Path) -> bool:
    mine = [r for r in records if r.arm == arm and r.stage == "search" and math.isfinite(r.best)]
    names = sorted({k for r in mine for k, v in r.params.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if not mine or not names:
        return False
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        pts = [(r.params[name], r.best, r.status) for r in mine if name in r.params]
        for x, y, st in pts:
            ax.scatter(x, y, color=colour, marker="o" if st == STATUS_FINISHED else "x", alpha=0.8)
        if pts and min(p[0] for p in pts) > 0 and max(p[0] for p in pts) / min(p[0] for p in pts) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(f"best {metric}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{arm}: {metric} against each searched value (o finished, x stopped)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def importances(run_dir: Path, study_name: str) -> dict[str, float] | str:
    """Optuna's parameter importance (fANOVA) for one study, or why it cannot be computed."""
    journal = run_dir / "optuna.journal"
    if not journal.exists():
        return "no Optuna journal in the run folder"
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=JournalStorage(JournalFileBackend(str(journal))))
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) < 2:
            return f"{len(done)} completed trial(s): at least 2 are needed"
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (KeyError, ValueError, RuntimeError) as e:
        return f"not computed: {e}"


# ----------------------------------------------------------------------------------------------
# The report


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
    colours = _colours(arms)
    rows = arm_rows(records, metric, latency.read(run_dir))
    rungs = _rungs(run_dir / "space.yaml")

    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent if out.parent.exists() else None))
    figures = []
    best_ids = {r["best_trial"] for r in rows if "best_trial" in r}
    for key, label in CURVES:
        name = f"curves_{key}.png"
        fig_curves(records, key, label, colours, best_ids, tmp / name)
        figures.append(name)
    front_lat = fig_cost(rows, "latency_ms", "inference latency (ms per image, batch 1)", metric, colours,
                         tmp / "cost_latency.png")
    front_par = fig_cost([{**r, "params_m": r.get("params_total", math.nan) / 1e6} for r in rows], "params_m",
                         "parameters (millions)", metric, colours, tmp / "cost_params.png")
    figures += ["cost_latency.png", "cost_params.png"]

    md = [f"# Search report: {info['name']}", ""]
    n_running = sum(r.status == STATUS_RUNNING for r in records)
    status = "in progress (what is there so far)" if not state_done or n_running else "finished"
    md += [f"Run `{run_dir}`: {status}. Metric **{metric}** (maximised), up to {max_epochs} epochs per trial, "
           f"strategy {info.get('strategy', '?')}, data {info.get('data')} (fingerprint `{info.get('data_fingerprint')}`).",
           f"{len(records)} trials: {sum(r.status == STATUS_FINISHED for r in records)} finished, "
           f"{sum(r.status == STATUS_STOPPED for r in records)} stopped by ASHA, "
           f"{sum(r.status == STATUS_FAILED for r in records)} failed, {n_running} running.", ""]
    study_md, study_figs = study_section(records, info, metric, tmp, run_dir)
    md += study_md
    figures += study_figs
    summary_line = conclusion(rows, metric)
    md += ["## Conclusion of the search", "", summary_line, ""]
    md += ["## Arms compared", "",
           f"| arm | best {metric} | mean ± sd over seeds | map | map_small | epochs to 95% | s/epoch | train img/s | "
           "inference ms | params total (M) | trainable (M) | peak mem (MiB): best / any run | trials run / stopped / failed |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r.get("best", -1)):
        conf = f"{r['confirm_mean']:.4f} ± {r['confirm_std']:.4f} (n={r['confirm_n']})" if "confirm_mean" in r else "-"
        md.append(f"| {r['arm']} | {_fmt(r.get('best'))} | {conf} | {_fmt(r.get('map'))} | {_fmt(r.get('map_small'))} | "
                  f"{_fmt(r.get('epochs_to_95'), 'd')} | {_fmt(r.get('epoch_time_s'), '.1f')} | "
                  f"{_fmt(r.get('train_img_s'), '.1f')} | {_fmt(r.get('latency_ms'), '.1f')} | "
                  f"{_fmt(r.get('params_total', math.nan) / 1e6, '.2f')} | "
                  f"{_fmt(r.get('params_trainable', math.nan) / 1e6, '.2f')} | {_fmt(r.get('peak_mem_mb'), '.0f')} / {_fmt(r.get('arm_peak_mem_mb'), '.0f')} | "
                  f"{r['trials']} / {r['stopped']} / {r['failed']} |")
    md += ["", "## Learning curves", ""] + [f"![{k}]({k.replace(' ', '_')})" for k in figures[:4]]
    md += ["", "## Accuracy against cost", "", "![latency](cost_latency.png) ![params](cost_params.png)", "",
           f"Pareto front (latency): {', '.join(front_lat) or '-'}. Pareto front (parameters): {', '.join(front_par) or '-'}.",
           "", latency_note(rows), ""]
    md += ["## Inside each arm", ""]
    for arm in arms:
        mine = ranked(records, arm)
        if not mine:
            continue
        best = mine[0]
        md.append(f"### {arm}")
        md.append("Best values found (trial " + best.trial_id + "): "
                  + ", ".join(f"`{k}` = {_fmt(v, '.4g') if isinstance(v, float) else v}" for k, v in best.params.items()))
        imp = importances(run_dir, best.study)
        if isinstance(imp, dict):
            md.append("Parameter importance (Optuna, fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()))
        else:
            md.append(f"Parameter importance: {imp}.")
        name = f"slices_{arm}.png"
        if fig_slices(records, arm, metric, colours[arm], tmp / name):
            figures.append(name)
            md.append(f"\n![{arm}]({name})")
        md.append("")
    md += ["## Early stopping", "", "| arm | rung (epoch) | stopped there | continued to the end | "
           f"rank correlation of rung {metric} with final best |", "|---|---|---|---|---|"]
    for e in rung_analysis(records, metric, rungs):
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
    return {"rows": rows, "records": records, "figures": figures, "status": status, "conclusion": summary_line}


def _rungs(space_file: Path) -> list[int]:
    """The run's ASHA rungs, from the copy of its space file; none if it is missing or unreadable."""
    from search.space import SpaceError, load_space

    try:
        return load_space(space_file).asha_rungs()
    except (SpaceError, ValueError):
        return []


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
