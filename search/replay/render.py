"""What a replay writes: the table of strategies (regret, epochs, rankings kept), the recommendation,
the regret figure and replay.md / replay.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from search.results import STATUS_FAILED

from search.replay.clock import SimulatedRun, ranking_kept, recorded_order_decisions, within_tol_epochs
from search.replay.recording import Recording


def summarise(rec: Recording, results: dict[str, list[SimulatedRun]], tol: float) -> list[dict]:
    arms, grid = rec.arms(), rec.grid_epochs()
    rows = []
    for name, outs in results.items():
        unrecorded = [o for o in outs if o.unrecorded]
        reach = [within_tol_epochs(o, arms, tol) for o in outs]
        fracs = sorted(math.inf if r is None else r / grid for r in reach)
        final = [float(np.mean(list(o.final_regret.values()))) for o in outs]
        worst = [max(o.final_regret.values()) for o in outs]
        dists = [d for o in outs for d in o.distances]
        rows.append({
            "strategy": name, "repeats": len(outs), "scorable": not unrecorded,
            "unrecorded": f"{len(unrecorded)} of {len(outs)} repeats (first: {unrecorded[0].unrecorded})" if unrecorded else "",
            "reached": sum(r is not None for r in reach),
            "median_fraction_to_tol": float(np.median(fracs)),
            "p_ranking": float(np.mean([ranking_kept(rec, o) for o in outs])),
            "median_final_regret": float(np.median(final)), "median_worst_arm_regret": float(np.median(worst)),
            "median_trials": float(np.median([o.trials for o in outs])),
            "median_epochs": float(np.median([o.epochs for o in outs])),
            "median_match_distance": float(np.median(dists)) if dists else math.nan,
        })
    return rows


def _rank_key(r: dict) -> tuple:
    """How strategies compare: fewer epochs to the tolerance, then lower final regret, then the
    ranking kept more often."""
    return r["median_fraction_to_tol"], r["median_final_regret"], -r["p_ranking"]


def figure_strategies(rows: list[dict]) -> list[str]:
    """The strategies the figure shows: the best per-arm ASHA + TPE setting and every scorable other
    strategy (a dozen overlapping bands would hide each other)."""
    ok = [r for r in rows if r["scorable"]]
    asha = [r for r in ok if r["strategy"].startswith("asha-tpe")]
    return ([min(asha, key=_rank_key)["strategy"]] if asha else []) + \
        [r["strategy"] for r in ok if not r["strategy"].startswith("asha-tpe")]


def recommend(rows: list[dict], tol: float, goal: float = 0.25) -> list[str]:
    """The closing lines of replay.md: the ASHA settings to ship for this data, and why."""
    asha = [r for r in rows if r["scorable"] and r["strategy"].startswith("asha-tpe")]
    if not asha:
        return ["No per-arm ASHA + TPE strategy could be scored on this recording: no recommendation."]
    key = _rank_key
    best = min(asha, key=key)
    _, g, rf = best["strategy"].split(":")
    frac = best["median_fraction_to_tol"]
    lines = [f"Recommended for this data: `grace_period: {g}`, `reduction_factor: {rf}` ({best['strategy']}): "
             + (f"every arm's pick within {tol:g} of its recorded best after {frac:.0%} of the grid's epochs "
                f"(median over {best['repeats']} repeats)" if math.isfinite(frac) else
                f"the median repeat did not come within {tol:g} of every arm's best inside the budget")
             + f", the arms ranked as recorded in {best['p_ranking']:.0%} of repeats, final regret "
               f"{best['median_final_regret']:.4f} (median of the mean over arms)."]
    lines.append(f"Goal (per-arm ASHA + TPE within {tol:g} of every arm's best with at most {goal:.0%} of the "
                 f"grid's epochs): {'met' if frac <= goal else 'not met'} by the best setting.")
    others = [r for r in rows if r["scorable"] and not r["strategy"].startswith("asha-tpe")]
    if others:
        alt = min(others, key=key)
        lines.append(f"Best other strategy: {alt['strategy']}, {_frac(alt['median_fraction_to_tol'])} of the grid's "
                     f"epochs, final regret {alt['median_final_regret']:.4f}.")
    return lines


def _frac(x: float) -> str:
    return f"{x:.0%}" if math.isfinite(x) else "never (in the median)"


def fig_regret(rec: Recording, results: dict[str, list[SimulatedRun]], path: Path) -> None:
    """Best-so-far regret against GPU-hours: per arm (up to 8) and the mean over arms; median line,
    10-90% band over repeats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = rec.arms()
    panels = (arms if len(arms) <= 8 else []) + ["mean over arms"]
    budget = max((o.spent_s for outs in results.values() for o in outs), default=1.0)
    xs = np.linspace(0, budget, 200)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for k, (name, outs) in enumerate(results.items()):
        curves = {p: [] for p in panels}
        for o in outs:
            per_arm = {arm: _step(o, arm, rec.best(arm), xs) for arm in arms}
            for p in panels:
                curves[p].append(np.mean(list(per_arm.values()), axis=0) if p == "mean over arms" else per_arm[p])
        for ax, p in zip(axes[0], panels):
            ys = np.array(curves[p])
            colour = colours[k % len(colours)]
            ax.plot(xs / 3600, np.median(ys, axis=0), label=name, lw=1.3, color=colour)
            ax.fill_between(xs / 3600, np.percentile(ys, 10, axis=0), np.percentile(ys, 90, axis=0),
                            color=colour, alpha=0.12, lw=0)
    for ax, p in zip(axes[0], panels):
        ax.set_title(p, fontsize=9)
        ax.set_xlabel("simulated GPU-hours")
        ax.set_ylabel(f"regret ({rec.space.metric})")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _step(o: SimulatedRun, arm: str, best: float, xs: np.ndarray) -> np.ndarray:
    """The arm's regret over `xs` (GPU-seconds): the arm's best before anything is seen."""
    ys = np.full(len(xs), best)
    for spent, _, a, r in o.trace:
        if a == arm:
            ys[xs >= spent] = r
    return ys


