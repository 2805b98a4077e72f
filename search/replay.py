"""Replay search strategies on recorded learning curves: seconds of arithmetic instead of GPU-hours.

    python -m search.replay RUN_DIR --out DIR [--strategies S ...] [--repeats N] [--workers W]
                                      [--budget F] [--tol T] [--jobs J]

RUN_DIR is a run folder (`search.run`; best recorded with `budget: {stopping: none}`, every trial
its full budget) or a folder holding a compact recording, `curves.json` beside its `space.yaml`
(`Recording.save`; bench/curves/ is one). No Ray cluster and no training: a simulated clock
advances by each epoch's recorded cost (`epoch_time_s + eval_time_s`) and W simulated workers take
trials as real slots do. The decisions come from the project's own parts, not from copies of them:
per-arm ASHA is `search.scheduler.PerArmASHA` (Ray's AsyncHyperBandScheduler per study), proposals
come from `search.searcher.ArmSearcher` with its Optuna studies in memory. A proposal is answered
with the recorded configuration nearest to it (`Matcher`: parameters scaled to [0, 1], on a log
scale where the space says `log`; categorical values must match), as Syne Tune does for tabulated
benchmarks; the median distance of those matches is reported, so a sparse recording shows.

Strategies (`--strategies`, names as below; G = grace period, R = reduction factor):
  asha-tpe:G:R      per-arm ASHA + TPE (what search.run does)
  asha-random:G:R   per-arm ASHA + random proposals
  joint-asha-tpe:G:R  one ASHA and one TPE study over every arm (`strategy: joint`)
  tpe-full          TPE, no early stopping
  grid              every recorded configuration, full budget, in random order
  one-epoch-topK    every recorded configuration for one epoch, then the K best of each arm to
                    the full budget (Egele et al. 2023, arXiv 2307.15422)

Every strategy gets the same GPU-time (`--budget`, a fraction of the grid's: every recorded
configuration of every arm trained fully). A strategy's pick in an arm follows `results.ranked`:
the best trial that ran the full budget, else the best one stopped early. Regret = the arm's
recorded best (best epoch of any recorded configuration) minus the best value the strategy
observed for its pick.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import heapq
import json
import math
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.results import STATUS_FAILED, collect
from search.space import Space, SpaceError, load_space

CURVES = "curves.json"
FORMAT = 1
# The strategies a plain `search.replay RUN_DIR` scores (ASHA settings are added from the space).
BASE_STRATEGIES = ("asha-random:1:3", "joint-asha-tpe:1:3", "tpe-full", "grid", "one-epoch-top3")


class ReplayError(ValueError):
    """A recording replay cannot use; the message names the file and the reason."""


# ------------------------------------------------------------------------------------------------
# Recordings


@dataclass(frozen=True)
class Curve:
    """One recorded search trial: its configuration and, per epoch (1..n), the metric, the cost of
    the epoch in seconds (training plus validation) and when it was reported (`reported_at`)."""

    trial_id: str
    arm: str
    params: dict
    status: str
    values: tuple
    costs: tuple
    reported_at: tuple = ()

    def best(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        return max(finite) if finite else math.nan


@dataclass
class Recording:
    space: Space
    curves: list[Curve]
    source: str

    def __post_init__(self):
        self._by_arm: dict[str, list[Curve]] = {}
        for c in self.curves:
            self._by_arm.setdefault(c.arm, []).append(c)
        self._best = {arm: max((c.best() for c in cs if math.isfinite(c.best())), default=math.nan)
                      for arm, cs in self._by_arm.items()}

    def arms(self) -> list[str]:
        """The space's arms that have recorded trials, in the space's order."""
        return [a.name for a in self.space.arms if a.name in self._by_arm]

    def of(self, arm: str) -> list[Curve]:
        return self._by_arm.get(arm, [])

    def best(self, arm: str) -> float:
        """The arm's recorded best: the best epoch of any of its recorded configurations."""
        return self._best.get(arm, math.nan)

    def short(self) -> list[Curve]:
        """Trials that did not run the full budget (ASHA stopped them): their later epochs were never
        recorded. Failed trials do not count: a replay ends them where they failed."""
        return [c for c in self.curves if len(c.values) < self.space.max_epochs and c.status != STATUS_FAILED]

    def grid_epochs(self) -> int:
        return len(self.curves) * self.space.max_epochs

    def grid_cost(self) -> float:
        """GPU-seconds of the grid: every recorded configuration trained fully (an epoch it lacks is
        costed at its trial's mean epoch)."""
        return sum(sum(c.costs) + (self.space.max_epochs - len(c.costs)) * (sum(c.costs) / max(1, len(c.costs)))
                   for c in self.curves)

    def save(self, folder: Path, command: str = "") -> Path:
        """Write `curves.json` (and the space it was recorded with, `space.yaml`) into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        space_text = Path(self.space.path).read_text()
        (folder / "space.yaml").write_text(space_text)
        doc = {"format": FORMAT, "metric": self.space.metric, "space_sha256": _sha(space_text), "command": command,
               "source": self.source,
               "trials": [{"trial_id": c.trial_id, "arm": c.arm, "params": c.params, "status": c.status,
                           "values": [_round(v) for v in c.values], "costs": [round(t, 3) for t in c.costs],
                           "reported_at": [round(t, 3) for t in c.reported_at]} for c in self.curves]}
        out = folder / CURVES
        out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        return out


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _round(v: float):
    return round(v, 6) if math.isfinite(v) else None


def load_recording(path: str | Path) -> Recording:
    """A run folder (it holds run.json) or a compact recording (curves.json + space.yaml)."""
    path = Path(path)
    if path.is_dir() and (path / CURVES).exists():
        return _from_file(path / CURVES)
    if path.is_file() and path.name == CURVES:
        return _from_file(path)
    if path.is_dir() and (path / "run.json").exists():
        return _from_run(path)
    raise ReplayError(f"{path}: neither a run folder (no run.json) nor a recording (no {CURVES})")


def synthetic_recording(space_file: str | Path, folder: str | Path, per_arm: int, seed: int = 0,
                        command: str = "synthetic") -> Path:
    """Write a synthetic compact recording of `space_file`'s space into `folder` (its space.yaml and
    curves.json) and return the folder: `per_arm` random configurations per arm (conditional
    parameters included), saturating curves whose height depends on lr (best near 0.004) and on the
    arm, and epochs of 20-40 s. For what does not depend on the numbers: the cost of a replay
    (bench/replay_speed.py) and of the search machinery (bench/scale.py). The space needs an `lr`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = Path(space_file).read_text()
    (folder / "space.yaml").write_text(text)
    space = load_space(folder / "space.yaml")
    rng = np.random.default_rng(seed)
    trials = []
    for a, arm in enumerate(space.arms):
        offset = rng.uniform(-0.1, 0.1)
        for i in range(per_arm):
            params: dict = {}
            for p in space.params:
                if not p.active(params):
                    continue
                if p.type == "categorical":
                    params[p.name] = p.choices[rng.integers(len(p.choices))]
                elif p.log:
                    params[p.name] = float(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
                else:
                    params[p.name] = float(rng.uniform(p.low, p.high))
            top = 0.55 + offset - 0.08 * abs(math.log10(params["lr"]) - math.log10(0.004)) + rng.normal(0, 0.02)
            rate = rng.uniform(0.03, 0.3)
            epochs = np.arange(1, space.max_epochs + 1)
            values = np.clip(top * (1 - np.exp(-rate * epochs)) + rng.normal(0, 0.005, len(epochs)), 0, 1)
            trials.append({"trial_id": f"a{a:02d}-{i:03d}", "arm": arm.name, "params": params, "status": "finished",
                           "values": [round(float(v), 5) for v in values],
                           "costs": [round(float(c), 2) for c in rng.uniform(20, 40, len(epochs))], "reported_at": []})
    doc = {"format": FORMAT, "metric": space.metric, "space_sha256": hashlib.sha256(text.encode()).hexdigest(),
           "command": command, "source": "synthetic", "trials": trials}
    (folder / CURVES).write_text(json.dumps(doc))
    return folder


def curve_of(trial_id: str, arm: str, params: dict, status: str, rows: list[dict], metric: str) -> Curve:
    """A trial's curve from its per-epoch results (epochs 1..n, in order): the metric, the epoch's
    cost as the replay's clock counts it (training plus validation) and when it was reported."""
    return Curve(trial_id=trial_id, arm=arm, params=params, status=status,
                 values=tuple(float(r.get(metric, math.nan)) for r in rows),
                 costs=tuple(float(r.get("epoch_time_s", 0.0)) + float(r.get("eval_time_s", 0.0)) for r in rows),
                 reported_at=tuple(float(r.get("reported_at", r.get("timestamp", 0.0))) for r in rows))


def _from_run(run_dir: Path) -> Recording:
    try:
        space = load_space(run_dir / "space.yaml")
    except SpaceError as e:
        raise ReplayError(f"{run_dir}: its space.yaml cannot be read: {e}") from None
    curves = []
    for rec in collect(run_dir, space.metric, space.max_epochs):
        if rec.stage != "search":
            continue  # confirmation and baseline runs are not proposals of the search
        by_epoch: dict[int, dict] = {}
        for row in rec.history:
            if "fail_reason" in row or row.get("epoch") is None:
                continue
            by_epoch.setdefault(int(row["epoch"]), row)  # a restored trial may report an epoch twice: first wins
        epochs = sorted(by_epoch)
        if epochs != list(range(1, len(epochs) + 1)):
            raise ReplayError(f"{rec.path}: epochs {epochs} are not 1..n; the trial's result.json is incomplete")
        curves.append(curve_of(rec.trial_id, rec.arm, dict(rec.params), rec.status, [by_epoch[e] for e in epochs],
                               space.metric))
    rec = Recording(space, curves, source=str(run_dir))
    _check(rec, run_dir)
    return rec


def _from_file(path: Path) -> Recording:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReplayError(f"{path}: not valid JSON: {e}") from None
    if doc.get("format") != FORMAT:
        raise ReplayError(f"{path}: format {doc.get('format')!r}, this replay reads format {FORMAT}")
    space_file = path.parent / "space.yaml"
    if not space_file.exists() or _sha(space_file.read_text()) != doc.get("space_sha256"):
        raise ReplayError(f"{path}: recorded with another version of {space_file} (its sha256 differs, or it is "
                          f"missing); replay needs the space the curves were recorded with")
    space = load_space(space_file)
    nan = math.nan
    curves = [Curve(trial_id=t["trial_id"], arm=t["arm"], params=t["params"], status=t["status"],
                    values=tuple(nan if v is None else float(v) for v in t["values"]),
                    costs=tuple(float(x) for x in t["costs"]), reported_at=tuple(t.get("reported_at", ())))
              for t in doc["trials"]]
    rec = Recording(space, curves, source=str(path))
    _check(rec, path)
    return rec


def _check(rec: Recording, where: Path) -> None:
    """Refuse a recording with no results, or whose trials do not belong to its space."""
    if not any(c.values for c in rec.curves):
        raise ReplayError(f"{where}: no trial reported an epoch; there is nothing to replay")
    arms = {a.name for a in rec.space.arms}
    names = {p.name for p in rec.space.params}
    for c in rec.curves:
        if c.arm not in arms:
            raise ReplayError(f"{where}: trial {c.trial_id}: arm {c.arm!r} is not one of its space's arms "
                              f"({sorted(arms)}): a run of another version of the space?")
        if not set(c.params) <= names:
            raise ReplayError(f"{where}: trial {c.trial_id}: parameters {sorted(set(c.params) - names)} are not "
                              f"searched by its space ({sorted(names)}): a run of another version of the space?")
        if len(c.values) > rec.space.max_epochs:
            raise ReplayError(f"{where}: trial {c.trial_id}: {len(c.values)} epochs, more than its space's "
                              f"max_epochs {rec.space.max_epochs}")


# ------------------------------------------------------------------------------------------------
# Matching proposals to recorded configurations


class Matcher:
    """The recorded configuration of an arm nearest to a proposal: numeric parameters scaled to
    [0, 1] by their range (log-scaled where the space says `log`), Euclidean distance; a categorical
    value that differs, or a parameter present on one side only (conditional), adds 1."""

    def __init__(self, space: Space, curves: list[Curve]):
        self.curves = curves
        self.numeric = [p for p in space.params if p.type != "categorical"]
        self.categorical = [p for p in space.params if p.type == "categorical"]
        self.points = np.array([self._point(c.params) for c in curves]).reshape(len(curves), len(self.numeric))
        self.cats = [tuple(_key(c.params.get(p.name)) for p in self.categorical) for c in curves]

    def _point(self, params: dict) -> list[float]:
        out = []
        for p in self.numeric:
            v = params.get(p.name)
            if v is None:
                out.append(math.nan)
            elif p.log:
                out.append((math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low)))
            else:
                out.append((v - p.low) / ((p.high - p.low) or 1.0))
        return out

    def nearest(self, params: dict) -> tuple[Curve, float]:
        x = np.array(self._point(params))
        diff = self.points - x
        missing = np.isnan(diff)
        d2 = np.where(missing, 0.0, diff ** 2).sum(axis=1) + (np.isnan(self.points) != np.isnan(x)).sum(axis=1)
        cats = tuple(_key(params.get(p.name)) for p in self.categorical)
        d2 = d2 + np.array([sum(a != b for a, b in zip(cats, c)) for c in self.cats])
        i = int(np.argmin(d2))
        return self.curves[i], float(math.sqrt(d2[i]))


