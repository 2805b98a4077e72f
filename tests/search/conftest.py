"""Fixtures for every search test."""
from __future__ import annotations

import shutil

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