def write_report(rec: Recording, results: dict[str, list[SimulatedRun]], out: Path, tol: float, args_text: str,
                 elapsed_s: float, decisions: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(rec, results, tol)
    shown = figure_strategies(rows)
    fig_regret(rec, {name: results[name] for name in shown}, out / "regret.png")
    arms = rec.arms()
    short = rec.short()
    lines = [f"# Replay of {rec.source}", "", f"`{args_text}`: {elapsed_s:.1f} s.", "",
             f"Recording: {len(rec.curves)} trials over {len(arms)} arms, up to {rec.space.max_epochs} epochs; "
             f"grid = every recorded configuration trained fully: {rec.grid_epochs()} epochs, "
             f"{rec.grid_cost() / 3600:.3f} GPU-hours. Each arm's recorded best (`{rec.space.metric}`): "
             + ", ".join(f"{a} {rec.best(a):.4f}" for a in arms) + "."]
    if short:
        lines += ["", f"{len(short)} trials did not run the full budget (stopped early, or still running when "
                  f"the recording was read), so epochs after theirs were never recorded: "
                  f"{', '.join(f'{c.trial_id} ({len(c.values)}, {c.status})' for c in short[:20])}"
                  f"{' ...' if len(short) > 20 else ''}. A strategy that asks for one of those epochs cannot be "
                  f"scored and is marked so below; only decisions that need no missing epoch are counted."]
    if decisions:
        lines += ["", decisions]
    lines += ["", "Proposals of TPE and random search are answered with the nearest recorded configuration of "
              "the arm (parameters scaled to [0, 1], log-scaled where the space says `log`); the median "
              "distance of those matches is in the table (0: a proposal is always a recorded configuration; "
              "1: a whole range away).", "",
              f"| strategy | scorable | epochs to within {tol:g} of every arm's best (median, of the grid's) | "
              f"reached (repeats) | P(ranking as recorded) | final regret (median, mean over arms) | "
              f"worst arm (median) | trials (median) | match distance (median) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["scorable"]:  # its numbers would mix repeats cut short with complete ones
            lines.append(f"| {r['strategy']} | no: needs epochs never recorded, {r['unrecorded']} |" + " - |" * 7)
            continue
        lines.append(f"| {r['strategy']} | yes | "
                     f"{_frac(r['median_fraction_to_tol'])} | {r['reached']}/{r['repeats']} | {r['p_ranking']:.2f} | "
                     f"{r['median_final_regret']:.4f} | {r['median_worst_arm_regret']:.4f} | "
                     f"{r['median_trials']:.0f} | {r['median_match_distance']:.3f} |")
    lines += ["", "![regret](regret.png)", "", f"The figure shows {', '.join(shown) or 'nothing (no strategy is scorable)'} "
              "(of the per-arm ASHA + TPE settings, the best one). Regret: an arm's recorded best minus the best value observed for the "
              "configuration the strategy would pick there so far (results.ranked's "
              "rule: a full-budget trial first). Lines: median over repeats; bands: 10-90%.", "", "## Recommendation", ""]
    lines += recommend(rows, tol)
    (out / "replay.json").write_text(json.dumps({"rows": rows, "tol": tol}, indent=1, default=str) + "\n")
    md = out / "replay.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def decisions_text(rec: Recording) -> str:
    """For a recording made with ASHA: whether a replay in the recorded order stops the same trials
    at the same epochs."""
    if rec.space.stopping != "asha" or not rec.short():
        return ""
    replayed = recorded_order_decisions(rec)
    counted = [c for c in rec.curves if c.status != STATUS_FAILED]
    same = [c for c in counted if replayed.get(c.trial_id) == len(c.values)]
    return (f"The recorded ASHA decisions, replayed in the recorded order with the project's scheduler: "
            f"{len(same)} of {len(counted)} trials stopped at the same epoch"
            + ("." if len(same) == len(counted) else
               f"; differ: {', '.join(c.trial_id for c in counted if c not in same)}."))

