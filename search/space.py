"""The space file: what to search, read with `yaml.safe_load` and validated before anything starts.

A space names architecture axes (the arms), hyperparameters searched inside each arm, fixed
training fields, the budget and per-trial resources. Every key is documented in spaces/README.md.
Errors name the file, the key, the value and the rule:

    spaces/x.yaml: params.lr: `low <= high` must hold, got low=0.1 high=0.01

This module imports neither Ray nor Optuna: a space can be checked anywhere.
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from detector import config as C
from detector.metrics import METRICS

ARCH_AXES = ("backbone", "version", "weights", "trainable_layers")
STRATEGIES = ("per-architecture", "joint")
TOP_KEYS = ("name", "metric", "strategy", "data", "val_data", "test_data", "images", "arms", "fixed", "params",
            "baseline", "budget", "resources", "confirm", "seed")
BUDGET_KEYS = {"max_epochs": 10, "grace_period": 1, "reduction_factor": 3, "trials_per_arm": 8, "max_concurrent": None,
               "stopping": "asha", "sampler": "tpe", "checkpoint_every": 1, "max_failed_per_arm": None}
# budget.stopping: "asha" stops weak trials early; "none" runs every trial to max_epochs (full learning
# curves: what search.replay scores strategies on). budget.sampler: Optuna's TPE, or random proposals.
# budget.max_failed_per_arm: how many trials of an arm's study that failed for their configuration
# are replaced by new ones (null: half of trials_per_arm, rounded down); past that, the arm ends
# with fewer usable trials and the report says so.
# What `search.run --resume` may find changed in the space file: keys that cannot change what a trial
# already run means (how many run at once; the name; where the data is read from, since the data
# fingerprint refuses other data). Any other change would mix two searches: refused.
RESUME_MAY_CHANGE = ("name", "max_concurrent", "data", "val_data", "test_data", "images")
_SPACE_KEY = {**{k: f"budget.{k}" for k in BUDGET_KEYS}, "cpu": "resources.cpu", "gpu": "resources.gpu",
              "confirm_top_k": "confirm.top_k", "confirm_seeds": "confirm.seeds", "skipped": "arms"}
RESUME_MAY_CHANGE_KEYS = tuple(_SPACE_KEY.get(k, k) for k in RESUME_MAY_CHANGE)  # as the space file names them
STOPPING = ("asha", "none")
SAMPLERS = ("tpe", "random")
PARAM_KEYS = {"float": ("type", "low", "high", "log", "step", "when"), "int": ("type", "low", "high", "log", "step", "when"),
              "categorical": ("type", "choices", "when")}
# Fields a space may not set: the budget owns `epochs`; ASHA, not patience, stops trials early.
RESERVED = {"epochs": "set by budget.max_epochs", "patience": "early stopping in a search is ASHA's job",
            "metric": "set by the space's top-level `metric`"}
# The split is the run's: every trial, confirmation and baseline run sees the same images. These may
# be set under `fixed` only.
SPLIT_FIELDS = ("val_fraction", "test_fraction", "split_seed")


class SpaceError(ValueError):
    """A space file breaks a rule; the message names the file, the key, the value and the rule."""


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter. `when` = {earlier categorical param: allowed values}."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: tuple = ()  # ((param, (values...)), ...)

    def active(self, chosen: dict) -> bool:
        return all(chosen.get(p) in values for p, values in self.when)


@dataclass(frozen=True)
class Arm:
    """One architecture: a value for every axis. `name` is what files and tables call it."""

    backbone: str
    version: str
    weights: str
    trainable_layers: Any

    @property
    def name(self) -> str:
        return C.arm_name(self.backbone, self.version, self.weights, self.trainable_layers)

    def fields(self) -> dict:
        return {k: getattr(self, k) for k in ARCH_AXES}


@dataclass(frozen=True)
class Space:
    path: str
    name: str
    metric: str
    strategy: str
    data: str | None
    val_data: str | None
    images: str | None
    arms: tuple
    skipped: tuple              # ((axes dict, reason), ...)
    fixed: dict
    params: tuple
    max_epochs: int
    grace_period: int
    reduction_factor: int
    trials_per_arm: int
    max_concurrent: int | None
    cpu: float
    gpu: float
    confirm_top_k: int = 0
    confirm_seeds: int = 0
    seed: int = 0
    test_data: str | None = None
    baseline: dict = field(default_factory=dict)  # one set of values for every arm (the study's way)
    stopping: str = "asha"
    sampler: str = "tpe"
    checkpoint_every: int = 1
    max_failed_per_arm: int = 0  # failed trials of a study replaced by new ones (budget.max_failed_per_arm)
    raw: dict = field(default_factory=dict, compare=False)

    def checkpoint_epochs(self) -> frozenset:
        """The epochs after which a trial saves (and Ray persists) its checkpoint: every
        `checkpoint_every`-th and every ASHA rung (where a trial may be stopped: a stopped trial keeps
        its state); the engine adds the run's last epoch. A trial that fails resumes from its last
        checkpoint, losing at most `checkpoint_every - 1` epochs."""
        epochs = set(range(self.checkpoint_every, self.max_epochs + 1, self.checkpoint_every))
        rung = self.grace_period
        while self.stopping == "asha" and rung <= self.max_epochs:
            epochs.add(rung)
            rung *= self.reduction_factor
        return frozenset(epochs)

    def split(self) -> C.TrainConfig:
        """The split fields of the run (`fixed` or the defaults), as a configuration."""
        return C.from_dict({k: self.fixed[k] for k in SPLIT_FIELDS if k in self.fixed}, source=f"{self.path}: fixed")

    def load_splits(self, data: str | None = None, val_data: str | None = None, test_data: str | None = None,
                    images: str | None = None):
        """The train, validation and test images of a run of this space (detector.data.load_splits with
        the space's data and split fields; an argument given overrides the space's). Raises DataError."""
        from detector.data import load_splits  # imports torch: not at import time (search.curve_trainable)

        split = self.split()
        return load_splits(data or self.data, val_data=val_data or self.val_data, test_data=test_data or self.test_data,
                           images=images or self.images, val_fraction=split.val_fraction,
                           test_fraction=split.test_fraction, seed=split.split_seed)

    def baseline_config(self, arm: Arm, seed: int) -> C.TrainConfig:
        """The shared-hyperparameter configuration of one arm: `fixed`, the arm, the baseline's values,
        the full budget and `seed` (raises ConfigError on impossible values)."""
        values = {**self.fixed, **arm.fields(), **self.baseline, "epochs": self.max_epochs, "metric": self.metric,
                  "seed": seed}
        return C.from_dict(values, source=self.path)

    def eval_stages(self) -> tuple[str, ...]:
        """The stages that retrain chosen configurations after the search, in the order they run."""
        return (("confirm",) if self.confirm_top_k else ()) + (("baseline",) if self.baseline else ())

    def eval_runs(self) -> int:
        """How many runs the stages after the search train at most (an arm with fewer ranked
        trials than `confirm.top_k` confirms fewer)."""
        per_arm = (self.confirm_top_k if "confirm" in self.eval_stages() else 0) + ("baseline" in self.eval_stages())
        return len(self.arms) * per_arm * self.confirm_seeds

    def eval_seeds(self, used: set[int]) -> list[int]:
        """The seeds of the confirmation and baseline runs (the same for both, so their comparison is
        paired by seed): `confirm.seeds` of them, from 1000 * (seed + 1) upward, skipping every seed in
        `used` (the search trials' own): a confirmation never repeats the run that chose it."""
        out, s = [], 1000 * (self.seed + 1)
        while len(out) < self.confirm_seeds:
            if s not in used:
                out.append(s)
            s += 1
        return out

    def trial_config(self, arm: Arm, params: dict, seed: int | None = None) -> C.TrainConfig:
        """The full training configuration of one trial (raises ConfigError on impossible values)."""
        values = {**self.fixed, **arm.fields(), **params, "epochs": self.max_epochs, "metric": self.metric}
        if seed is not None:
            values["seed"] = seed
        return C.from_dict(values, source=f"{self.path} [arm {arm.name}]")

    def total_trials(self) -> int:
        return len(self.arms) * self.trials_per_arm if self.strategy == "per-architecture" else self.trials_per_arm

    def asha_rungs(self) -> list[int]:
        """Epochs at which ASHA compares trials: grace_period * reduction_factor**k < max_epochs."""
        rungs, r = [], self.grace_period
        while self.stopping == "asha" and r < self.max_epochs:
            rungs.append(r)
            r *= self.reduction_factor
        return rungs

    def trial_epoch_estimate(self) -> tuple[int, int]:
        """(lower, upper) bound on trial-epochs: every trial stopped at the first rung vs none stopped."""
        n = self.total_trials()
        first = self.asha_rungs()[0] if self.asha_rungs() else self.max_epochs
        return n * first, n * self.max_epochs


def _err(path, key, msg) -> SpaceError:
    return SpaceError(f"{path}: {key}: {msg}")


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def _parse_param(path, name: str, spec: Any, earlier: dict) -> Param:
    key = f"params.{name}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise _err(path, key, f"must be a mapping with a `type` of {list(PARAM_KEYS)}, got {spec!r}")
    t = spec["type"]
    if t not in PARAM_KEYS:
        raise _err(path, f"{key}.type", f"must be one of {list(PARAM_KEYS)}, got {t!r}")
    unknown = sorted(set(spec) - set(PARAM_KEYS[t]))
    if unknown:
        raise _err(path, key, f"unknown key(s) {unknown} for type {t}; allowed: {list(PARAM_KEYS[t])}")
    when = []
    for dep, values in (spec.get("when") or {}).items():
        if dep not in earlier or earlier[dep].type != "categorical":
            raise _err(path, f"{key}.when", f"must name a categorical parameter listed before {name!r}, got {dep!r}")
        values = _as_list(values)
        bad = [v for v in values if v not in earlier[dep].choices]
        if bad:
            raise _err(path, f"{key}.when.{dep}", f"values must be among {list(earlier[dep].choices)}, got {bad}")
        when.append((dep, tuple(values)))
    if t == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _err(path, f"{key}.choices", f"must be a non-empty list, got {choices!r}")
        return Param(name, t, choices=tuple(tuple(c) if isinstance(c, list) else c for c in choices), when=tuple(when))
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    num = (int,) if t == "int" else (int, float)
    for k, v in (("low", low), ("high", high)):
        if not isinstance(v, num) or isinstance(v, bool) or not math.isfinite(v):
            raise _err(path, f"{key}.{k}", f"must be {'an integer' if t == 'int' else 'a number'}, got {v!r}")
    if not low <= high:
        raise _err(path, key, f"`low <= high` must hold, got low={low} high={high}")
    if not isinstance(log, bool):
        raise _err(path, f"{key}.log", f"must be true or false, got {log!r}")
    if log and low <= 0:
        raise _err(path, key, f"`low > 0` must hold when log is true, got low={low}")
    if step is not None:
        if log:
            raise _err(path, key, "`step` and `log: true` cannot be used together")
        if not isinstance(step, num) or isinstance(step, bool) or step <= 0:
            raise _err(path, f"{key}.step", f"must be a positive {'integer' if t == 'int' else 'number'}, got {step!r}")
    return Param(name, t, low=low, high=high, log=log, step=step, when=tuple(when))


def _enumerate_arms(path, axes: dict, fixed: dict) -> tuple[list[Arm], list[tuple[dict, str]]]:
    """The product of the axes, split into possible arms and skipped combinations with reasons."""
    values = [_as_list(axes.get(k, C.TrainConfig.__dataclass_fields__[k].default)) for k in ARCH_AXES]
    arms, skipped = [], []
    for combo in itertools.product(*values):
        fields_ = dict(zip(ARCH_AXES, combo))
        try:
            C.from_dict({**fixed, **fields_})
        except C.ConfigError as e:
            skipped.append((fields_, str(e)))
            continue
        arms.append(Arm(**fields_))
    if not arms:
        raise _err(path, "arms", "no possible combination; every one was skipped: "
                   + "; ".join(f"{a}: {r}" for a, r in skipped))
    return arms, skipped


def resume_changes(old: Space, new: Space) -> tuple[list[str], list[str]]:
    """(keys a resume may change that differ, keys it may not that differ) between a run's own
    space and the one given to `--resume`, compared after parsing (comments, order and spelling of
    defaults do not count), named as the space file names them (`budget.max_epochs`)."""
    differing = [f.name for f in fields(Space) if f.name not in ("path", "raw")
                 and getattr(old, f.name) != getattr(new, f.name)]
    names = lambda ks: sorted(dict.fromkeys(_SPACE_KEY.get(k, k) for k in ks))  # noqa: E731
    return (names(k for k in differing if k in RESUME_MAY_CHANGE),
            names(k for k in differing if k not in RESUME_MAY_CHANGE))


def load_space(path: str | os.PathLike) -> Space:
    """Read and validate a space file; raise SpaceError (or ConfigError for field values)."""
    path = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such space file") from None
    except yaml.YAMLError as e:
        raise SpaceError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: must be a mapping of {list(TOP_KEYS)}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SpaceError(f"{path}: unknown key(s) {unknown}; allowed: {list(TOP_KEYS)}")

    metric = raw.get("metric", "map50")
    if metric not in METRICS:
        raise _err(path, "metric", f"must be one of {list(METRICS)} (maximised), got {metric!r}")
    strategy = raw.get("strategy", "per-architecture")
    if strategy not in STRATEGIES:
        raise _err(path, "strategy", f"must be one of {list(STRATEGIES)}, got {strategy!r}")

    axes = raw.get("arms") or {}
    if not isinstance(axes, dict):
        raise _err(path, "arms", f"must be a mapping of {list(ARCH_AXES)} to lists of values")
    bad = sorted(set(axes) - set(ARCH_AXES))
    if bad:
        raise _err(path, "arms", f"unknown axis/axes {bad}; allowed: {list(ARCH_AXES)}")

    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise _err(path, "fixed", "must be a mapping of training fields to values")
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        raise _err(path, "params", "must be a mapping of training fields to parameter specs")
    _check_field_keys(path, "fixed", fixed)
    _check_field_keys(path, "params", params_raw)
    both = sorted(set(fixed) & set(params_raw))
    if both:
        raise _err(path, "params", f"{both} are both fixed and searched")
    try:
        C.from_dict(fixed, source=f"{path}: fixed")
    except C.ConfigError as e:
        # Freezing rules involve the arms; checked per arm below. Anything else is an error here.
        if "trainable_layers" not in str(e):
            raise SpaceError(str(e)) from None

    params: dict[str, Param] = {}
    for name, spec in params_raw.items():
        params[name] = _parse_param(path, name, spec, params)

    arms, skipped = _enumerate_arms(path, axes, fixed)

    budget = {**BUDGET_KEYS, **(raw.get("budget") or {})}
    bad = sorted(set(budget) - set(BUDGET_KEYS))
    if bad:
        raise _err(path, "budget", f"unknown key(s) {bad}; allowed: {list(BUDGET_KEYS)}")
    for k in ("max_epochs", "grace_period", "trials_per_arm", "checkpoint_every"):
        if not isinstance(budget[k], int) or isinstance(budget[k], bool) or budget[k] < 1:
            raise _err(path, f"budget.{k}", f"must be an integer >= 1, got {budget[k]!r}")
    if not isinstance(budget["reduction_factor"], int) or budget["reduction_factor"] < 2:
        raise _err(path, "budget.reduction_factor", f"must be an integer >= 2, got {budget['reduction_factor']!r}")
    if budget["grace_period"] > budget["max_epochs"]:
        raise _err(path, "budget.grace_period", f"`grace_period <= max_epochs` must hold, got "
                   f"grace_period={budget['grace_period']} max_epochs={budget['max_epochs']}")
    for k, allowed in (("stopping", STOPPING), ("sampler", SAMPLERS)):
        if budget[k] not in allowed:
            raise _err(path, f"budget.{k}", f"must be one of {list(allowed)}, got {budget[k]!r}")
    mc = budget["max_concurrent"]
    if mc is not None and (not isinstance(mc, int) or mc < 1):
        raise _err(path, "budget.max_concurrent", f"must be null or an integer >= 1, got {mc!r}")
    max_failed = budget["max_failed_per_arm"]
    if max_failed is None:
        max_failed = budget["trials_per_arm"] // 2
    elif not isinstance(max_failed, int) or isinstance(max_failed, bool) or max_failed < 0:
        raise _err(path, "budget.max_failed_per_arm", f"must be null (half of trials_per_arm) or an integer >= 0, "
                   f"got {max_failed!r}")

    res = {"cpu": 1, "gpu": 0, **(raw.get("resources") or {})}
    bad = sorted(set(res) - {"cpu", "gpu"})
    if bad:
        raise _err(path, "resources", f"unknown key(s) {bad}; allowed: ['cpu', 'gpu']")
    for k in ("cpu", "gpu"):
        v = res[k]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or (k == "cpu" and v == 0):
            raise _err(path, f"resources.{k}", f"must be a number {'> 0' if k == 'cpu' else '>= 0'} "
                       f"(fractions share a device), got {v!r}")
    if res["gpu"] > 1:
        raise _err(path, "resources.gpu", f"must be at most 1, got {res['gpu']!r}: one trial trains on one GPU "
                   "(there is no data-parallel training); to use more GPUs, run more trials at once "
                   "(budget.max_concurrent), or pack several trials on each GPU with a fraction such as 0.5")
    fixed = _default_num_workers(path, fixed, params, res["cpu"])

    confirm = raw.get("confirm") or {}
    if confirm:
        for k in ("top_k", "seeds"):
            v = confirm.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise _err(path, f"confirm.{k}", f"must be an integer >= 1, got {v!r}")
        bad = sorted(set(confirm) - {"top_k", "seeds"})
        if bad:
            raise _err(path, "confirm", f"unknown key(s) {bad}; allowed: ['top_k', 'seeds']")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or seed < 0:
        raise _err(path, "seed", f"must be an integer >= 0, got {seed!r}")
    baseline = _parse_baseline(path, raw.get("baseline"), params, confirm)

    space = Space(path=path, name=str(raw.get("name") or Path(path).stem), metric=metric, strategy=strategy,
                  data=raw.get("data"), val_data=raw.get("val_data"), images=raw.get("images"),
                  arms=tuple(arms), skipped=tuple(skipped), fixed=dict(fixed), params=tuple(params.values()),
                  max_epochs=budget["max_epochs"], grace_period=budget["grace_period"],
                  reduction_factor=budget["reduction_factor"], trials_per_arm=budget["trials_per_arm"],
                  max_concurrent=mc, cpu=float(res["cpu"]), gpu=float(res["gpu"]),
                  confirm_top_k=confirm.get("top_k", 0), confirm_seeds=confirm.get("seeds", 0), seed=seed,
                  test_data=raw.get("test_data"), baseline=baseline, stopping=budget["stopping"],
                  sampler=budget["sampler"], checkpoint_every=budget["checkpoint_every"],
                  max_failed_per_arm=max_failed, raw=raw)
    _check_extremes(space)
    for arm in space.arms:
        try:
            space.baseline_config(arm, seed=0)
        except C.ConfigError as e:  # "FILE: field: rule" -> "FILE: baseline.field: rule (arm ...)"
            raise SpaceError(f"{path}: baseline.{str(e)[len(path) + 2:]} (arm {arm.name})") from None
    return space


# Fields a section may not set, beyond RESERVED and the arm axes: (fields, why).
NOT_IN_SECTION = {"params": (SPLIT_FIELDS, "the split is the run's, not a trial's: set it under `fixed`"),
                  "baseline": ((*SPLIT_FIELDS, "seed"), "the baseline runs on the run's split with the confirmation seeds")}


def _check_field_keys(path, section: str, keys) -> None:
    """Every key of `fixed`, `params` or `baseline` is a training field that section may set."""
    banned, why = NOT_IN_SECTION.get(section, ((), ""))
    for k in keys:
        if k not in C.FIELD_NAMES:
            raise _err(path, f"{section}.{k}", f"is not a training field; valid fields: {list(C.FIELD_NAMES)}")
        if k in RESERVED:
            raise _err(path, f"{section}.{k}", f"may not be set in a space: {RESERVED[k]}")
        if k in ARCH_AXES:
            raise _err(path, f"{section}.{k}", "is an architecture axis: "
                       + ("the baseline runs on every arm" if section == "baseline" else "list it under `arms`"))
        if k in banned:
            raise _err(path, f"{section}.{k}", why)


def _parse_baseline(path, raw, params: dict, confirm: dict) -> dict:
    """The `baseline:` section: training fields and values, one set for every arm. It must name a
    value for every searched parameter (a shared configuration is a complete one), and it runs with
    the confirmation seeds, so it needs a `confirm` section."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise _err(path, "baseline", f"must be a mapping of training fields to values, got {raw!r}")
    _check_field_keys(path, "baseline", raw)
    missing = [name for name in params if name not in raw]
    if missing:
        raise _err(path, "baseline", f"must give a value for every searched parameter; missing: {missing}")
    if not confirm:
        raise _err(path, "baseline", "needs a `confirm` section: the baseline trains with its `seeds`")
    return dict(raw)


def _default_num_workers(path: str, fixed: dict, params: dict, cpu: float) -> dict:
    """`fixed` with `num_workers` set to the trial's CPU share minus one (the trial's main process
    uses one core) unless the space sets it; a value above the share is refused."""
    share = int(cpu)
    if "num_workers" not in fixed and "num_workers" not in params:
        return {**fixed, "num_workers": max(share - 1, 0)}
    p = params.get("num_workers")
    values = [fixed["num_workers"]] if p is None else (list(p.choices) if p.type == "categorical" else [p.high])
    where = "fixed.num_workers" if p is None else "params.num_workers"
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > share:
            raise _err(path, where, f"must be at most the trial's CPU share (resources.cpu = {cpu:g}: "
                       f"{share} worker processes; the default is {max(share - 1, 0)}), got {v!r}")
    return fixed


def _check_extremes(space: Space) -> None:
    """Build each arm's configuration at the low and high ends of every range and every choice, so a
    value no trial could train with fails now, not forty minutes into a cluster run."""
    for arm in space.arms:
        for pick in ("low", "high"):
            values: dict = {}
            for p in space.params:
                if not p.active(values):
                    continue
                if p.type == "categorical":
                    values[p.name] = p.choices[0] if pick == "low" else p.choices[-1]
                else:
                    values[p.name] = getattr(p, pick)
            try:
                space.trial_config(arm, {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})
            except C.ConfigError as e:
                raise SpaceError(f"{e} (with the {pick} end of every parameter)") from None


def dry_run_text(space: Space) -> str:
    """What --dry-run prints: arms, skipped combinations with reasons, budget, trial-epoch estimate."""
    lo, hi = space.trial_epoch_estimate()
    lines = [f"space {space.path}: strategy {space.strategy}, metric {space.metric} (maximised)",
             f"arms ({len(space.arms)}):"]
    lines += [f"  {a.name}" for a in space.arms]
    lines.append(f"skipped combinations ({len(space.skipped)}):")
    lines += [f"  {a}: {r.split(': ', 1)[-1]}" for a, r in space.skipped] or ["  (none)"]
    per = "per arm" if space.strategy == "per-architecture" else "in all"
    stopping = (f"ASHA rungs at epochs {space.asha_rungs() or '(none)'} (reduction factor {space.reduction_factor})"
                if space.stopping == "asha" else "no early stopping (budget.stopping: none)")
    lines += [f"budget: {space.trials_per_arm} trials {per}, up to {space.max_epochs} epochs each; {stopping}; "
              f"proposals: {space.sampler}; up to {space.max_failed_per_arm} failed trials {per} replaced",
              f"trials: {space.total_trials()}, trial-epochs between {lo} (all stopped at the first rung) and {hi}",
              f"resources per trial: cpu {space.cpu:g}, gpu {space.gpu:g}; at most "
              f"{space.max_concurrent or 'as many as fit'} at once",
              "searched: " + (", ".join(p.name for p in space.params) or "(nothing)")]
    if space.confirm_top_k:
        lines.append(f"confirmation: top {space.confirm_top_k} per arm x {space.confirm_seeds} seeds, "
                     f"{space.max_epochs} epochs")
    if space.baseline:
        lines.append(f"baseline (shared by every arm): {space.baseline}, {space.confirm_seeds} seeds, "
                     f"{space.max_epochs} epochs")
    split = space.split()
    test = space.test_data or (f"{split.test_fraction:g} of the images" if split.test_fraction else
                               "none (the comparison is scored on the validation images that chose the configurations)")
    lines.append(f"split: split_seed {split.split_seed}, validation {space.val_data or f'{split.val_fraction:g} of the images'}, "
                 f"test {test}")
    return "\n".join(lines)
