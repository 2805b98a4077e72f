"""search.checkpoints.PruneEndedCheckpoints without Ray's loop: fake trials whose folders are real,
and an experiment state written the way Ray writes it (searchutil.write_experiment_state)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.fs

from detector.engine import MODEL_FILE
from search.checkpoints import PruneEndedCheckpoints
from search.trainable import CKPT_NAME

from searchutil import write_experiment_state

EPOCHS = 4


class _Storage:
    storage_filesystem = pyarrow.fs.LocalFileSystem()


class _Trial:
    """What the pruner reads of a Ray trial: id, config, storage, folder and its last result."""

    def __init__(self, stage_dir: Path, trial_id: str, arm: str, stage: str = "search", prior_max: float | None = None):
        self.trial_id, self.config, self.storage = trial_id, {"arm": arm, "stage": stage}, _Storage()
        # Ray's running max of each metric, restored with a resumed trial's state.
        self.metric_analysis = {} if prior_max is None else {"map50": {"max": prior_max}}
        self.path = str(stage_dir / f"{arm}_{trial_id}")
        self.last_result: dict = {}
        Path(self.path).mkdir(parents=True)
        (Path(self.path) / "result.json").write_text("")

    def checkpoints(self) -> list[int]:
        return sorted(int(p.name.split("_")[1]) for p in Path(self.path).glob("checkpoint_*"))

    def files(self, number: int) -> list[str]:
        return sorted(p.name for p in (Path(self.path) / f"checkpoint_{number:06d}").iterdir())


def _checkpoint(trial, number: int) -> None:
    """A checkpoint folder as search.trainable hands it to Ray: the engine's two files."""
    d = Path(trial.path) / f"checkpoint_{number:06d}"
    d.mkdir()
    for name in (CKPT_NAME, MODEL_FILE):
        (d / name).write_bytes(b"weights")


def _report(prune, trial, result: dict) -> None:
    """A result as Ray's loop hands it on: the trial's last result, its stored result.json, the pruner."""
    trial.last_result = result
    with open(Path(trial.path) / "result.json", "a") as f:
        f.write(json.dumps(result) + "\n")
    prune.on_trial_result(0, [], trial, result)


def _run(prune, trial, values, fail=False, end=True, first_epoch=1, checkpoint=True):
    """Report `values` epoch by epoch from `first_epoch`, each with its checkpoint folder (numbered
    from 0, as Ray does) unless not `checkpoint`."""
    for epoch, v in enumerate(values, first_epoch):
        if checkpoint:
            _checkpoint(trial, epoch - 1)
        _report(prune, trial, {"epoch": epoch, "map50": v})
    if fail:
        _report(prune, trial, {"epoch": len(values), "map50": math.nan, "fail_reason": "nan loss"})
    if end:
        prune.on_trial_complete(0, [], trial)


