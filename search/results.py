"""Read a run folder's trials back: works on finished, running, crashed and resumed runs alike.

Each Ray trial folder holds `params.json` (the config the searcher suggested), `result.json` (one
JSON object per reported epoch) and, for failed trials, `error.txt`. From those this module derives
one record per trial and writes `results.csv` and `trials.json` in the run folder.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from detector import config as C
from detector.metrics import METRICS, best_epoch, is_better
from search.compat import ray_trials

STATUS_FINISHED, STATUS_STOPPED, STATUS_FAILED, STATUS_RUNNING = "finished", "stopped", "failed", "running"
STATUSES = (STATUS_FINISHED, STATUS_STOPPED, STATUS_FAILED, STATUS_RUNNING)
# Ray's Tuner folder under the run folder: the search's trials and the later stages' runs, each
# naming its stage in its config (search.stages).
TRIALS_DIR = "trials"
# Held-out test metrics: reported by confirmation and baseline runs at the epochs validation chose.
TEST_KEYS = METRICS  # what the engine scores on the test images (every metric it can select by)


@dataclass(frozen=True)
class Outcome:
    """How a trial ended (or that it has not): `status` is one of STATUSES, `epochs` the last epoch
    it reported, `reason` why it failed, `infeasible` whether it failed for its configuration (it
    reported the failure itself) rather than because Ray gave up on it after errors."""

    status: str
    epochs: int
    reason: str = ""
    infeasible: bool = False


def outcome(*, epochs: int, max_epochs: int, fail_reason: str | None = None, errored: bool = False,
            running: bool = False) -> Outcome:
    """The one rule for a trial's outcome, used by the searcher (which Optuna state a trial gets),
    the progress table and results.csv alike:

    - failed: it reported a `fail_reason` (non-finite loss, out of memory: its configuration is
      infeasible, and the searcher tells TPE so), or Ray gave up on it after an error (`errored`);
    - finished: it reported `max_epochs`, the search's full budget;
    - running: Ray still has it (`running`);
    - stopped: it ended earlier without an error, which in a search only ASHA does (a space may not
      set `patience`).
    """
    if fail_reason:
        return Outcome(STATUS_FAILED, epochs, fail_reason, infeasible=True)
    if errored:
        return Outcome(STATUS_FAILED, epochs, "the trial raised an error (see its error.txt)")
    if epochs >= max_epochs:
        return Outcome(STATUS_FINISHED, epochs)
    return Outcome(STATUS_RUNNING if running else STATUS_STOPPED, epochs)


@dataclass
class TrialRecord:
    trial_id: str
    arm: str
    study: str
    stage: str                 # "search", "confirm" or "baseline" (the trial's config)
    metric: str                # the run's metric: what `best` and `last` hold
    status: str                # one of STATUSES (see `outcome`)
    epochs: int                # last epoch reported
    best: float                # best `metric` over the epochs (earliest of ties: detector.metrics.best_epoch)
    last: float                # `metric` at the last epoch
    best_epoch: int
    reason: str                # why it failed
    unreadable_lines: int      # lines of result.json that could not be read (cut by a crash)
    path: str
    config: dict
    params: dict
    history: list = field(repr=False, default_factory=list)
    test: dict = field(default_factory=dict)  # TEST_KEYS on the test images at `best_epoch` (none: empty)
    source_trial: str = ""     # confirmation runs: the search trial whose configuration they retrain
    trial_number: int | None = None  # search trials: the Optuna trial's number in its study (the order asked)
    infeasible: bool = False   # failed for its configuration (`outcome`), not because Ray gave up after errors

    @staticmethod
    def columns(metric: str) -> tuple[str, ...]:
        return ("trial_id", "arm", "study", "stage", "status", "epochs_run", f"best_{metric}", "best_epoch",
                f"last_{metric}", *(f"test_{k}" for k in TEST_KEYS), "source_trial", "reason", "unreadable_lines")

    def row(self) -> dict:
        """The record as results.csv and trials.json write it: the same columns (`columns`), named by
        what they hold (`best_map50`, not `best`). The README's "Results" section documents them."""
        values = (self.trial_id, self.arm, self.study, self.stage, self.status, self.epochs, self.best,
                  self.best_epoch, self.last, *(self.test.get(k, "") for k in TEST_KEYS), self.source_trial,
                  self.reason, self.unreadable_lines)
        return dict(zip(self.columns(self.metric), values))

    def at_best(self) -> dict:
        """What the run reported at `best_epoch` (the epoch whose weights it kept); {} if none."""
        return next((h for h in self.history if h.get("epoch") == self.best_epoch), {})

    def score(self) -> float:
        """What a comparison scores this run by: its `metric` on the test images at the epoch
        validation chose, or, without test images, its best validation `metric` (optimistic: the
        same images chose the epoch and the configuration)."""
        return self.test.get(self.metric, math.nan) if self.test else self.best


