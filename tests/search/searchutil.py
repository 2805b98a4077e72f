"""Helpers shared by the search tests: tiny space files and the rows of a run's results.csv.

Imported by name (`from searchutil import ...`): pytest puts this folder on sys.path."""
from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[2]  # the repository

# Fixed training fields that keep a CPU trial to a few seconds (see tests/conftest.py's TINY).
TINY_FIXED = """
fixed:
  min_size: 64
  max_size: 64
  anchor_sizes: [8, 16, 32, 64, 128]
  box_batch_size_per_image: 16
  rpn_batch_size_per_image: 32
  rpn_pre_nms_top_n_train: 200
  rpn_post_nms_top_n_train: 100
  rpn_pre_nms_top_n_test: 200
  rpn_post_nms_top_n_test: 100
  batch_size: 2
  num_workers: 0
  warmup_epochs: 0.5
"""


# Credentials as the trackers' own clients read them, planted before the study run starts so that a
# copy of them anywhere in its folder is found (test_trackers.py). 40 hex digits: a W&B key's shape.
SECRET = "5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa5ec7e7aa"
TRACKER_ENV = {"WANDB_API_KEY": SECRET, "WANDB_MODE": "offline", "MLFLOW_TRACKING_TOKEN": SECRET,
               "WANDB_SILENT": "true"}


def write_space(folder: Path, data, body: str, name: str = "s.yaml") -> Path:
    """A space file on `data` with the tiny fixed fields and `body` (arms, params, budget...)."""
    p = folder / name
    p.write_text(f"data: {data}\n{TINY_FIXED}\n{body}")
    return p


def write_experiment_state(stage_dir: Path, statuses: dict[str, str], checkpoints: dict | None = None) -> None:
    """A Ray Tune experiment state holding only what search.results.ray_statuses reads:
    {trial id: status} (PENDING, RUNNING, PAUSED, TERMINATED, ERROR), and, for the trials in
    `checkpoints` ({trial id: [checkpoint numbers]}), the checkpoint folders its trial checkpoint
    manager lists, pickled and hex-encoded where Ray 2.60 puts them (search.compat.saved_checkpoints)."""
    def run_metadata(t: str) -> str:
        if t not in (checkpoints or {}):
            return "{}"
        paths = [str(stage_dir / f"x_{t}" / f"checkpoint_{n:06d}") for n in checkpoints[t]]
        return json.dumps({"checkpoint_manager": {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(paths).hex()}})

    data = [[json.dumps({"trial_id": t, "status": s}), run_metadata(t)] for t, s in statuses.items()]
    (stage_dir / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": data}))


def result_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "results.csv") as f:
        return list(csv.DictReader(f))


def assert_every_trial_once(run_dir: Path, n_trials: int, max_epochs: int, repeats: bool = False) -> list[dict]:
    """Nothing lost, nothing doubled: `n_trials` distinct trials, each finished or stopped by ASHA,
    each with epochs 1..N reported without gap (and without repeat unless `repeats`: after the driver
    is killed, an epoch reported after its last snapshot of the experiment is trained again), and
    every arm's Optuna study holding exactly its arm's trials in the state that matches Ray's
    (finished = COMPLETE, stopped = PRUNED)."""
    rows = [r for r in result_rows(run_dir) if r["stage"] == "search"]
    assert len(rows) == n_trials and len({r["trial_id"] for r in rows}) == n_trials, rows
    for r in rows:
        assert r["status"] in ("finished", "stopped"), r
        assert r["status"] != "finished" or r["epochs_run"] == str(max_epochs), r
        assert r["status"] != "stopped" or int(r["epochs_run"]) < max_epochs, r
    configs = [(r["arm"], r["lr"], r["momentum"], r["weight_decay"], r["optimizer"]) for r in rows]
    assert len(set(configs)) == len(configs), configs  # no configuration proposed twice
    for t in json.loads((run_dir / "trials.json").read_text()):
        lines = [json.loads(x) for x in open(Path(t["path"]) / "result.json").read().splitlines()]
        epochs = [int(x["epoch"]) for x in lines if "epoch" in x]
        assert sorted(set(epochs)) == list(range(1, t["epochs_run"] + 1)), (t["trial_id"], epochs)  # no gap
        assert repeats or len(epochs) == len(set(epochs)), (t["trial_id"], epochs)
    storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    by_id = {r["trial_id"]: r for r in rows}
    seen = set()
    for arm in sorted({r["arm"] for r in rows}):
        study = optuna.load_study(study_name=arm, storage=storage)
        for t in study.trials:
            row = by_id[t.user_attrs["ray_trial_id"]]
            assert row["arm"] == arm
            expected = TrialState.COMPLETE if row["status"] == "finished" else TrialState.PRUNED
            assert t.state == expected, (row, t.state)
            assert sorted(t.intermediate_values) == list(range(1, int(row["epochs_run"]) + 1)), (row, t.intermediate_values)
            seen.add(row["trial_id"])
    assert seen == set(by_id)  # every Ray trial is in its study exactly once
    return rows