def test_only_what_rays_saved_state_no_longer_needs_is_deleted(tmp_path):
    stage = tmp_path / "trials"
    prune = PruneEndedCheckpoints("map50", max_epochs=EPOCHS, every_s=0)
    a = {k: _Trial(stage, k, "resnet18-v1") for k in ("best", "tie", "worse", "stopped_high", "failed", "unsaved")}
    b = _Trial(stage, "other_arm", "resnet34-v1")
    running = _Trial(stage, "running", "resnet18-v1")
    _run(prune, a["best"], [0.1, 0.3, 0.4, 0.5])          # finished, the arm's best
    _run(prune, a["tie"], [0.2, 0.5, 0.5, 0.5])           # finished, tied with it: kept (ties are all kept)
    _run(prune, a["worse"], [0.1, 0.2, 0.3, 0.4])         # finished below it
    _run(prune, a["stopped_high"], [0.6, 0.7])            # stopped by ASHA: ranks after every finished trial
    _run(prune, a["failed"], [0.9], fail=True)            # failed: never ranked
    _run(prune, a["unsaved"], [0.1, 0.1, 0.1, 0.1])       # ended, but Ray's saved state still says RUNNING at epoch 2
    _run(prune, b, [0.01, 0.01, 0.01, 0.01])              # the only trial of its arm
    _run(prune, running, [0.0, 0.0, 0.0], end=False)      # still running; Ray saved it at its 2nd checkpoint
    errored = _Trial(stage, "errored", "resnet18-v1")
    _run(prune, errored, [0.9, 0.9], end=False)           # its worker died: Ray retries it from its newest

    assert prune.prune() == 0  # no experiment state in storage yet: nothing is known to be saved
    ended = ("best", "tie", "worse", "stopped_high", "failed")
    write_experiment_state(stage, {**{k: "TERMINATED" for k in ended}, "other_arm": "TERMINATED",
                                   "unsaved": "RUNNING", "running": "RUNNING", "errored": "ERROR"},
                           checkpoints={**{k: [2, 3] for k in ended}, "other_arm": [3], "unsaved": [1, 0],
                                        "running": [1], "errored": [1]})
    prune.prune()
    # Outranked (or never ranked) and saved as ended: every checkpoint gone, the trial's other files kept.
    assert a["worse"].checkpoints() == a["stopped_high"].checkpoints() == a["failed"].checkpoints() == []
    assert (Path(a["worse"].path) / "result.json").exists()
    # Each arm's best and a tie keep their newest, and of it the validation-best weights only
    # (latency.py times them, export ships them): nothing resumes an ended trial.
    assert a["best"].checkpoints() == a["tie"].checkpoints() == b.checkpoints() == [3]
    assert a["best"].files(3) == a["tie"].files(3) == b.files(3) == [MODEL_FILE]
    # A resumed driver would restart these from their saved newest: it and everything after it stay, whole.
    assert a["unsaved"].checkpoints() == [1, 2, 3] and running.checkpoints() == [1, 2]
    assert a["unsaved"].files(1) == running.files(1) == running.files(2) == sorted([CKPT_NAME, MODEL_FILE])
    assert errored.checkpoints() == [1] and errored.files(1) == sorted([CKPT_NAME, MODEL_FILE])

    write_experiment_state(stage, {"best": "TERMINATED", "unsaved": "TERMINATED", "running": "RUNNING"},
                           checkpoints={"best": [3], "unsaved": [3], "running": [2]})
    prune.prune()
    assert a["unsaved"].checkpoints() == [] and running.checkpoints() == [2] and a["best"].checkpoints() == [3]
    assert prune.deleted == 28 - 5  # every checkpoint folder written but the five still there


def test_a_beaten_best_loses_its_checkpoints_and_a_cut_state_deletes_nothing(tmp_path):
    stage = tmp_path / "trials"
    prune = PruneEndedCheckpoints("map50", max_epochs=2, every_s=0)
    first, second = _Trial(stage, "first", "resnet18-v1"), _Trial(stage, "second", "resnet18-v1")
    _run(prune, first, [0.1, 0.2])
    write_experiment_state(stage, {"first": "TERMINATED"}, checkpoints={"first": [1]})
    prune.prune()
    assert first.checkpoints() == [1]  # the arm's best so far
    _run(prune, second, [0.5, 0.6])
    write_experiment_state(stage, {"first": "TERMINATED", "second": "TERMINATED"},
                           checkpoints={"first": [1], "second": [1]})
    f = next(stage.glob("experiment_state-*.json"))
    f.write_text(f.read_text()[:40])  # caught mid-copy
    assert prune.prune() == 0 and first.checkpoints() == [1] and second.checkpoints() == [0, 1]
    write_experiment_state(stage, {"first": "TERMINATED", "second": "TERMINATED"},
                           checkpoints={"first": [1], "second": [1]})
    prune.prune()
    assert first.checkpoints() == [] and second.checkpoints() == [1]


