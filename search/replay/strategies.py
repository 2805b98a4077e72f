"""The strategies a replay scores: each decides which trial a free (simulated) worker runs next and
whether a trial goes on, with the project's own searcher and per-arm ASHA (see search/replay/__init__.py)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np

from search.space import Space

from search.replay.recording import Curve, Matcher, Recording, ReplayError


# The strategies a plain `search.replay RUN_DIR` scores (ASHA settings are added from the space).
BASE_STRATEGIES = ("asha-random:1:3", "joint-asha-tpe:1:3", "tpe-full", "grid", "one-epoch-top3")


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


def default_strategies(space: Space) -> list[str]:
    graces = sorted({g for g in (1, 2, space.grace_period) if g < space.max_epochs})
    asha = [f"asha-tpe:{g}:{rf}" for g in graces for rf in (2, 3, 4) if g * rf <= space.max_epochs]
    return asha + list(BASE_STRATEGIES)

