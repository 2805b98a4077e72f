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


def distinct(values: list[float]) -> int:
    """How many different values (to 1e-9: 0.74 - 0.54 and 0.70 - 0.50 are one value)."""
    return len({round(v, 9) for v in values})


def welch_interval(a: list[float], b: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): Welch's t interval for the difference of two means (unequal
    variances, Welch-Satterthwaite degrees of freedom). low/high are nan when either side has fewer
    than 2 distinct values: one run, or runs that all scored the same, say nothing about the spread
    between seeds (zero spread is not certainty)."""
    from scipy import stats

    d = statistics.mean(a) - statistics.mean(b) if a and b else math.nan
    if distinct(a) < 2 or distinct(b) < 2:
        return d, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return d, d - half, d + half


def paired_interval(a: dict, b: dict, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean of a[s] - b[s] over the seeds s both have, low, high): the t interval of the per-seed
    differences (n - 1 degrees of freedom), for runs paired by seed. low/high are nan with fewer
    than 2 distinct differences."""
    from scipy import stats

    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    d = statistics.mean(diffs) if diffs else math.nan
    if distinct(diffs) < 2:
        return d, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return d, d - half, d + half


def pairs_by_seed(a: dict, b: dict) -> bool:
    """Whether two sets of runs pair by seed: the same seeds, at least 2 (the confirmation and the
    baseline stages train with the same seeds so that they do)."""
    return len(a) >= 2 and set(a) == set(b)


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


def _by_seed(runs: list[TrialRecord]) -> dict[int, float]:
    """{seed: score} of the finished runs with a finite score (`TrialRecord.score`)."""
    return {int(r.config["seed"]): r.score() for r in sorted(runs, key=lambda r: int(r.config["seed"]))
            if r.status == STATUS_FINISHED and math.isfinite(r.score())}


def study_rows(records: list[TrialRecord]) -> list[dict]:
    """Per arm: the scores (`TrialRecord.score`: test metric at the validation-chosen epoch, or the
    best validation metric without test images) of its baseline runs and of its tuned configuration's
    confirmation runs (`results.confirmed`: the best by validation mean), by seed, their means,
    standard deviations and counts, the gain (tuned - baseline) with its interval (`gain_method`:
    "paired", the t interval of the per-seed differences, when the two pair by seed; else "Welch"),
    and both ranks. Only arms with both a baseline and a confirmed configuration are compared."""
    rows = []
    for arm in dict.fromkeys(r.arm for r in records):
        base_by = _by_seed([r for r in records if r.stage == "baseline" and r.arm == arm])
        conf = confirmed(records, arm)
        tuned_by = _by_seed(conf[0].runs) if conf else {}
        base, tuned = list(base_by.values()), list(tuned_by.values())
        if not base or not tuned:
            continue
        paired = pairs_by_seed(tuned_by, base_by)
        gain, lo, hi = paired_interval(tuned_by, base_by) if paired else welch_interval(tuned, base)
        rows.append({"arm": arm, "base": base, "tuned": tuned, "base_by_seed": base_by, "tuned_by_seed": tuned_by,
                     "gain_method": "paired" if paired else "Welch", "trial": conf[0].source.trial_id,
                     "base_mean": statistics.mean(base), "base_sd": statistics.stdev(base) if len(base) > 1 else math.nan,
                     "tuned_mean": statistics.mean(tuned),
                     "tuned_sd": statistics.stdev(tuned) if len(tuned) > 1 else math.nan,
                     "gain": gain, "gain_lo": lo, "gain_hi": hi})
    rb = ranks({r["arm"]: r["base_mean"] for r in rows})
    rt = ranks({r["arm"]: r["tuned_mean"] for r in rows})
    for r in rows:
        r.update(rank_base=rb[r["arm"]], rank_tuned=rt[r["arm"]])
    return rows