class RunLayoutError(ValueError):
    """A folder that is not a run folder of this version's layout."""


def check_layout(run_dir: Path, info: dict | None = None) -> None:
    """Refuse a run folder of another layout, naming it: the runs of version 0.1 keep every stage's
    runs in `trials/` and say so in run.json (`stages_share_queue`); a folder with a Tuner folder of
    its own per stage was written before that and is not read (nor resumed) by this version."""
    run_dir = Path(run_dir)
    old = [d for d in ("confirm", "baseline") if (run_dir / d).is_dir()]
    if old or (info is not None and info.get("stages_share_queue") is not True):
        why = f"it has a folder per stage ({', '.join(old)})" if old else "its run.json lacks stages_share_queue"
        raise RunLayoutError(f"{run_dir}: a run folder of an earlier layout ({why}): this version reads and "
                             f"resumes only runs whose stages share trials/ (search.run writes them)")


def read_run_info(run_dir: Path) -> dict:
    """A run folder's run.json (what search.run recorded of the run); FileNotFoundError naming the
    folder when it is not a run folder, RunLayoutError when it is one of another layout."""
    f = Path(run_dir) / "run.json"
    if not f.exists():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no run.json)")
    info = json.loads(f.read_text())
    check_layout(run_dir, info)
    return info


class TrialHistory:
    """The one account of a trial's epochs and of its best, which every reader derives here: the
    records and results.csv (`read_trial`), the searcher (the value Optuna gets, the trial a stage
    confirms), the checkpoint pruner and the progress table.

    Reports come in the order the trial made them. A report of epoch e replaces every earlier report
    of epoch e or later: a trial retried from a checkpoint (or resumed after the driver was lost)
    reports again the epochs after that checkpoint, and the later reports are those of the weights
    it went on with, the ones its `model.pt` holds (on a GPU a re-run epoch need not equal the first
    run). A failure report (`fail_reason`) is not an epoch. Its best is detector.metrics.best_epoch's:
    the highest finite `metric`, the earliest of ties (the epoch the engine keeps). (ASHA's rungs
    are the exception, by design: a rung holds what a trial reported there first, which is what
    ASHA decided on; search.scheduler.)"""

    def __init__(self, metric: str, reports=()):
        self.metric = metric
        self._by_epoch: dict[int, dict] = {}  # in epoch order: a repeat truncates before it appends
        self._best: tuple[float, int] = (math.nan, 0)
        for r in reports:
            self.add(r)

    def add(self, report: dict) -> None:
        if "fail_reason" in report or report.get("epoch") is None:
            return
        epoch = int(report["epoch"])
        if self._by_epoch and epoch <= next(reversed(self._by_epoch)):
            self._by_epoch = {e: r for e, r in self._by_epoch.items() if e < epoch}
            self._best = best_epoch(self._by_epoch.values(), self.metric)
        self._by_epoch[epoch] = report
        v = report.get(self.metric)
        if v is not None and is_better(float(v), self._best[0]):
            self._best = (float(v), epoch)

    @property
    def epochs(self) -> list[dict]:
        """The reports that count, one per epoch, in epoch order."""
        return list(self._by_epoch.values())

    @property
    def best(self) -> float:
        """The best `metric` (nan: no finite one)."""
        return self._best[0]

    @property
    def best_epoch(self) -> int:
        """The epoch of `best` (0: none)."""
        return self._best[1]


def parse_results(text: str) -> tuple[list[dict], int]:
    """(the reports of a result.json's text, in order; how many lines could not be read).

    Ray appends to the same file when a trial is restored, so a line cut by a crash can sit between
    readable ones: it is skipped and counted, and every later line still counts."""
    out, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return out, bad


def read_results(trial_dir: Path) -> tuple[list[dict], int]:
    """(the trial's reported results in order, how many lines of `result.json` could not be read:
    `parse_results`)."""
    f = trial_dir / "result.json"
    return parse_results(f.read_text(errors="replace")) if f.exists() else ([], 0)


