"""search.checkpoints.PruneEndedCheckpoints without Ray's loop: fake trials whose folders are real,
and an experiment state written the way Ray writes it (searchutil.write_experiment_state)."""
from __future__ import annotations

import math
from pathlib import Path

import pyarrow.fs

from search.checkpoints import PruneEndedCheckpoints

from searchutil import write_experiment_state


class _Storage:
    storage_filesystem = pyarrow.fs.LocalFileSystem()


class _Trial:
    """What the pruner reads of a Ray trial: id, config, storage and folder."""

    def __init__(self, stage_dir: Path, trial_id: str, arm: str):
        self.trial_id, self.config, self.storage = trial_id, {"arm": arm}, _Storage()
        self.path = str(stage_dir / f"{arm}_{trial_id}")
        for n in (1, 2):
            (Path(self.path) / f"checkpoint_00000{n}").mkdir(parents=True)
        (Path(self.path) / "result.json").write_text("{}\n")


def _run(prune, trial, values, fail=False):
    for epoch, v in enumerate(values, 1):
        prune.on_trial_result(0, [], trial, {"epoch": epoch, "map50": v})
    if fail:
        prune.on_trial_result(0, [], trial, {"epoch": len(values), "map50": math.nan, "fail_reason": "nan loss"})
    prune.on_trial_complete(0, [], trial)


def _kept(trial) -> bool:
    return any(Path(trial.path).glob("checkpoint_*"))


def test_only_trials_that_ray_saved_as_ended_and_cannot_be_their_arms_best_lose_their_checkpoints(tmp_path):
    stage = tmp_path / "trials"
    prune = PruneEndedCheckpoints("map50", max_epochs=4, every_s=0)
    a = {k: _Trial(stage, k, "resnet18-v1") for k in ("best", "tie", "worse", "stopped_high", "failed", "unsaved")}
    b = _Trial(stage, "other_arm", "resnet34-v1")
    _run(prune, a["best"], [0.1, 0.3, 0.4, 0.5])          # finished, the arm's best
    _run(prune, a["tie"], [0.2, 0.5, 0.5, 0.5])           # finished, tied with it: kept (ties are all kept)
    _run(prune, a["worse"], [0.1, 0.2, 0.3, 0.4])         # finished below it
    _run(prune, a["stopped_high"], [0.6, 0.7])            # stopped by ASHA: ranks after every finished trial
    _run(prune, a["failed"], [0.9], fail=True)            # failed: never ranked
    _run(prune, a["unsaved"], [0.1, 0.1, 0.1, 0.1])       # ended, but Ray's saved state still says RUNNING
    _run(prune, b, [0.01, 0.01, 0.01, 0.01])              # the only trial of its arm
    running = _Trial(stage, "running", "resnet18-v1")     # still running: never touched
    prune.on_trial_result(0, [], running, {"epoch": 1, "map50": 0.0})

    assert prune.prune() == 0  # no experiment state in storage yet: nothing is known to be saved
    assert all(_kept(t) for t in [*a.values(), b])

    write_experiment_state(stage, {**{k: "TERMINATED" for k in ("best", "tie", "worse", "stopped_high", "failed",
                                                                 "other_arm")},
                                   "unsaved": "RUNNING", "running": "RUNNING"})
    assert prune.prune() == 3
    assert {k for k, t in a.items() if _kept(t)} == {"best", "tie", "unsaved"}
    assert _kept(b) and _kept(running)
    assert (Path(a["worse"].path) / "result.json").exists()  # only checkpoint folders go

    write_experiment_state(stage, {"unsaved": "TERMINATED"})
    assert prune.prune() == 1 and not _kept(a["unsaved"])
    assert prune.deleted == 4


def test_a_cut_experiment_state_deletes_nothing(tmp_path):
    stage = tmp_path / "trials"
    prune = PruneEndedCheckpoints("map50", max_epochs=2, every_s=0)
    best, worse = _Trial(stage, "best", "resnet18-v1"), _Trial(stage, "worse", "resnet18-v1")
    _run(prune, best, [0.5, 0.6])
    _run(prune, worse, [0.1, 0.2])
    write_experiment_state(stage, {"best": "TERMINATED", "worse": "TERMINATED"})
    f = next(stage.glob("experiment_state-*.json"))
    f.write_text(f.read_text()[:20])  # caught mid-copy
    assert prune.prune() == 0 and _kept(worse)