def test_a_state_without_the_checkpoint_list_keeps_every_checkpoint_of_a_running_trial(tmp_path):
    stage = tmp_path / "trials"
    prune = PruneEndedCheckpoints("map50", max_epochs=4, every_s=0)
    running = _Trial(stage, "running", "resnet18-v1")
    _run(prune, running, [0.1, 0.2, 0.3], end=False)
    write_experiment_state(stage, {"running": "RUNNING"})  # no checkpoint manager where Ray 2.60 has it
    assert prune.prune() == 0 and running.checkpoints() == [0, 1, 2]


def test_a_resumed_trial_keeps_its_best_before_the_resume_and_later_stage_runs_are_never_emptied(tmp_path):
    """A trial resumed from a checkpoint reports only its later epochs to the new driver; its best
    before them (its stored results, or, when those cannot be read, Ray's restored running max) still
    counts, so the arm's true best is not emptied for a trial that only looks better. A confirmation
    run, however it scores, keeps its newest."""
    stage = tmp_path / "trials"
    for unreadable in (False, True):
        prune = PruneEndedCheckpoints("map50", max_epochs=EPOCHS, every_s=0)
        resumed = _Trial(stage / str(unreadable), "resumed", "resnet18-v1", prior_max=0.8)
        other = _Trial(stage / str(unreadable), "other", "resnet18-v1")
        confirm = _Trial(stage / str(unreadable), "confirm", "resnet18-v1", stage="confirm")
        before = [{"epoch": 1, "map50": 0.3}, {"epoch": 2, "map50": 0.8}]  # reached 0.8 at epoch 2, before the kill
        (Path(resumed.path) / "result.json").write_text("" if unreadable else "".join(json.dumps(r) + "\n" for r in before))
        for epoch in (1, 2):
            _checkpoint(resumed, epoch - 1)
        _run(prune, resumed, [0.5, 0.6], first_epoch=3)  # what the resumed driver sees
        _run(prune, other, [0.3, 0.5, 0.6, 0.7])
        _run(prune, confirm, [0.1, 0.1, 0.1, 0.1])
        write_experiment_state(stage / str(unreadable), {"resumed": "TERMINATED", "other": "TERMINATED",
                                                         "confirm": "TERMINATED"},
                               checkpoints={"resumed": [3], "other": [3], "confirm": [3]})
        prune.prune()
        assert resumed.checkpoints() == [3] and other.checkpoints() == [] and confirm.checkpoints() == [3]
        assert confirm.files(3) == [MODEL_FILE]


def test_a_re_run_epoch_replaces_the_report_it_repeats(tmp_path):
    """A trial retried from its epoch-1 checkpoint reports epochs 2 and 3 again, lower than the first
    time (on a GPU a re-run epoch is not bit-identical): its best is the re-run's (0.6, what its
    kept model.pt holds), so the other trial (0.7) is the arm's best and keeps its checkpoint, and the
    retried one loses its own. A running max (0.9, the lost epoch 2) deleted the wrong one."""
    stage = tmp_path / "trials"
    prune = PruneEndedCheckpoints("map50", max_epochs=3, every_s=0)
    retried, other = _Trial(stage, "retried", "resnet18-v1"), _Trial(stage, "other", "resnet18-v1")
    _run(prune, retried, [0.3], end=False)
    _run(prune, retried, [0.9, 0.5], first_epoch=2, checkpoint=False, end=False)  # then it fails; no checkpoint
    _run(prune, retried, [0.4, 0.6], first_epoch=2)  # the retry, from checkpoint 0 (epoch 1)
    _run(prune, other, [0.5, 0.6, 0.7])
    write_experiment_state(stage, {"retried": "TERMINATED", "other": "TERMINATED"},
                           checkpoints={"retried": [2], "other": [2]})
    prune.prune()
    assert other.checkpoints() == [2] and retried.checkpoints() == []