def read_history(trial_dir: Path) -> list[dict]:
    """The trial's readable reported results (`result.json`, one JSON object per line), in order."""
    return read_results(trial_dir)[0]


def ray_statuses(stage_dir: Path) -> dict[str, str]:
    """{trial id: Ray's status} (see `ray_trials`)."""
    return {k: t["status"] for k, t in ray_trials(stage_dir).items()}


def read_params(trial_dir: Path) -> dict | None:
    """The trial's config as the searcher suggested it (`params.json`), or None when the folder has none.

    Ray's own copy of its staging folder into the run folder rewrote each file in place, and a
    driver killed during that copy left some `params.json` empty (seen in tests/search/test_scale.py);
    search.compat.atomic_local_uploads now replaces each file whole. A folder that still holds a
    cut one (a copy made by another tool) is read from Ray's experiment state instead, which holds
    the same config."""
    f = trial_dir / "params.json"
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        trial_id = trial_dir.name.split("_", 1)[-1]
        saved = ray_trials(trial_dir.parent).get(trial_id, {}).get("config")
        if isinstance(saved, dict):
            return saved
        raise ValueError(f"{f}: not readable JSON, and Ray's experiment state in {trial_dir.parent} does not hold "
                         f"trial {trial_id}'s config either") from None


def counted_trials(stage_dir: Path) -> list[tuple[Path, str, str | None]]:
    """The trials of a stage folder that count, as (folder, trial id, Ray's status or None), in
    folder order. Every reader of a run's trials (results, the scheduler's rung rebuild) goes
    through here, so they all count the same trials.

    A folder whose trial is missing from Ray's newest experiment state does not count: it was
    started after Ray's last experiment checkpoint by a driver that then died; Ray never knew it, and
    its Optuna trial went to another trial on resume (search.searcher), which redid its work. (In a
    run still going, it is a trial newer than the last checkpoint.) Nor does one that Ray's state
    holds as TERMINATED without a single stored result: the driver died before its results reached
    the run's storage (Ray uploads its state and the trials' files separately), its work is lost, and
    the searcher runs its configuration again on resume."""
    if not stage_dir.is_dir():
        return []
    statuses = ray_statuses(stage_dir)
    out = []
    for d in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
        # Folders are named ARM_TRIALID (search.run); arm names hold no "_", trial ids may
        # (the confirmation stage's grid ids look like 7a793_00001).
        trial_id = d.name.split("_", 1)[-1]
        if statuses and trial_id not in statuses:
            continue
        if statuses.get(trial_id) == "TERMINATED" and not _has_results(d):
            continue
        if (d / "params.json").exists():
            out.append((d, trial_id, statuses.get(trial_id)))
    return out


def _has_results(trial_dir: Path) -> bool:
    """Whether the trial folder holds at least one reported result."""
    f = trial_dir / "result.json"
    return f.is_file() and f.stat().st_size > 0


def read_trial(trial_dir: Path, metric: str, max_epochs: int, ray_status: str | None = None) -> TrialRecord | None:
    """One trial's record. `ray_status` (from the experiment state) tells a running trial from a
    stopped one and a retried-then-finished trial from a failed one; without it, a trial that left
    an error file and did not finish counts as failed."""
    cfgd = read_params(trial_dir)
    if cfgd is None:
        return None
    raw, unreadable = read_results(trial_dir)
    history = TrialHistory(metric, raw)
    hist, best, best_ep = history.epochs, history.best, history.best_epoch
    trial_id = (raw[-1].get("trial_id") if raw else None) or trial_dir.name.split("_", 1)[-1]
    at_best = next((h for h in hist if int(h["epoch"]) == best_ep), {})
    epochs = int(hist[-1]["epoch"]) if hist else 0
    error_file = trial_dir / "error.txt"
    errored = ray_status == "ERROR" or (ray_status is None and error_file.exists() and epochs < max_epochs)
    result = outcome(epochs=epochs, max_epochs=max_epochs,
                     fail_reason=next((h["fail_reason"] for h in raw if "fail_reason" in h), None),
                     errored=errored, running=ray_status in ("PENDING", "RUNNING", "PAUSED"))
    reason = result.reason
    if errored and error_file.exists():
        lines = [ln for ln in error_file.read_text().splitlines() if ln.strip()]
        reason = lines[-1][:300] if lines else reason
    return TrialRecord(trial_id=trial_id, arm=cfgd["arm"], study=cfgd.get("study", cfgd["arm"]),
                       stage=cfgd.get("stage", "search"), metric=metric,
                       status=result.status, epochs=epochs, best=best,
                       last=hist[-1].get(metric, math.nan) if hist else math.nan, best_epoch=best_ep,
                       reason=reason, infeasible=result.infeasible, unreadable_lines=unreadable, path=str(trial_dir), config=cfgd["cfg"],
                       params=cfgd.get("params", {}), history=hist,
                       test={k: at_best[f"test_{k}"] for k in TEST_KEYS if f"test_{k}" in at_best},
                       source_trial=cfgd.get("source_trial", ""), trial_number=cfgd.get("trial_number"))


