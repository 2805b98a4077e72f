"""Read a run folder's trials back: works on finished, running, crashed and resumed runs alike.

Each Ray trial folder holds `params.json` (the config the searcher suggested), `result.json` (one
JSON object per reported epoch) and, for failed trials, `error.txt`. From those this module derives
one record per trial and writes `results.csv` and `trials.json` in the run folder.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from detector import config as C

STATUS_FINISHED, STATUS_STOPPED, STATUS_FAILED, STATUS_RUNNING = "finished", "stopped", "failed", "running"


@dataclass
class TrialRecord:
    trial_id: str
    arm: str
    study: str
    stage: str                 # "search" or "confirm"
    status: str                # finished | stopped | failed | running
    epochs: int
    best: float
    last: float
    best_epoch: int
    reason: str
    path: str
    config: dict
    params: dict
    history: list = field(repr=False, default_factory=list)

    @property
    def status_text(self) -> str:
        if self.status == STATUS_STOPPED:
            return f"stopped at epoch {self.epochs}"
        if self.status == STATUS_FAILED:
            return f"failed: {self.reason}"
        return self.status


def read_history(trial_dir: Path) -> list[dict]:
    """The trial's reported results (`result.json`, one JSON object per line), in order."""
    f = trial_dir / "result.json"
    if not f.exists():
        return []
    out = []
    for line in f.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash: what came before it stands
    return out


def ray_statuses(stage_dir: Path) -> dict[str, str]:
    """{trial id: Ray's status (PENDING, RUNNING, PAUSED, TERMINATED, ERROR)} from the newest readable
    experiment state of a Tuner folder; empty when there is none."""
    for f in sorted(stage_dir.glob("experiment_state-*.json"), reverse=True):
        try:
            state = json.loads(f.read_text())
            return {t["trial_id"]: t["status"] for t in (json.loads(td[0]) for td in state["trial_data"])}
        except (json.JSONDecodeError, KeyError, TypeError, IndexError):
            continue
    return {}


def read_trial(trial_dir: Path, metric: str, max_epochs: int, ray_status: str | None = None) -> TrialRecord | None:
    """One trial's record. `ray_status` (from the experiment state) tells a running trial from a
    stopped one and a retried-then-finished trial from a failed one; without it, a trial that left
    an error file and did not finish counts as failed."""
    params_file = trial_dir / "params.json"
    if not params_file.exists():
        return None
    cfgd = json.loads(params_file.read_text())
    cfgd = cfgd.get("trial", cfgd)  # confirmation-stage trials hold their config under "trial"
    raw = read_history(trial_dir)
    hist = [h for h in raw if "fail_reason" not in h]
    # Keep the last report of each epoch (a retried or resumed trial may report an epoch twice).
    by_epoch = {int(h["epoch"]): h for h in hist if "epoch" in h}
    hist = [by_epoch[e] for e in sorted(by_epoch)]
    trial_id = (raw[-1].get("trial_id") if raw else None) or trial_dir.name.split("_", 1)[-1]
    values = [(h.get(metric, math.nan), int(h["epoch"])) for h in hist if math.isfinite(h.get(metric, math.nan))]
    best, best_epoch = max(values) if values else (math.nan, 0)
    epochs = int(hist[-1]["epoch"]) if hist else 0
    reason = ""
    fail = next((h["fail_reason"] for h in raw if "fail_reason" in h), None)
    error_file = trial_dir / "error.txt"
    if fail:
        status, reason = STATUS_FAILED, fail
    elif ray_status == "ERROR" or (ray_status is None and error_file.exists() and epochs < max_epochs):
        status = STATUS_FAILED
        lines = [ln for ln in error_file.read_text().splitlines() if ln.strip()] if error_file.exists() else []
        reason = lines[-1][:300] if lines else "error"
    elif epochs >= max_epochs:
        status = STATUS_FINISHED
    elif ray_status in ("PENDING", "RUNNING", "PAUSED"):
        status = STATUS_RUNNING
    else:
        status = STATUS_STOPPED
    return TrialRecord(trial_id=trial_id, arm=cfgd["arm"], study=cfgd.get("study", cfgd["arm"]),
                       stage="confirm" if trial_dir.parent.name == "confirm" else "search", status=status, epochs=epochs, best=best,
                       last=hist[-1].get(metric, math.nan) if hist else math.nan, best_epoch=best_epoch,
                       reason=reason, path=str(trial_dir), config=cfgd["cfg"], params=cfgd.get("params", {}),
                       history=hist)


def collect(run_dir: Path, metric: str, max_epochs: int) -> list[TrialRecord]:
    """Every trial under the run folder (search and confirmation stages), in folder order."""
    out = []
    for stage_dir in (run_dir / "trials", run_dir / "confirm"):
        if not stage_dir.is_dir():
            continue
        statuses = ray_statuses(stage_dir)
        for d in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            # Folders are named ARM_TRIALID (search.run); arm names hold no "_", trial ids may
            # (the confirmation stage's grid ids look like 7a793_00001).
            trial_id = d.name.split("_", 1)[-1]
            if statuses and trial_id not in statuses:
                # Started after Ray's last experiment checkpoint by a driver that then died: Ray never
                # knew it and its Optuna trial went to another trial on resume (search.searcher),
                # which redid its work. (In a run still going, a trial newer than the last checkpoint.)
                continue
            rec = read_trial(d, metric, max_epochs, statuses.get(trial_id))
            if rec is not None:
                out.append(rec)
    return out


def write_results(run_dir: Path, records: list[TrialRecord]) -> Path:
    """`results.csv` (one row per trial, every configuration field) and `trials.json`."""
    path = run_dir / "results.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "arm", "stage", "status", "epochs_run", "best", "best_epoch", "last", "reason",
                    *C.FIELD_NAMES])
        for r in records:
            w.writerow([r.trial_id, r.arm, r.stage, r.status_text, r.epochs, r.best, r.best_epoch, r.last,
                        r.reason, *[json.dumps(r.config.get(k)) if isinstance(r.config.get(k), list)
                                    else r.config.get(k) for k in C.FIELD_NAMES]])
    tmp.replace(path)
    (run_dir / "trials.json").write_text(json.dumps([{k: v for k, v in asdict(r).items() if k != "history"}
                                                     for r in records], indent=1, default=str))
    return path