def _key(v):
    return json.dumps(v, sort_keys=True)


# ------------------------------------------------------------------------------------------------
# Strategies: each decides which trial a free worker runs next and whether a trial goes on


class _Trial:
    """What the scheduler and the searcher read of a trial (Ray's Trial has these two)."""

    def __init__(self, trial_id: str, config: dict, curve: Curve, epoch: int = 0):
        self.trial_id, self.config, self.curve, self.epoch = trial_id, config, curve, epoch


class SearchStrategy:
    """The project's searcher and scheduler, as search.run builds them, on simulated trials."""

    def __init__(self, rec: Recording, name: str, seed: int):
        from ray.tune.schedulers import FIFOScheduler

        from search.scheduler import PerArmASHA
        from search.searcher import ArmSearcher

        kind, grace, rf = _parse_strategy(name, rec.space)
        stopping = "none" if kind == "tpe-full" else "asha"
        # Only the arms recorded can be searched; the budget, not a trial count, ends a replay.
        recorded = set(rec.arms())
        space = dataclasses.replace(rec.space, stopping=stopping, sampler="random" if kind == "asha-random" else "tpe",
                                    strategy="joint" if kind == "joint-asha-tpe" else "per-architecture",
                                    grace_period=grace, reduction_factor=rf, seed=seed,
                                    arms=tuple(a for a in rec.space.arms if a.name in recorded))
        self.space, self.metric, self.max_epochs = space, space.metric, space.max_epochs
        self.searcher = ArmSearcher(space, journal=None)
        self.searcher.trials_per_arm = None  # the GPU-time budget, not a trial count, ends a replay
        self.scheduler = PerArmASHA(space) if stopping == "asha" else FIFOScheduler()
        self.matchers = {arm: Matcher(space, rec.of(arm)) for arm in rec.arms()}
        self.distances: list[float] = []
        self.n = 0

    def next_trial(self) -> _Trial | None:
        trial_id = f"r{self.n:06d}"
        self.n += 1
        config = self.searcher.suggest(trial_id)
        curve, dist = self.matchers[config["arm"]].nearest(config["params"])
        self.distances.append(dist)
        trial = _Trial(trial_id, config, curve)
        self.scheduler.on_trial_add(None, trial)
        return trial

    def on_epoch(self, trial: _Trial, value: float) -> bool:
        from ray.tune.schedulers import TrialScheduler

        result = {"epoch": trial.epoch, self.metric: value, "trial_id": trial.trial_id}
        if not math.isfinite(value):  # the recorded trial failed here: so does the replayed one
            result["fail_reason"] = "failed in the recording"
            self.scheduler.on_trial_error(None, trial)
            self.searcher.on_trial_complete(trial.trial_id, result)
            return False
        decision = self.scheduler.on_trial_result(None, trial, result)
        if decision == TrialScheduler.STOP or trial.epoch >= self.max_epochs:
            self.scheduler.on_trial_complete(None, trial, result)
            self.searcher.on_trial_complete(trial.trial_id, result)
            return False
        self.searcher.on_trial_result(trial.trial_id, result)
        return True