def collect(run_dir: Path, metric: str, max_epochs: int) -> list[TrialRecord]:
    """Every trial that counts under the run folder (every stage's runs), in folder order."""
    check_layout(run_dir)
    out = []
    for d, _, ray_status in counted_trials(Path(run_dir) / TRIALS_DIR):
        rec = read_trial(d, metric, max_epochs, ray_status)
        if rec is not None:
            out.append(rec)
    return out


def ranked(records: list[TrialRecord], arm: str | None = None) -> list[TrialRecord]:
    """The one definition of the best configurations: search-stage trials (of `arm`, or of every arm)
    that did not fail and reported a finite metric, best first. Trials that ran the full budget come
    before trials ASHA stopped (an early score is not a final one), then higher `best`, then the
    trial its study asked for first (`trial_number`; a run from before the number was recorded: the
    trial id). Not `records`' order: folder names follow Ray's random trial ids. The searcher ranks
    the same way when it picks an arm's confirmation runs; search.export and search.report take
    their choice from here."""
    ok = [r for r in records if r.stage == "search" and r.status != STATUS_FAILED and math.isfinite(r.best)
          and (arm is None or r.arm == arm)]
    return sorted(ok, key=lambda r: (*rank_key(r.status, r.best),
                                     math.inf if r.trial_number is None else r.trial_number, r.trial_id))


def rank_key(status: str, best: float) -> tuple:
    """`ranked`'s order of two trials of an arm (smaller first), also used by search.checkpoints to
    tell which ended trials can no longer be their arm's best."""
    return (status != STATUS_FINISHED, -best)


@dataclass
class Confirmed:
    """One configuration retrained with the confirmation seeds: its search trial and the runs."""

    source: TrialRecord
    runs: list

    def values(self, test: bool = False) -> list[float]:
        """Each finished run's best validation metric, or (`test`) its test score (TrialRecord.score)."""
        vals = [r.score() if test else r.best for r in self.runs if r.status == STATUS_FINISHED]
        return [v for v in vals if math.isfinite(v)]

    def best_run(self) -> TrialRecord:
        """The finished run with the best validation metric (ties: the lowest seed): the model that
        represents this configuration (search.export ships its weights; search/detections.py draws it)."""
        runs = [r for r in self.runs if r.status == STATUS_FINISHED and math.isfinite(r.best)]
        return min(runs, key=lambda r: (-r.best, int(r.config["seed"])))


def confirmed(records: list[TrialRecord], arm: str) -> list[Confirmed]:
    """The confirmed configurations of `arm`, best first: by the mean over seeds of the validation
    metric (never the test score: test images choose nothing), ties in search order (`ranked`).
    search.export --from confirm and search.report take an arm's tuned configuration from here."""
    order = ranked(records, arm)
    runs = [r for r in records if r.stage == "confirm" and r.arm == arm]
    out = [Confirmed(src, [r for r in runs if r.source_trial == src.trial_id]) for src in order]
    out = [c for c in out if c.values()]
    return sorted(out, key=lambda c: -sum(c.values()) / len(c.values()))  # stable: ties keep search order


def write_results(run_dir: Path, records: list[TrialRecord], metric: str) -> Path:
    """`results.csv` (one row per trial: `TrialRecord.row`, then every configuration field) and
    `trials.json` (the same rows, with the configuration, the searched values and the trial folder)."""
    path = run_dir / "results.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*TrialRecord.columns(metric), *C.FIELD_NAMES])
        for r in records:
            w.writerow([*r.row().values(), *[json.dumps(r.config.get(k)) if isinstance(r.config.get(k), list)
                                         else r.config.get(k) for k in C.FIELD_NAMES]])
    tmp.replace(path)
    (run_dir / "trials.json").write_text(json.dumps([{**r.row(), "path": r.path, "params": r.params,
                                                      "config": r.config} for r in records], indent=1, default=str))
    return path
