"""The report's figures (matplotlib, Agg): learning curves per arm, the study's curves, cost against
quality with its Pareto front, and the parameter slices. search/report.py decides what to draw and
names the files; the numbers come from search/stats.py.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from search.results import STATUS_FINISHED, STATUS_STOPPED, TrialRecord  # noqa: E402
from search.stats import pareto_front  # noqa: E402


CURVES = (("loss", "training loss"), ("iou_per_pred", "IoU per prediction"), ("iou_per_gt", "IoU per ground truth"),
          ("map50", "mAP50"))


def arm_colours(arms: list[str]) -> dict[str, tuple]:
    """A colour per arm, in the arms' order."""
    cmap = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    return {a: cmap(i % cmap.N) for i, a in enumerate(arms)}


FACET_OVER = 10  # more arms than this: one panel per backbone (38 arms in one legend cannot be read)


def fig_curves(records, metric_key, label, colours, best_ids, path: Path) -> bool:
    """Every search trial's curve, thin, its arm's best bold; with more than FACET_OVER arms, one panel
    per backbone, each with its own colours and legend. False (nothing drawn) when no search trial
    has reported an epoch (say, every one failed in its first)."""
    order = {a: i for i, a in enumerate(colours)}  # the space's order of arms
    shown = sorted((r for r in records if r.stage == "search" and r.history), key=lambda r: order.get(r.arm, len(order)))
    if not shown:
        return False
    arms = list(dict.fromkeys(r.arm for r in shown))
    groups: dict[str, list[str]] = {}
    backbone = {r.arm: str(r.config.get("backbone", "?")) for r in shown} if len(arms) > FACET_OVER else {}
    for arm in arms:
        groups.setdefault(backbone.get(arm, ""), []).append(arm)
    cols = min(2, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.2 * rows), squeeze=False, sharey=True)
    for ax, (group, members) in zip(axes.flat, groups.items()):
        own = colours if not group else arm_colours(members)
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
    return True


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