class GridStrategy:
    """Every recorded configuration, full budget, in an order shuffled per repeat."""

    def __init__(self, rec: Recording, seed: int, max_epochs: int):
        order = np.random.default_rng(seed).permutation(len(rec.curves))
        self.queue = [rec.curves[i] for i in order]
        self.max_epochs, self.distances, self.n = max_epochs, [], 0

    def next_trial(self) -> _Trial | None:
        if not self.queue:
            return None
        curve = self.queue.pop(0)
        self.n += 1
        return _Trial(curve.trial_id, {"arm": curve.arm}, curve)

    def on_epoch(self, trial: _Trial, value: float) -> bool:
        return math.isfinite(value) and trial.epoch < self.max_epochs


class OneEpochTopK:
    """Egele et al. (2023): every recorded configuration of an arm for one epoch, then the K with
    the best first epoch trained to the full budget (resumed: epoch 1 is not paid twice)."""

    def __init__(self, rec: Recording, seed: int, k: int, max_epochs: int):
        rng = np.random.default_rng(seed)
        per_arm = {arm: [rec.of(arm)[i] for i in rng.permutation(len(rec.of(arm)))] for arm in rec.arms()}
        # First epochs interleaved across arms, so that every arm's promotions come early.
        self.first = [c for group in _interleave(per_arm.values()) for c in group]
        self.waiting = {arm: len(cs) for arm, cs in per_arm.items()}
        self.scores: dict[str, list[tuple[float, int, Curve]]] = {arm: [] for arm in per_arm}
        self.promoted: list[Curve] = []
        self.k, self.max_epochs, self.distances, self.n = k, max_epochs, [], 0

    def next_trial(self) -> _Trial | None:
        if self.promoted:
            curve = self.promoted.pop(0)
            return _Trial(curve.trial_id + "+", {"arm": curve.arm}, curve, epoch=1)
        if self.first:
            curve = self.first.pop(0)
            self.n += 1
            return _Trial(curve.trial_id, {"arm": curve.arm}, curve)
        return None

    def on_epoch(self, trial: _Trial, value: float) -> bool:
        if trial.epoch > 1:
            return math.isfinite(value) and trial.epoch < self.max_epochs
        arm = trial.curve.arm
        if math.isfinite(value):
            self.scores[arm].append((-value, len(self.scores[arm]), trial.curve))
        self.waiting[arm] -= 1
        if self.waiting[arm] == 0 and self.max_epochs > 1:
            self.promoted += [c for _, _, c in sorted(self.scores[arm])[:self.k]]
        return False


