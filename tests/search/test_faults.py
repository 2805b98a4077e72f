"""A search that survives what goes wrong on a real local Ray (num_cpus=2): the driver killed and
resumed (during the search and during the stages after it), a trial that raises and is retried from
its checkpoint, a non-finite loss that fails a trial at once, and the scratch folders dead workers
leave. Real training on the tiny images, except the stage resume (replayed curves: the queue's
business). (search.run's checks and a finished run's files: test_run.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from bench.synthetic import synthetic_recording
from search import run

from searchutil import (SearchProcess, assert_every_trial_once, kill_between_snapshots, live_config, reported_epochs,
                        result_rows as _rows, wait_until, write_space as _space)


@pytest.mark.slow
def test_driver_killed_then_resumed_loses_and_duplicates_nothing(tiny_data, tmp_path, monkeypatch):
    """SIGKILL the driver mid-search, then --resume: every trial once, epochs continuous, the
    searchers' budgets kept, and the Optuna studies agreeing with Ray's trials. The trials' scratch
    folders go to this test's own temporary folder (TMPDIR, inherited by Ray's workers; Ray's own
    session folder stays in /tmp), so what is left there is this test's doing alone."""
    import time

    space = _space(tmp_path, tiny_data, """
arms: {backbone: [resnet18], version: [v1, v2]}
params:
  lr: {type: float, low: 0.002, high: 0.03, log: true}
budget: {max_epochs: 2, grace_period: 1, reduction_factor: 2, trials_per_arm: 2, max_concurrent: 2}
""")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setenv("RAY_TMPDIR", "/tmp")
    monkeypatch.setattr(tempfile, "tempdir", None)  # this process asks TMPDIR again
    args = ["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "k", "--num-cpus", "2"]
    trials = tmp_path / "runs" / "k" / "trials"
    with SearchProcess(*args, log_dir=tmp_path, env=dict(os.environ)) as search:
        # Kill once some epochs are stored and trials are still to come.
        wait_until(lambda: sum(map(len, reported_epochs(trials).values())) >= 2, 240, "2 epochs were reported",
                   search.proc)
        kill_between_snapshots(search, trials)  # SIGKILL to the driver and the local Ray it started
    time.sleep(2)
    assert not (tmp_path / "runs" / "k" / "results.csv").exists()
    assert list(scratch.glob("smallobj-trial-*"))  # the killed trials' scratch folders, left behind

    assert run.main(args + ["--resume"]) == 0
    assert_every_trial_once(tmp_path / "runs" / "k", n_trials=4, max_epochs=2, repeats=True)
    # The scratch folders of the trials killed with the driver were swept by the resumed trials.
    assert not list(scratch.glob("smallobj-trial-*"))


def test_scratch_folders_of_dead_workers_are_removed(tmp_path):
    from search.trainable import WORK_PREFIX, remove_orphaned_work_dirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):
        (tmp_path / f"{WORK_PREFIX}{pid}-0123abcd-x1").mkdir()
        (tmp_path / f"{WORK_PREFIX}{pid}-0123abcd-x1" / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / f"{WORK_PREFIX}notapid").mkdir()
    assert remove_orphaned_work_dirs(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{WORK_PREFIX}{os.getpid()}-0123abcd-x1",
                                                          f"{WORK_PREFIX}notapid"]


def test_the_sweep_after_a_search_waits_for_its_own_trials_only(tmp_path):
    """search.run's sweep after Ray's shutdown waits (up to wait_s) for the live workers of its own
    Ray, whose folders carry its ray_tag, and not for another search's on the same machine."""
    import threading
    import time

    from search.trainable import WORK_PREFIX, remove_orphaned_work_dirs

    worker = subprocess.Popen(["sleep", "1.5"])  # a trial's worker that Ray's shutdown has not yet ended
    threading.Thread(target=worker.wait, daemon=True).start()  # reaped when it exits (no zombie)
    (tmp_path / f"{WORK_PREFIX}{worker.pid}-0123abcd-x1").mkdir()
    t0 = time.time()
    assert remove_orphaned_work_dirs(str(tmp_path), wait_s=10, wait_for="fedc9876") == 0  # another search's
    assert time.time() - t0 < 0.5 and len(list(tmp_path.iterdir())) == 1
    assert remove_orphaned_work_dirs(str(tmp_path), wait_s=10, wait_for="0123abcd") == 1  # its own: waited for
    assert 1.0 < time.time() - t0 < 5 and not list(tmp_path.iterdir())


