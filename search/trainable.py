"""The Ray Tune trainable: one trial = one `detector.engine.fit` run, reporting every epoch.

search.run puts the decoded dataset in Ray's object store once (`ray.put`) and hands its reference
to every trial through `tune.with_parameters`; the trials on a node map that node's one
shared-memory copy (numpy arrays are zero-copy there; bench/memory.py measures it).
Checkpoints go through Ray Tune's API on the epochs `budget.checkpoint_every` and the ASHA rungs
choose (Space.checkpoint_epochs; every epoch by default), so ASHA stops, node failures and resumes
continue from real checkpoints. Each checkpoint holds the engine's `checkpoint.pt` (the latest
epoch, with the optimizer: what a resume continues from) and `model.pt` (the weights of the epoch
validation chose so far, model only: what latency, the detection figures and export read once the
trial has ended; search.checkpoints then deletes the trial's `checkpoint.pt`). The two travel
together, so after any resume the kept best weights belong to the history Ray restored.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from ray import tune

from detector import config as C
from detector.engine import MODEL_FILE, NonFiniteLossError, OutOfMemoryError, fit, release_gpu_memory
from search.stages import scores_test

CKPT_NAME = "checkpoint.pt"
# The trial's scratch folder on its node: WORK_PREFIX + the worker's pid + "-" + ray_tag() + "-...".
WORK_PREFIX = "smallobj-trial-"


def ray_tag() -> str:
    """Which Ray a process belongs to, as 8 hex digits of its cluster's GCS address (unique among
    the Rays running on one machine: two searches side by side each start their own)."""
    import hashlib

    import ray

    return hashlib.sha1(ray.get_runtime_context().gcs_address.encode()).hexdigest()[:8]


def remove_orphaned_work_dirs(tmp: str | None = None, wait_s: float = 0.0, wait_for: str | None = None) -> int:
    """Delete scratch folders left by trials whose worker process no longer exists.

    A trial removes its folder when it ends, but not when its worker is killed (a driver killed
    with SIGKILL takes its workers with it; a node loses a trial's process): each such folder
    holds a model and optimizer checkpoint, hundreds of MB; so do the trials still running when Ray
    shuts its workers down at the end of a search. Every trial sweeps its node's leftovers before it
    starts, and search.run sweeps its own machine after Ray has shut down, waiting up to `wait_s`
    for the workers of its own Ray (`wait_for`: its ray_tag) to be gone, never for the live trials
    of another search on the same machine. The pid in the name tells whose a folder was."""
    removed, deadline = 0, time.time() + wait_s
    while True:
        alive = 0
        for d in Path(tmp or tempfile.gettempdir()).glob(f"{WORK_PREFIX}*-*"):
            try:
                pid, rest = d.name[len(WORK_PREFIX):].split("-", 1)
                os.kill(int(pid), 0)  # alive: keep
                if wait_for is not None and rest.startswith(f"{wait_for}-"):
                    alive += 1  # a trial of this search's own Ray, its worker not gone yet
                continue
            except ValueError:
                continue  # not one of ours
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # another user's process
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
        if not alive or time.time() >= deadline:
            return removed
        time.sleep(0.5)


def resolve(data: tuple) -> tuple:
    """The datasets behind search.run's object-store references (zero-copy on this node)."""
    import ray

    return tuple(ray.get(d) if isinstance(d, ray.ObjectRef) else d for d in data)


def train_trial(config: dict, data: tuple, checkpoint_epochs: frozenset | None = None,
                gpu_share: float = 0.0) -> None:
    """Ray Tune function trainable. `config` comes from search.searcher (arm, study, stage, cfg,
    params); `data` holds the object-store references of (train, val, test) (test may be None):
    search.run puts each dataset in the object store once, and they are resolved here (zero-copy:
    the arrays map this node's copy). `checkpoint_epochs` (Space.checkpoint_epochs; None = every
    epoch): the epochs whose checkpoint is saved and handed to Ray; the others report metrics only.
    `gpu_share` (resources.gpu): below 1, the trial caps its CUDA allocator at that share, so packed
    trials cannot take each other's memory."""
    train, val = resolve(data[:2])
    test = resolve(data[2:3])[0] if scores_test(config, data) else None
    cfg = C.from_dict(config["cfg"], source=f"trial {tune.get_context().get_trial_id()}")
    remove_orphaned_work_dirs()
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-{ray_tag()}-"))
    last_epoch = 0
    try:
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as d:
                for name in (CKPT_NAME, MODEL_FILE):
                    if (Path(d) / name).exists():
                        shutil.copy(Path(d) / name, work / name)

        def on_epoch(metrics: dict, ckpt_path: Path | None) -> None:
            nonlocal last_epoch
            last_epoch = int(metrics["epoch"])
            if ckpt_path is None:  # not a checkpoint epoch: metrics only, nothing for Ray to persist
                tune.report({**metrics, "reported_at": time.time()})
                return
            with tempfile.TemporaryDirectory(prefix="smallobj-ckpt-") as d:
                # Hard links (same filesystem): nothing is copied until Ray persists the checkpoint.
                os.link(ckpt_path, Path(d) / CKPT_NAME)
                if (work / MODEL_FILE).exists():  # absent only while no epoch had a finite metric
                    os.link(work / MODEL_FILE, Path(d) / MODEL_FILE)
                # reported_at: the order of every trial's results in time, which search.replay needs to
                # reproduce the scheduler's decisions (Ray's own `timestamp` has whole seconds).
                tune.report({**metrics, "reported_at": time.time()}, checkpoint=tune.Checkpoint.from_directory(d))

        fit(cfg, train, val, work, test=test, on_epoch=on_epoch, resume=restored is not None,
            checkpoint_epochs=None if checkpoint_epochs is None else checkpoint_epochs.__contains__,
            gpu_memory_fraction=gpu_share if 0 < gpu_share < 1 else None)
    except (NonFiniteLossError, OutOfMemoryError, C.ConfigError) as e:
        # Deterministic failures: retrying from the checkpoint would fail the same way, so the trial
        # ends now with its reason (the searcher tells TPE the configuration is infeasible, and replaces
        # the trial) instead of raising into Ray's retries.
        # (ConfigError: what the configuration asks of this node's device, e.g. bf16 on a GPU without it.)
        # The metric is reported (as NaN) because Ray requires the search's metric in every result.
        tune.report({"fail_reason": f"{type(e).__name__}: {e}", "epoch": float(last_epoch), cfg.metric: math.nan})
    finally:
        shutil.rmtree(work, ignore_errors=True)
        # Past the except block the failed run's frames are gone, so its cached GPU memory can be
        # returned now (fit's own release runs while an exception still holds the model). Ray reuses
        # this worker for the next trial, and a neighbour on a shared GPU can use the memory meanwhile.
        if torch.cuda.is_available():
            release_gpu_memory(torch.device("cuda"))