def _interleave(groups: Iterable[list]) -> list[list]:
    groups = [list(g) for g in groups]
    return [[g[i] for g in groups if i < len(g)] for i in range(max((len(g) for g in groups), default=0))]


def _parse_strategy(name: str, space: Space) -> tuple[str, int, int]:
    """(kind, grace period, reduction factor) of a strategy name; ReplayError if it is not one."""
    kind, *rest = name.split(":")
    if kind in ("asha-tpe", "asha-random", "joint-asha-tpe"):
        try:
            grace, rf = (int(x) for x in rest) if rest else (space.grace_period, space.reduction_factor)
        except ValueError:
            raise ReplayError(f"strategy {name!r}: write {kind}:GRACE:FACTOR, two integers") from None
        if not 1 <= grace <= space.max_epochs or rf < 2:
            raise ReplayError(f"strategy {name!r}: needs 1 <= grace period <= max_epochs ({space.max_epochs}) "
                              f"and reduction factor >= 2")
        return kind, grace, rf
    if kind in ("tpe-full", "grid") and not rest:
        return kind, space.grace_period, space.reduction_factor
    if kind.startswith("one-epoch-top") and kind[13:].isdigit() and int(kind[13:]) >= 1 and not rest:
        return "one-epoch-top", int(kind[13:]), 0
    raise ReplayError(f"unknown strategy {name!r}; known: asha-tpe:G:R, asha-random:G:R, joint-asha-tpe:G:R, "
                      f"tpe-full, grid, one-epoch-topK")