def _runs_of_stage(trials_dir, stage: str) -> list[str]:
    """Folder names of the runs of `stage` in a run's trials folder (their config names the stage)."""
    return sorted(d.name for d in trials_dir.iterdir()
                  if d.is_dir() and (config := live_config(d)) is not None and config.get("stage", "search") == stage)


@pytest.mark.slow
def test_resume_during_the_stages_after_the_search_continues_them(tiny_data, tmp_path):
    """Killed while a baseline run trains (the later stages share the search's queue), then --resume:
    the runs already issued are continued, never issued a second time beside the first. (Trials
    replay synthetic curves; the resumed run replays the same ones.)"""
    space = _space(tmp_path, tiny_data, """
arms: {backbone: [resnet18]}
params:
  lr: {type: float, low: 0.005, high: 0.02, log: true}
budget: {max_epochs: 2, grace_period: 2, reduction_factor: 2, trials_per_arm: 2, max_concurrent: 2}
confirm: {top_k: 1, seeds: 2}
baseline: {lr: 0.01}
""")
    args = ["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "cf", "--num-cpus", "2"]
    curves = synthetic_recording(space, tmp_path / "curves", per_arm=6, command="test")
    run_dir = tmp_path / "runs" / "cf"
    trials = run_dir / "trials"
    # Replayed epochs of 2-4 s: time to see a baseline run's first epoch and kill before its last.
    with SearchProcess(*args, "--replay-curves", str(curves), "--time-scale", "0.1", log=tmp_path / "search.log") as search:
        wait_until(lambda: any(epochs for name, epochs in reported_epochs(trials).items()
                               if name in _runs_of_stage(trials, "baseline")), 400,
                   "a baseline run reported an epoch", search.proc)
        kill_between_snapshots(search, trials)
    assert search.proc.returncode == -9 and not (run_dir / "results.csv").exists()  # killed mid-run
    confirm_before = _runs_of_stage(trials, "confirm")
    assert run.main(args + ["--resume"]) == 0
    rows = _rows(run_dir)
    assert len([r for r in rows if r["stage"] == "search"]) == 2
    for stage in ("confirm", "baseline"):
        mine = [r for r in rows if r["stage"] == stage]
        assert len(mine) == 2 and sorted(r["seed"] for r in mine) == ["1000", "1001"], mine
        assert all(r["status"] == "finished" and r["epochs_run"] == "2" for r in mine)
        assert len(_runs_of_stage(trials, stage)) == 2  # one folder per run
    assert _runs_of_stage(trials, "confirm") == confirm_before
    assert all(r["lr"] == "0.01" for r in rows if r["stage"] == "baseline")


@pytest.mark.slow
def test_a_trial_that_raises_is_retried_from_its_checkpoint(tiny_data, tmp_path, monkeypatch):
    """A transient error (injected once after epoch 1, by a wrapper trainable from the tests) is retried
    by Ray from the epoch-1 checkpoint: the trial finishes, its epochs continue at 2 rather than
    starting over, and Optuna sees COMPLETE."""
    import faults
    from ray import cloudpickle

    from search import trainable

    cloudpickle.register_pickle_by_value(faults)  # the workers get the wrapper without importing tests/
    monkeypatch.setattr(trainable, "train_trial", faults.train_trial_failing_once)
    space = _space(tmp_path, tiny_data, """
arms: {backbone: [resnet18]}
params:
  lr: {type: float, low: 0.005, high: 0.01}
budget: {max_epochs: 3, grace_period: 1, reduction_factor: 2, trials_per_arm: 1}
""")
    assert run.main(["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "f", "--num-cpus", "2"]) == 0
    (row,) = _rows(tmp_path / "runs" / "f")
    assert row["status"] == "finished" and row["epochs_run"] == "3"
    trial_dir = next((tmp_path / "runs" / "f" / "trials").glob("resnet18*"))
    assert (trial_dir / ".fault-injected").exists()
    assert "InjectedFault: injected failure after epoch 1" in (trial_dir / "error.txt").read_text()
    epochs = [json.loads(x)["epoch"] for x in (trial_dir / "result.json").read_text().splitlines()]
    assert epochs == [1.0, 2.0, 3.0]  # resumed at epoch 2 from the checkpoint, not retrained from epoch 1
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "runs" / "f" / "optuna.journal")))
    (t,) = optuna.load_study(study_name="resnet18-v1-none-t5", storage=storage).trials
    assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3]


