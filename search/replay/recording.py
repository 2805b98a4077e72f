"""Recordings of learning curves: a run folder or a compact `curves.json` read as one `Recording` of
every trial's per-epoch metric and cost, checked against its space, and the `Matcher` that answers a
proposed configuration with the nearest recorded one (search/curve_trainable.py uses it too)."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.results import STATUS_FAILED, collect
from search.space import Space, SpaceError, load_space


CURVES = "curves.json"


FORMAT = 1


class ReplayError(ValueError):
    """A recording replay cannot use; the message names the file and the reason."""


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
        # rec.history: one report per epoch, a re-run epoch's (search.results.TrialHistory).
        epochs = [int(row["epoch"]) for row in rec.history]
        if epochs != list(range(1, len(epochs) + 1)):
            raise ReplayError(f"{rec.path}: epochs {epochs} are not 1..n; the trial's result.json is incomplete")
        curves.append(curve_of(rec.trial_id, rec.arm, dict(rec.params), rec.status, rec.history, space.metric))
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