def make_strategy(rec: Recording, name: str, seed: int):
    kind, a, _ = _parse_strategy(name, rec.space)
    if kind == "grid":
        return GridStrategy(rec, seed, rec.space.max_epochs)
    if kind == "one-epoch-top":
        return OneEpochTopK(rec, seed, a, rec.space.max_epochs)
    return SearchStrategy(rec, name, seed)


# ------------------------------------------------------------------------------------------------
# The simulated clock


@dataclass
class SimulatedRun:
    """One repeat of one strategy on the simulated clock (not results.Outcome, a trial's status)."""

    strategy: str
    seed: int
    trace: list = field(default_factory=list)   # (GPU-seconds spent, epochs spent, arm, regret of the arm's pick)
    final_regret: dict = field(default_factory=dict)
    final_best: dict = field(default_factory=dict)  # the pick's recorded best, per arm
    epochs: int = 0
    spent_s: float = 0.0
    trials: int = 0
    distances: list = field(default_factory=list)
    unrecorded: str = ""   # the first epoch the strategy asked for that the recording lacks


def simulate(rec: Recording, name: str, seed: int, workers: int, budget_s: float) -> SimulatedRun:
    """Run strategy `name` on a simulated clock until it has spent `budget_s` GPU-seconds or has
    nothing left to run. Workers take trials as Ray's slots do: a freed worker starts the next one."""
    strategy = make_strategy(rec, name, seed)
    arms = rec.arms()
    best = {arm: rec.best(arm) for arm in arms}
    picks = {arm: _Pick() for arm in arms}
    out = SimulatedRun(name, seed)
    out.final_regret = {arm: best[arm] for arm in arms}
    max_epochs, heap, seq, now, free = rec.space.max_epochs, [], 0, 0.0, workers

    def start(trial: _Trial) -> bool:
        nonlocal seq
        e = trial.epoch + 1
        if e > len(trial.curve.values):
            out.unrecorded = out.unrecorded or f"trial {trial.curve.trial_id} epoch {e}"
            return False
        heapq.heappush(heap, (now + trial.curve.costs[e - 1], seq, trial))
        seq += 1
        return True

    def fill() -> None:
        nonlocal free
        while free > 0 and out.spent_s < budget_s and not out.unrecorded:
            trial = strategy.next_trial()
            if trial is None:
                return
            if start(trial):
                free -= 1

    fill()
    while heap and not out.unrecorded:
        now, _, trial = heapq.heappop(heap)
        trial.epoch += 1
        value = trial.curve.values[trial.epoch - 1]
        out.spent_s += trial.curve.costs[trial.epoch - 1]
        out.epochs += 1
        go_on = strategy.on_epoch(trial, value)
        arm = trial.curve.arm
        finished = trial.epoch >= max_epochs
        if picks[arm].update(trial.curve, trial.epoch, finished):
            regret = best[arm] - picks[arm].value
            out.trace.append((out.spent_s, out.epochs, arm, regret))
            out.final_regret[arm], out.final_best[arm] = regret, picks[arm].value
        if out.spent_s >= budget_s:
            break
        if not (go_on and start(trial)):
            free += 1
        fill()
    out.trials, out.distances = strategy.n, list(strategy.distances)
    return out