@pytest.mark.slow  # a whole search, like every other one here
def test_with_checkpoint_every_a_retried_trial_redoes_only_the_epochs_since_its_last_checkpoint(
        tiny_data, tmp_path, monkeypatch):
    """budget.checkpoint_every 2 over 3 epochs (rung at 2): checkpoints after epochs 2 and 3 only. The
    fault after epoch 1 finds no checkpoint, so Ray's retry starts over: one epoch (checkpoint_every - 1)
    is trained twice, and Ray keeps the checkpoints of epochs 2 and 3 only."""
    import faults
    from ray import cloudpickle

    from search import trainable

    cloudpickle.register_pickle_by_value(faults)
    monkeypatch.setattr(trainable, "train_trial", faults.train_trial_failing_once)
    space = _space(tmp_path, tiny_data, """
arms: {backbone: [resnet18]}
params:
  lr: {type: float, low: 0.005, high: 0.01}
budget: {max_epochs: 3, grace_period: 2, reduction_factor: 2, trials_per_arm: 1, checkpoint_every: 2}
""")
    assert run.main(["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "f", "--num-cpus", "2"]) == 0
    (row,) = _rows(tmp_path / "runs" / "f")
    assert row["status"] == "finished" and row["epochs_run"] == "3"
    trial_dir = next((tmp_path / "runs" / "f" / "trials").glob("resnet18*"))
    epochs = [json.loads(x)["epoch"] for x in (trial_dir / "result.json").read_text().splitlines()]
    assert epochs == [1.0, 1.0, 2.0, 3.0]  # epoch 1 lost with the failure (no checkpoint), then 1, 2, 3
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "runs" / "f" / "optuna.journal")))
    (t,) = optuna.load_study(study_name="resnet18-v1-none-t5", storage=storage).trials
    assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3]