def reported_epochs(trials_dir: Path) -> dict[str, list[int]]:
    """Epochs each trial has reported so far, by trial folder name (read while a search runs)."""
    out = {}
    for p in trials_dir.glob("*/result.json"):
        lines = [json.loads(x) for x in p.read_text().splitlines() if x.strip().endswith("}")]
        out[p.parent.name] = [int(x["epoch"]) for x in lines if "epoch" in x]
    return out


def checkpoints_in_folder(record) -> list[str]:
    """The checkpoint folders a trial of a local run holds, by name."""
    return sorted(p.name for p in Path(record.path).glob("checkpoint_*"))


def assert_only_each_arms_best_keeps_checkpoints(records, checkpoints_of=checkpoints_in_folder) -> None:
    """search.checkpoints: of the search trials, each arm's best (and any tied with it) keeps one
    checkpoint, its last epoch's, for latency.py; the others none; every confirmation run keeps
    its own (the detection figures). `checkpoints_of(record)` lists a trial's checkpoint folder names
    wherever the run's storage is."""
    from search.results import rank_key, ranked

    for arm in {r.arm for r in records}:
        order = ranked(records, arm)
        best = rank_key(order[0].status, order[0].best)
        for r in (r for r in records if r.arm == arm and r.stage == "search"):
            kept = [f"checkpoint_{r.epochs - 1:06d}"] if rank_key(r.status, r.best) == best else []
            assert checkpoints_of(r) == kept, (r.trial_id, r.status, r.best, best)
    assert all(checkpoints_of(r) for r in records if r.stage == "confirm")


def confirming_searcher(tmp_path: Path, trials_per_arm: int):
    """(space, run folder, ArmSearcher) for one resnet18 arm of `trials_per_arm` 2-epoch trials and a
    confirmation stage of one configuration x one seed; the run folder's `trials` exists."""
    from search.searcher import ArmSearcher
    from search.space import load_space

    p = Path(tmp_path) / "s.yaml"
    p.write_text("arms: {backbone: [resnet18]}\nparams:\n  lr: {type: float, low: 0.001, high: 0.01}\n"
                 f"budget: {{max_epochs: 2, grace_period: 1, reduction_factor: 2, trials_per_arm: {trials_per_arm}}}\n"
                 "confirm: {top_k: 1, seeds: 1}\n")
    space = load_space(p)
    run_dir = Path(tmp_path) / "run"
    (run_dir / "trials").mkdir(parents=True)
    return space, run_dir, ArmSearcher(space, run_dir / "optuna.journal", stages=space.eval_stages())