class _Pick:
    """The configuration a search would pick in an arm so far (`results.ranked`'s rule: a trial that
    ran the full budget first, then the best value), and its value: the recorded best of the
    curves observed so far, best epoch of what was observed."""

    def __init__(self):
        self.finished, self.any, self.value = -math.inf, -math.inf, math.nan
        self.seen: dict[str, float] = {}

    def update(self, curve: Curve, epoch: int, finished: bool) -> bool:
        v = curve.values[epoch - 1]
        if math.isfinite(v):
            self.seen[curve.trial_id] = max(self.seen.get(curve.trial_id, -math.inf), v)
            self.any = max(self.any, self.seen[curve.trial_id])
            if finished:
                self.finished = max(self.finished, self.seen[curve.trial_id])
        value = self.finished if self.finished > -math.inf else self.any
        if value == -math.inf or value == self.value:
            return False
        self.value = value
        return True


# ------------------------------------------------------------------------------------------------
# A recorded run in its real order: the scheduler's decisions again


def recorded_order_decisions(rec: Recording) -> dict[str, int]:
    """Feed every trial's recorded results to a fresh PerArmASHA with the recording's own settings,
    in the order they were reported (`reported_at`); return {trial id: epoch at which the scheduler
    stopped it (or it ran out of budget)}. For a run recorded with ASHA, this is its decisions again."""
    from ray.tune.schedulers import TrialScheduler

    from search.scheduler import PerArmASHA

    space = rec.space
    scheduler = PerArmASHA(space)
    events = sorted(((t, c, e + 1) for c in rec.curves for e, t in enumerate(c.reported_at[:len(c.values)])),
                    key=lambda x: x[0])
    trials, stopped = {}, {}
    for _, curve, epoch in events:
        if curve.trial_id in stopped:
            continue
        if curve.trial_id not in trials:
            trials[curve.trial_id] = _Trial(curve.trial_id, {"study": _study(space, curve.arm)}, curve)
            scheduler.on_trial_add(None, trials[curve.trial_id])
        trial, value = trials[curve.trial_id], curve.values[epoch - 1]
        result = {"epoch": epoch, space.metric: value}
        ended = epoch == len(curve.values)  # the trainable returned after its last report
        if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP or ended:
            scheduler.on_trial_complete(None, trial, result)
            stopped[curve.trial_id] = epoch
    return stopped