ALPHA = 1 - LEVEL


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test of mean(a) = mean(b); nan with fewer than 2 distinct
    values on a side (no test)."""
    from scipy import stats

    if distinct(a) < 2 or distinct(b) < 2:
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down correction: which of the tests are rejected at family-wise level `alpha`
    (a nan p-value is a test that could not be made: never rejected, not counted in the family)."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    rejected = [False] * len(pvalues)
    for k, (p, i) in enumerate(finite):
        if p > alpha / (len(finite) - k):
            break
        rejected[i] = True
    return rejected


def pair_tests(rows: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Every pair of arms, tested under both settings: the difference of their means and the Welch
    interval and p-value of it under shared hyperparameters (`base_*`) and after tuning (`tuned_*`),
    `a` being the arm ahead after tuning. `swapped`: the means are in the other order under shared
    hyperparameters. `reversed`: the difference is significant in opposite directions under the two
    settings, each test Holm-corrected over all the 2 x pairs tests (`*_significant`)."""
    out = []
    for i, x in enumerate(rows):
        for y in rows[i + 1:]:
            a, b = (x, y) if x["tuned_mean"] >= y["tuned_mean"] else (y, x)
            t = dict(zip(("tuned_diff", "tuned_lo", "tuned_hi"), welch_interval(a["tuned"], b["tuned"])))
            t.update(zip(("base_diff", "base_lo", "base_hi"), welch_interval(a["base"], b["base"])))
            out.append({"a": a["arm"], "b": b["arm"], **t, "tuned_p": welch_p(a["tuned"], b["tuned"]),
                        "base_p": welch_p(a["base"], b["base"]),
                        "swapped": (a["base_mean"] - b["base_mean"]) * (a["tuned_mean"] - b["tuned_mean"]) < 0})
    rejected = holm([p for o in out for p in (o["tuned_p"], o["base_p"])], alpha)
    for k, o in enumerate(out):
        o["tuned_significant"], o["base_significant"] = rejected[2 * k], rejected[2 * k + 1]
        o["reversed"] = o["tuned_significant"] and o["base_significant"] and o["tuned_diff"] * o["base_diff"] < 0
    return out


def tau_interval(rows: list[dict], n_boot: int = 2000, seed: int = 0, level: float = LEVEL
                 ) -> tuple[float, float, float]:
    """Kendall's tau between the arms' shared and tuned means, with a percentile bootstrap interval
    over seeds: each replicate draws seeds with replacement (the same draw for every arm and both
    settings when they all share their seeds, as the study's stages do; else each arm's runs are
    drawn on their own) and ranks the arms by the means of the drawn runs. nan bounds with fewer
    than 2 arms, or when no replicate gives a tau (every draw ties)."""
    tau = kendall_tau([r["base_mean"] for r in rows], [r["tuned_mean"] for r in rows])
    if len(rows) < 2:
        return tau, math.nan, math.nan
    rng = np.random.default_rng(seed)
    common = set.intersection(*(set(r["base_by_seed"]) & set(r["tuned_by_seed"]) for r in rows))
    shared = sorted(common) if len(common) >= 2 and all(
        set(r["base_by_seed"]) == set(r["tuned_by_seed"]) == common for r in rows) else None
    taus = []
    for _ in range(n_boot):
        if shared is not None:
            draw = rng.choice(shared, len(shared))
            base = [np.mean([r["base_by_seed"][s] for s in draw]) for r in rows]
            tuned = [np.mean([r["tuned_by_seed"][s] for s in draw]) for r in rows]
        else:
            base = [np.mean(rng.choice(r["base"], len(r["base"]))) for r in rows]
            tuned = [np.mean(rng.choice(r["tuned"], len(r["tuned"]))) for r in rows]
        t = kendall_tau(base, tuned)
        if math.isfinite(t):
            taus.append(t)
    if not taus:
        return tau, math.nan, math.nan
    lo, hi = np.quantile(taus, [(1 - level) / 2, (1 + level) / 2])
    return tau, float(lo), float(hi)


def arm_rows(records: list[TrialRecord], metric: str, latencies: dict | None = None) -> list[dict]:
    """The comparison table: one row per arm, from its best search trial (`results.ranked`, the rule
    confirmation and export use too) and its confirmation seeds. Latency comes from `latencies`
    (latency.json: measured after the search, one model at a time), never from inside a trial."""
    latencies = latencies or {}
    rows = []
    for arm in dict.fromkeys(r.arm for r in records):
        search = [r for r in records if r.arm == arm and r.stage == "search"]
        ok = ranked(records, arm)
        row = {"arm": arm, "trials": len(search), "usable": len(ok),
               "infeasible": sum(r.status == STATUS_FAILED and r.infeasible for r in search),
               "finished": sum(r.status == STATUS_FINISHED for r in search),
               "stopped": sum(r.status == STATUS_STOPPED for r in search),
               "failed": sum(r.status == STATUS_FAILED for r in search),
               "running": sum(r.status == STATUS_RUNNING for r in search)}
        if ok:
            best = ok[0]
            lat = latencies.get(arm, {})
            h = best.at_best() or best.history[-1]
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