@pytest.mark.slow
def test_nonfinite_trial_fails_at_once_with_its_reason_and_is_replaced(tiny_data, tmp_path):
    """Every lr of this range diverges: the trial fails in its first epoch, is told to TPE as
    infeasible (PRUNED with the constraint `failed`), and is replaced once (max_failed_per_arm 1); the
    replacement fails too, so the arm ends with no usable trial and the report says why."""
    from search import report

    space = _space(tmp_path, tiny_data, """
arms: {backbone: [resnet18]}
params:
  lr: {type: float, low: 1.0e+6, high: 2.0e+6}
budget: {max_epochs: 2, grace_period: 1, reduction_factor: 2, trials_per_arm: 1, max_failed_per_arm: 1}
""")
    text = space.read_text().replace("  warmup_epochs: 0.5", "  warmup_epochs: 0.0\n  clip_grad_norm: null")
    space.write_text(text)
    rc = run.main(["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "nan", "--num-cpus", "2"])
    assert rc == 0
    rows = _rows(tmp_path / "runs" / "nan")
    assert len(rows) == 2 and all(r["status"] == "failed" for r in rows)
    assert all(r["reason"].startswith("NonFiniteLossError: non-finite loss") for r in rows)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "runs" / "nan" / "optuna.journal")))
    trials = optuna.load_study(study_name="resnet18-v1-none-t5", storage=storage).trials
    assert len(trials) == 2 and all(t.state == TrialState.PRUNED and t.constraints == {"failed": 1.0}
                                    and "NonFiniteLossError" in t.user_attrs["fail_reason"] for t in trials)
    # Failed at once: one report (the failure), no retry from a checkpoint, no error file.
    for trial_dir in (tmp_path / "runs" / "nan" / "trials").glob("resnet18*"):
        assert len((trial_dir / "result.json").read_text().splitlines()) == 1
    report.write_report(tmp_path / "runs" / "nan", tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert ("**resnet18-v1-none-t5 has 0 usable trials of the 1 every arm gets**: 2 of its trials failed for their "
            "configuration, more than the 1 `budget.max_failed_per_arm`") in text
    assert "| trials run: usable (of them stopped by ASHA) / failed |" in text and "| 2: 0 (0) / 2 |" in text


@pytest.mark.slow  # a whole (scripted) search on Ray
def test_a_retried_trial_whose_re_run_epoch_differs_has_one_history_everywhere(tiny_data, tmp_path, monkeypatch):
    """faults.scripted_trial: trial 0 reports 0.3, then 0.9 at epoch 2 without a checkpoint, and
    fails; Ray's retry from epoch 1 reports 0.4 and 0.6 (its model holds those weights); trial 1
    reports 0.5, 0.6, 0.7. The epoch-2 report of 0.9 is gone with the weights that made it, so every
    reader must name trial 1 (0.7) the arm's best and give trial 0 its 0.6: results.csv, the value
    Optuna holds, the checkpoint pruner (which keeps the best's checkpoint), the progress table and
    the report. (A running max said 0.9 in three of them.)"""
    import faults
    from ray import cloudpickle

    from search import checkpoints, curve_trainable, progress, report
    from search.results import collect, ranked

    cloudpickle.register_pickle_by_value(faults)
    monkeypatch.setattr(curve_trainable, "replay_trial", faults.scripted_trial)
    seen = {}
    for cls, key in ((checkpoints.PruneEndedCheckpoints, "pruner"), (progress.ArmTable, "table")):
        def init(self, *a, _init=cls.__init__, _key=key, **kw):
            _init(self, *a, **kw)
            seen[_key] = self
        monkeypatch.setattr(cls, "__init__", init)
    space = _space(tmp_path, tiny_data, """
arms: {backbone: [resnet18]}
params:
  lr: {type: float, low: 0.005, high: 0.01}
budget: {max_epochs: 3, trials_per_arm: 2, max_concurrent: 1, stopping: none}
""")
    curves = synthetic_recording(space, tmp_path / "curves", per_arm=2, command="test")
    args = ["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "h", "--num-cpus", "2",
            "--replay-curves", str(curves), "--time-scale", "0"]
    assert run.main(args) == 0
    run_dir = tmp_path / "runs" / "h"
    arm = "resnet18-v1-none-t5"
    records = {r.trial_number: r for r in collect(run_dir, "map50", 3)}
    retried, other = records[0], records[1]
    assert [h["map50"] for h in retried.history] == [0.3, 0.4, 0.6] and (retried.best, retried.best_epoch) == (0.6, 3)
    assert ranked(list(records.values()), arm)[0] is other
    # Optuna: the COMPLETE value is the history's best; its intermediate value of epoch 2 is the first
    # report's (Optuna ignores a second report of a step).
    storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    study = optuna.load_study(study_name=arm, storage=storage)
    values = {t.number: t.value for t in study.trials}
    assert values == {0: 0.6, 1: 0.7} and study.best_trial.number == 1
    assert study.trials[0].intermediate_values[2] == 0.9
    # The table's arm best and the pruner's view: 0.7, trial 1's; trial 1 keeps a checkpoint.
    assert seen["table"].best[arm] == 0.7
    assert seen["pruner"]._trials[other.trial_id].history.best == 0.7  # kept in its memory: the arm's best
    assert list((run_dir / "trials" / f"{arm}_{other.trial_id}").glob("checkpoint_*"))
    assert not list((run_dir / "trials" / f"{arm}_{retried.trial_id}").glob("checkpoint_*"))  # outranked: emptied
    res = report.write_report(run_dir, tmp_path / "report")
    (row,) = res["rows"]
    assert row["best_trial"] == other.trial_id and row["best"] == 0.7