def _study(space: Space, arm: str) -> str:
    return arm if space.strategy == "per-architecture" else "joint"


# ------------------------------------------------------------------------------------------------
# Many repeats, summarised


def _one(args) -> SimulatedRun:
    rec, name, seed, workers, budget_s = args
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return simulate(rec, name, seed, workers, budget_s)


def replay(rec: Recording, strategies: list[str], repeats: int, workers: int, budget: float,
           jobs: int = 1) -> dict[str, list[SimulatedRun]]:
    """{strategy: one SimulatedRun per repeat}; repeat r uses seed r."""
    for name in strategies:
        _parse_strategy(name, rec.space)  # refuse a bad name before anything runs
    budget_s = budget * rec.grid_cost()
    tasks = [(rec, name, seed, workers, budget_s) for name in strategies for seed in range(repeats)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            outcomes = list(pool.map(_one, tasks, chunksize=max(1, len(tasks) // (4 * jobs))))
    else:
        outcomes = [_one(t) for t in tasks]
    out: dict[str, list[SimulatedRun]] = {name: [] for name in strategies}
    for o in outcomes:
        out[o.strategy].append(o)
    return out


def within_tol_epochs(o: SimulatedRun, arms: list[str], tol: float) -> int | None:
    """Epochs spent when every arm's pick first came within `tol` of the arm's recorded best
    (None: never, within the budget)."""
    regret = {arm: math.inf for arm in arms}
    for _, epochs, arm, r in o.trace:
        regret[arm] = r
        if all(x <= tol + 1e-12 for x in regret.values()):
            return epochs
    return None


def ranking_kept(rec: Recording, o: SimulatedRun) -> bool:
    """Whether the arms' order by their picks equals their order by the recorded bests."""
    arms = rec.arms()
    by_pick = sorted(arms, key=lambda a: (-o.final_best.get(a, -math.inf), a))
    by_best = sorted(arms, key=lambda a: (-rec.best(a), a))
    return by_pick == by_best


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


# ------------------------------------------------------------------------------------------------
# Output


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


def default_strategies(space: Space) -> list[str]:
    graces = sorted({g for g in (1, 2, space.grace_period) if g < space.max_epochs})
    asha = [f"asha-tpe:{g}:{rf}" for g in graces for rf in (2, 3, 4) if g * rf <= space.max_epochs]
    return asha + list(BASE_STRATEGIES)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m search.replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run folder, or a folder holding curves.json and space.yaml")
    ap.add_argument("--out", required=True, help="folder for replay.md, replay.json and regret.png")
    ap.add_argument("--strategies", nargs="+", help="default: asha-tpe over grace periods 1, 2 and reduction "
                    "factors 2, 3, 4, and " + ", ".join(BASE_STRATEGIES))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--workers", type=int, help="simulated workers (default: the space's max_concurrent, else 1)")
    ap.add_argument("--budget", type=float, default=1.0, help="GPU-time per strategy, a fraction of the grid's")
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--jobs", type=int, default=1, help="processes for the repeats")
    args = ap.parse_args(argv)
    for k in ("repeats", "jobs"):
        if getattr(args, k) < 1:
            ap.error(f"--{k} must be >= 1")
    if args.workers is not None and args.workers < 1:
        ap.error("--workers must be >= 1")
    if not args.budget > 0:
        ap.error("--budget must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        rec = load_recording(args.run_dir)
        strategies = args.strategies or default_strategies(rec.space)
        workers = args.workers or rec.space.max_concurrent or 1
        results = replay(rec, strategies, args.repeats, workers, args.budget, args.jobs)
    except ReplayError as e:
        print(f"search.replay: {e}", file=sys.stderr)
        return 2
    text = "python -m search.replay " + " ".join(argv if argv is not None else sys.argv[1:])
    md = write_report(rec, results, Path(args.out), args.tol, text, time.perf_counter() - t0, decisions_text(rec))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
