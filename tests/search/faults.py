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


# A trial whose re-run epoch differs from its first run (search.results.TrialHistory's case): the
# trial its study asked for first reports epoch 1 with a checkpoint, epoch 2 without one, and fails;
# Ray's retry restarts from epoch 1's checkpoint and reports epochs 2 and 3 again, lower (on a GPU a
# re-run epoch is not bit-identical). Every other trial reports OTHER_VALUES. Used in place of
# search.curve_trainable.replay_trial (a --replay-curves search), so nothing trains.
FIRST_RUN = {1: 0.3, 2: 0.9}
RE_RUN = {2: 0.4, 3: 0.6}
OTHER_VALUES = {1: 0.5, 2: 0.6, 3: 0.7}


def scripted_trial(config: dict, data=(), curves_dir: str = "", time_scale: float = 1.0) -> None:
    import tempfile

    marker = Path(tune.get_context().get_trial_dir()) / ".fault-injected"
    retried = config.get("trial_number") == 0
    start = 1
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            start = json.loads((Path(d) / "epoch.json").read_text())["epoch"] + 1
    values = OTHER_VALUES if not retried else (RE_RUN if marker.exists() else FIRST_RUN)
    metric = config["cfg"]["metric"]
    for epoch in range(start, int(config["cfg"]["epochs"]) + 1):
        result = {"epoch": float(epoch), metric: values[epoch]}
        if retried and not marker.exists() and epoch == 2:
            tune.report(result)  # no checkpoint: what a retry redoes
            marker.touch()
            raise InjectedFault("injected failure after epoch 2, whose checkpoint was never saved")
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "epoch.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