def live_config(trial_dir: Path) -> dict | None:
    """A trial's params.json read while its search runs, or None when it cannot be read yet: Ray
    rewrites every file of its staging folder in place at each experiment snapshot, so a poll can
    find params.json empty or cut (seen in CI). Readers of a finished run use search.results."""
    try:
        return json.loads((Path(trial_dir) / "params.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def wait_until(condition, timeout: float, what: str, proc=None) -> None:
    """Poll `condition()` every 0.3 s; fail naming `what` on timeout or if `proc` ends first."""
    deadline = time.time() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the search ended before {what}"
        assert time.time() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.3)


def kill_between_snapshots(search: "SearchProcess", stage_dir: Path, quiet_s: float = 0.5, timeout: float = 60) -> None:
    """SIGKILL the search once Ray's experiment state in `stage_dir` is complete and no file under
    `stage_dir` has been written for `quiet_s`. At every experiment snapshot Ray copies its staging
    folder over the stage folder; its own copy rewrote each file in place, and a kill inside it
    left empty or cut files (an empty state no resume can use, which search.run refuses naming the
    file; empty params.json and result.json files, seen with fast trials). Since
    search.compat.atomic_local_uploads each file is replaced whole, and the kill inside a copy has
    its own test (test_replayed_kills, with tests/search/kill_in_copy.py); the tests that use this
    one are about other moments.
    Checkpoint folders do not count: trials write those straight into `stage_dir` at every epoch (with
    16 trials, one every few tens of milliseconds), and Ray registers a checkpoint only once it is
    written whole, so a kill inside one loses nothing."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = sorted(Path(stage_dir).glob("experiment_state-*.json"))
        try:
            newest = max((os.stat(os.path.join(folder, f)).st_mtime for folder, dirs, files in os.walk(stage_dir)
                          if not os.path.basename(folder).startswith("checkpoint_") for f in files), default=0.0)
            if states and time.time() - newest >= quiet_s:
                json.loads(states[-1].read_text())
                break
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    search.kill()


class SearchProcess:
    """`python -m search.run ARGS` as its own process group, output in `log` (default: the next free
    `search-N.log` in `log_dir`); killed with its group (the driver and any Ray it started) when the
    `with` block ends, so a failed test leaves nothing running behind it."""

    def __init__(self, *args: str, log: Path | None = None, log_dir: Path | None = None, env: dict | None = None,
                 launcher: tuple[str, ...] = ("-m", "search.run")):
        """`launcher`: what runs search.run with ARGS (a test's wrapper script and its own arguments)."""
        if log is None:
            log = Path(log_dir) / f"search-{len(list(Path(log_dir).glob('search-*.log')))}.log"
        self.log = Path(log)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, *launcher, *args], cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def wait(self, timeout: float) -> int:
        """The exit status; fails with the end of the output if it takes longer than `timeout`."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"search.run still running after {timeout:.0f} s:\n{self.output[-3000:]}")

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


# Replayed searches (search.curve_trainable) for the tests of kills, resumes and the stage queue.
REPLAY_SPACE = """
name: replayed
arms: {backbone: [resnet18], version: [v1, v2]}
params:
  lr: {type: float, low: 0.0005, high: 0.03, log: true}
  optimizer: {type: categorical, choices: [sgd, adamw]}
budget: {max_epochs: 6, grace_period: 2, reduction_factor: 2, trials_per_arm: TPA, max_concurrent: 4}
resources: {cpu: 1, gpu: 0}
confirm: {top_k: 1, seeds: 2}
"""


def replay_setup(tmp_path, trials_per_arm: int, stopping: str = "asha"):
    """(space file, synthetic recording) of REPLAY_SPACE: two resnet18 arms of `trials_per_arm`
    6-epoch trials, ASHA (or `stopping`), confirmation 1 x 2 seeds."""
    from bench.synthetic import synthetic_recording

    space = tmp_path / "space.yaml"
    space.write_text(REPLAY_SPACE.replace("TPA", str(trials_per_arm)).replace("max_concurrent: 4}",
                                                                         f"max_concurrent: 4, stopping: {stopping}}}"))
    curves = synthetic_recording(space, tmp_path / "curves", per_arm=6, command="test")
    return space, curves


def replayed_search(tmp_path, space, curves, time_scale: float = 0.01, env=None):
    """search.run on 4 CPUs, its trials replaying `curves` (run folder tmp_path/runs/r)."""
    return SearchProcess("--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "r", "--num-cpus", "4",
                         "--replay-curves", str(curves), "--time-scale", str(time_scale), log_dir=tmp_path, env=env)


def replay_flags(space: Path, args, time_scale: float) -> list[str]:
    """search.run's `--replay-curves DIR --time-scale T` for `space`, its synthetic recording written
    beside it once (`curves/`); none when `args` resume a run (its run.json names its curves)."""
    from bench.synthetic import synthetic_recording

    if "--resume" in args:
        return []
    curves = Path(space).parent / "curves"
    if not curves.exists():
        synthetic_recording(space, curves, per_arm=6, command="test")
    return ["--replay-curves", str(curves), "--time-scale", str(time_scale)]
