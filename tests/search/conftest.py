"""Fixtures for every search test, and the one real search that several test files read."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray


@pytest.fixture(autouse=True)
def _drop_checkpoints_after_each_test(tmp_path):
    """A tiny search still writes a model and optimizer checkpoint per trial (~230 MB for
    resnet18 with SGD momentum): removed once the test is over, so that a run of the suite needs
    a few GB of disk, not tens. (Module-scoped runs keep theirs until the session ends.)"""
    yield
    for d in sorted(tmp_path.rglob("checkpoint_*"), reverse=True):
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left_behind():
    """Every search test module shuts Ray down when it ends, whether its runs started Ray or not."""
    yield
    ray.shutdown()


# The first three lines continue the tiny `fixed:` block that write_space starts with.
STUDY_SPACE = """
  test_fraction: 0.2
  val_fraction: 0.3
  split_seed: 4
arms: {backbone: [resnet18], version: [v1, v2], weights: [none]}
params:
  lr: {type: float, low: 0.002, high: 0.03, log: true}
  optimizer: {type: categorical, choices: [sgd, adamw]}
  momentum: {type: float, low: 0.8, high: 0.95, when: {optimizer: sgd}}
budget: {max_epochs: 2, grace_period: 1, reduction_factor: 2, trials_per_arm: 2, max_concurrent: 2}
confirm: {top_k: 1, seeds: 2}
baseline: {lr: 0.01, optimizer: sgd, momentum: 0.9}
resources: {cpu: 1}
"""


@dataclass(frozen=True)
class StudyRun:
    """The finished run `study_run` made, and what the tests need to read it."""
    run_dir: Path         # STORAGE/study
    space: object         # its search.space.Space
    records: list         # search.results.collect of the run
    data: Path            # the tiny COCO file it searched on
    folder: Path          # the fixture's folder (space file, run, MLflow database, images seen)
    mlflow_uri: str
    seen_dir: Path        # faults.train_trial_recording_images' files, one per run


@pytest.fixture(scope="session")
def study_run(tiny_data, tmp_path_factory) -> StudyRun:
    """The one real search of the suite that many tests read (test_run, test_study, test_trackers;
    tests/conftest.py keeps their files on one xdist worker): real training on the tiny images, two
    arms of two trials with ASHA's rung at epoch 1, a conditional parameter, held-out test images,
    a confirmation stage (top 1 x 2 seeds) and a baseline, every tracker (MLflow, W&B offline,
    TensorBoard) with planted credentials, and every run's training recording which images it was
    handed (faults.train_trial_recording_images). Tests read it; the ones that change a run copy it."""
    import faults
    from ray import cloudpickle

    from search import run, trainable
    from search.results import collect
    from search.space import load_space
    from searchutil import TRACKER_ENV, write_space

    tmp = tmp_path_factory.mktemp("study")
    space = write_space(tmp, tiny_data, STUDY_SPACE)
    seen = tmp / "seen"
    seen.mkdir()
    cloudpickle.register_pickle_by_value(faults)  # the workers get the wrapper without importing tests/
    env = {**TRACKER_ENV, faults.SEEN_DIR_ENV: str(seen)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # before Ray starts: its workers and the W&B logging actors inherit them
    real = trainable.train_trial
    trainable.train_trial = faults.train_trial_recording_images
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    try:
        rc = run.main(["--space", str(space), "--storage", str(tmp / "runs"), "--name", "study", "--num-cpus", "2",
                       "--log", f"mlflow={uri}", "--log", "wandb=smallobj-test", "--log", "tensorboard"])
    finally:
        trainable.train_trial = real
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert rc == 0
    run_dir = tmp / "runs" / "study"
    sp = load_space(space)
    return StudyRun(run_dir, sp, collect(run_dir, sp.metric, sp.max_epochs), tiny_data, tmp, uri, seen)
