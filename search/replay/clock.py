"""The simulated clock: W workers take trials as real slots do, time advancing by each epoch's
recorded cost; many seeded repeats of each strategy; and a recorded run's scheduler decisions replayed
in its real order."""
from __future__ import annotations

import heapq
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from search.space import Space

from search.replay.recording import Curve, Recording
from search.replay.strategies import _Trial, _parse_strategy, make_strategy


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

