"""Wrappers around search.trainable.train_trial, used from the tests only, never in production: one
raises once, right after a trial reports a given epoch (a fault); one records which images a trial
was handed.

search.run builds its trainable from `search.trainable.train_trial` when it starts; a test puts
a wrapper there (monkeypatch), and Ray ships it to the trial workers. This module is
pickled by value (`ray.cloudpickle.register_pickle_by_value`), so the workers need not import it."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ray import tune

from search import trainable

FAIL_AFTER_EPOCH = 1


class InjectedFault(RuntimeError):
    """Raised once per trial by `train_trial_failing_once`."""


def train_trial_failing_once(config: dict, data, **kw) -> None:
    """`train_trial`, raising InjectedFault right after the trial reports epoch FAIL_AFTER_EPOCH (with
    its checkpoint) the first time; a marker file in the trial folder remembers that it did, so Ray's
    retry from that checkpoint runs normally."""
    marker = Path(tune.get_context().get_trial_dir()) / ".fault-injected"
    real_fit = trainable.fit

    def fit(cfg, train, val, out_dir, *, on_epoch, **kw):
        def on_epoch_then_fail(metrics, ckpt_path):
            on_epoch(metrics, ckpt_path)  # reported, with its checkpoint
            if int(metrics["epoch"]) == FAIL_AFTER_EPOCH and not marker.exists():
                marker.touch()
                raise InjectedFault(f"injected failure after epoch {FAIL_AFTER_EPOCH}")

        return real_fit(cfg, train, val, out_dir, on_epoch=on_epoch_then_fail, **kw)

    trainable.fit = fit  # in this worker process only, for this trial
    try:
        trainable.train_trial(config, data, **kw)
    finally:
        trainable.fit = real_fit


SEEN_DIR_ENV = "SMALLOBJ_TEST_SEEN_DIR"  # set by the test before Ray starts: its workers inherit it


def train_trial_recording_images(config: dict, data, **trial_kw) -> None:
    """`train_trial`, writing $SMALLOBJ_TEST_SEEN_DIR/<trial id>.json: the image ids of every dataset
    its training (`detector.engine.fit`) was given ({"train": [...], "val": [...], "test": [...] or
    absent}). Every trial is handed the object-store reference of the test images; what matters is
    whether its training ever gets them."""
    fit = trainable.fit

    def recording_fit(cfg, train, val, work, test=None, **kw):
        seen = {name: list(map(int, ds.image_ids)) for name, ds in (("train", train), ("val", val), ("test", test))
                if ds is not None}
        folder = Path(os.environ[SEEN_DIR_ENV])
        (folder / f"{tune.get_context().get_trial_id()}.json").write_text(json.dumps(seen))
        return fit(cfg, train, val, work, test=test, **kw)

    trainable.fit = recording_fit
    try:
        trainable.train_trial(config, data, **trial_kw)
    finally:
        trainable.fit = fit
