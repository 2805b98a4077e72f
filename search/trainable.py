"""The Ray Tune trainable: one trial = one `detector.engine.fit` run, reporting every epoch.

The decoded dataset arrives through `tune.with_parameters`, which puts it in Ray's object store
once; every trial on a node maps the same shared-memory copy (numpy arrays are zero-copy there).
Checkpoints go through Ray Tune's API every epoch, so ASHA pauses, node failures and resumes
continue from real checkpoints.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from ray import tune

from detector import config as C
from detector.engine import NonFiniteLossError, OutOfMemoryError, fit

CKPT_NAME = "checkpoint.pt"
# Fault injection for the tests of retries: with this set to k, every trial raises once, right after
# reporting epoch k (a marker file in its trial folder remembers that it did).
FAIL_ONCE_ENV = "SMALLOBJ_FAIL_ONCE_AFTER_EPOCH"


class InjectedFault(RuntimeError):
    """Raised by the fault-injection switch; never raised in normal runs."""


def train_trial(config: dict, data=None) -> None:
    """Ray Tune function trainable. `config` comes from search.searcher (arm, study, cfg, params)."""
    train, val = data
    config = config.get("trial", config)  # the confirmation stage grids over whole trial configs
    cfg = C.from_dict(config["cfg"], source=f"trial {tune.get_context().get_trial_id()}")
    work = Path(tempfile.mkdtemp(prefix="smallobj-trial-"))
    last_epoch = 0
    try:
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as d:
                shutil.copy(Path(d) / CKPT_NAME, work / CKPT_NAME)

        def on_epoch(metrics: dict, ckpt_path: Path) -> None:
            nonlocal last_epoch
            last_epoch = int(metrics["epoch"])
            with tempfile.TemporaryDirectory(prefix="smallobj-ckpt-") as d:
                os.link(ckpt_path, Path(d) / CKPT_NAME)  # same filesystem: no copy until Ray persists it
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            fail_at = os.environ.get(FAIL_ONCE_ENV)
            marker = Path(tune.get_context().get_trial_dir()) / ".fault-injected"
            if fail_at and last_epoch == int(fail_at) and not marker.exists():
                marker.touch()
                raise InjectedFault(f"{FAIL_ONCE_ENV}={fail_at}: injected failure after epoch {last_epoch}")

        fit(cfg, train, val, work, on_epoch=on_epoch, resume=restored is not None)
    except (NonFiniteLossError, OutOfMemoryError) as e:
        # Deterministic failures: retrying from the checkpoint would fail the same way, so the trial
        # ends now with its reason (the searcher tells Optuna FAIL) instead of raising into Ray's retries.
        tune.report({"fail_reason": f"{type(e).__name__}: {e}", "epoch": float(last_epoch),
                     "map50": math.nan})
    finally:
        shutil.rmtree(work, ignore_errors=True)
