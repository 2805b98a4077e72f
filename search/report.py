"""Write the study's chapter from a search run: figures, the comparison table, and a conclusion.

    python -m search.report RUN_DIR [--out DIR]

Writes DIR/report.md (default RUN_DIR/report/) with PNG figures beside it, and prints a short
summary. Works on finished, running, resumed and partly failed runs (it says which). Writes
nothing outside DIR; a rewritten report replaces the old one whole.
"""
from __future__ import annotations

import argparse
import json
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

from search import latency  # noqa: E402
from search.results import (STATUS_FAILED, STATUS_FINISHED, STATUS_RUNNING, STATUS_STOPPED, TrialRecord,  # noqa: E402
                            collect, ranked)

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


def arm_rows(records: list[TrialRecord], metric: str, latencies: dict | None = None) -> list[dict]:
    """The comparison table: one row per arm, from its best search trial (`results.ranked`, the rule
    confirmation and export use too) and its confirmation seeds. Latency comes from `latencies`
    (latency.json: measured after the search, one model at a time), never from inside a trial."""
    latencies = latencies or {}
    rows = []
    for arm in dict.fromkeys(r.arm for r in records):
        search = [r for r in records if r.arm == arm and r.stage == "search"]
        confirm = [r for r in records if r.arm == arm and r.stage == "confirm" and math.isfinite(r.best)]
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
                       peak_mem_mb=max(x.get("peak_mem_mb", 0.0) for x in best.history))
        if confirm:
            vals = [r.best for r in confirm]
            row.update(confirm_mean=statistics.mean(vals), confirm_std=statistics.stdev(vals) if len(vals) > 1 else 0.0,
                       confirm_n=len(vals))
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


def conclusion(rows: list[dict], metric: str) -> str:
    """Only what the numbers show: the best arm, and which gaps are within the spread between seeds."""
    scored = [r for r in rows if "best" in r]
    if not scored:
        return f"No trial has reported {metric} yet."
    confirmed = [r for r in scored if "confirm_mean" in r]
    if len(confirmed) >= 2 and len(confirmed) == len(scored):
        confirmed.sort(key=lambda r: -r["confirm_mean"])
        top = confirmed[0]
        lines = [f"Best arm: **{top['arm']}**, {metric} {top['confirm_mean']:.4f} ± {top['confirm_std']:.4f} "
                 f"(mean ± standard deviation over {top['confirm_n']} seeds)."]
        close = [r for r in confirmed[1:]
                 if top["confirm_mean"] - r["confirm_mean"] <= max(top["confirm_std"], r["confirm_std"])]
        far = [r for r in confirmed[1:] if r not in close]
        if close:
            lines.append("Not significantly different from it (gap within one standard deviation between seeds): "
                         + ", ".join(f"{r['arm']} ({r['confirm_mean']:.4f} ± {r['confirm_std']:.4f})" for r in close) + ".")
        if far:
            lines.append("Behind it by more than the spread between seeds: "
                         + ", ".join(f"{r['arm']} ({r['confirm_mean']:.4f} ± {r['confirm_std']:.4f})" for r in far) + ".")
        return " ".join(lines)
    scored.sort(key=lambda r: -r["best"])
    top = scored[0]
    text = f"Best arm: **{top['arm']}**, {metric} {top['best']:.4f} (trial {top['best_trial']})."
    if len(scored) > 1:
        text += (" Without a confirmation stage (`confirm:` in the space) there is one run per configuration, so "
                 "the gaps to " + ", ".join(f"{r['arm']} ({r['best']:.4f})" for r in scored[1:]) +
                 " cannot be judged against the spread between seeds.")
    return text


def latency_note(rows: list[dict]) -> str:
    """How the latency column was measured, or why it is empty."""
    timed = [r for r in rows if math.isfinite(r.get("latency_ms", math.nan))]
    if not timed:
        return ("Latency: not measured (latency.json is written when search.run ends normally; a run that "
                "stopped early has none, so the latency figure is empty).")
    devices = sorted({str(r.get("latency_device")) for r in timed})
    ns = sorted({r.get("latency_n") for r in timed})
    return (f"Latency: each arm's best model (its best epoch's checkpoint) timed after the search, one model at a "
            f"time on {', '.join(devices)}, batch size 1, median of {', '.join(map(str, ns))} passes after warm-up.")


# ----------------------------------------------------------------------------------------------
# Figures


def _colours(arms: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    return {a: cmap(i % cmap.N) for i, a in enumerate(arms)}


def fig_curves(records, metric_key, label, colours, best_ids, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in records:
        if r.stage != "search" or not r.history:
            continue
        x = [h["epoch"] for h in r.history]
        y = [h.get(metric_key, math.nan) for h in r.history]
        bold = r.trial_id in best_ids
        ax.plot(x, y, color=colours[r.arm], lw=2.4 if bold else 0.9, alpha=1.0 if bold else 0.3,
                label=f"{r.arm} (best trial)" if bold else None)
        if r.status == STATUS_STOPPED:
            ax.plot(x[-1], y[-1], marker="x", color=colours[r.arm], alpha=0.6, ms=6)
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.set_title(f"{label} per epoch (bold: best trial of each arm; x: stopped by ASHA)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    info = json.loads((run_dir / "run.json").read_text())
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
    summary_line = conclusion(rows, metric)
    md += ["## Conclusion", "", summary_line, ""]
    md += ["## Arms compared", "",
           f"| arm | best {metric} | mean ± sd over seeds | map | map_small | epochs to 95% | s/epoch | train img/s | "
           "inference ms | params total (M) | trainable (M) | peak mem (MB) | trials run / stopped / failed |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r.get("best", -1)):
        conf = f"{r['confirm_mean']:.4f} ± {r['confirm_std']:.4f} (n={r['confirm_n']})" if "confirm_mean" in r else "-"
        md.append(f"| {r['arm']} | {_fmt(r.get('best'))} | {conf} | {_fmt(r.get('map'))} | {_fmt(r.get('map_small'))} | "
                  f"{_fmt(r.get('epochs_to_95'), 'd')} | {_fmt(r.get('epoch_time_s'), '.1f')} | "
                  f"{_fmt(r.get('train_img_s'), '.1f')} | {_fmt(r.get('latency_ms'), '.1f')} | "
                  f"{_fmt(r.get('params_total', math.nan) / 1e6, '.2f')} | "
                  f"{_fmt(r.get('params_trainable', math.nan) / 1e6, '.2f')} | {_fmt(r.get('peak_mem_mb'), '.0f')} | "
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
    if not (run_dir / "run.json").exists():
        print(f"error: {run_dir}: not a run folder (no run.json)", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else run_dir / "report"
    res = write_report(run_dir, out)
    print(f"report ({res['status']}): {out / 'report.md'}")
    for r in sorted(res["rows"], key=lambda r: -r.get("best", -1)):
        print(f"  {r['arm']:<24} best {_fmt(r.get('best'))}  trials {r['trials']} "
              f"(stopped {r['stopped']}, failed {r['failed']})")
    print(res["conclusion"].replace("**", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
