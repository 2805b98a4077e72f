"""The numbers of the report, without matplotlib: rank correlations, intervals, the Pareto front,
and the tables (search/report.py writes them, search/figures.py draws them).

Every function here takes records (search.results) or plain lists and returns numbers or rows of
numbers, so each can be tested against values worked out by hand.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

from search.results import STATUS_FAILED, STATUS_FINISHED, STATUS_RUNNING, STATUS_STOPPED, TrialRecord, confirmed, ranked


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


def ranks(values: dict[str, float]) -> dict[str, int]:
    """1 = highest; ties share the better rank."""
    return {k: 1 + sum(v2 > v for v2 in values.values()) for k, v in values.items()}


def separates(lo: float, hi: float) -> bool:
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
    rb = ranks({r["arm"]: r["base_mean"] for r in rows})
    rt = ranks({r["arm"]: r["tuned_mean"] for r in rows})
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
                        "tuned_separate": separates(lo_t, hi_t), "base_separate": separates(lo_b, hi_b)})
    return out


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
