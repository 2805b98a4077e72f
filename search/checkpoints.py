"""Which checkpoints a search keeps.

A search trial hands Ray a checkpoint every epoch (or as `budget.checkpoint_every` and the rungs
choose: Space.checkpoint_epochs). Ray can delete old ones itself
(`CheckpointConfig(num_to_keep=k)`), but then it forces an experiment snapshot (every trial's state
written, the run folder copied) as soon as any trial has checkpointed k times since the last one,
so that its saved state never names a deleted checkpoint: with k = 1, one snapshot per epoch of
every trial, each costing time in proportion to the trials in the run, which was most of the
driver's time at 300 trials (bench/RESULTS.md, seventh session; ray-project/ray#43689). With k = 2,
still one per epoch of the fastest trial. Without `num_to_keep` Ray snapshots on its own clock
(every 10 s or more, at most ~5% of the driver's time) and deletes nothing, and
`PruneEndedCheckpoints` deletes instead, only what Ray's experiment state *saved in the run's
storage* no longer needs:

- of every trial, the checkpoints older than the newest one that saved state lists (a resumed trial
  restarts from that one; a trial Ray retries after an error restarts from a newer one still);
- of an ended search trial (TERMINATED in the saved state) that another ended trial of its arm
  outranks (`results.rank_key`, the order of `results.ranked`; trials tied with the best are kept),
  all of them: nothing reads them;
- of an ended trial that is kept (an arm's best or tied with it, every confirmation and baseline
  run: search.stages), the `checkpoint.pt` (model and optimizer) in its newest checkpoint: nothing
  resumes an ended trial. What stays is that checkpoint's `model.pt`, the weights of the epoch
  validation chose (search.trainable), which search/latency.py times, search/detections.py draws
  and search.export ships.

Errored trials keep their newest saved checkpoint whole (--resume retries them from it). The pass
runs at most every PRUNE_EVERY_S seconds and once at the end of the search.
"""
from __future__ import annotations

import logging
import math
import os
import posixpath
import time

from ray import tune
from ray.tune import Callback

from search import compat
from search.results import STATUS_FAILED, TrialHistory, outcome, rank_key
from search.stages import is_later_stage
from search.trainable import CKPT_NAME

log = logging.getLogger(__name__)

# At most this often (seconds): each pass reads Ray's experiment state (~26 kB per trial).
# SEARCH_PRUNE_EVERY_S sets it (the tests prune every few seconds).
PRUNE_EVERY_S = float(os.environ.get("SEARCH_PRUNE_EVERY_S", "60"))
CHECKPOINT_PREFIX = "checkpoint_"


def checkpoint_config() -> tune.CheckpointConfig:
    """Ray keeps every checkpoint, for `PruneEndedCheckpoints` to delete, in the order they came.

    No `checkpoint_score_attribute`: Ray would use it only to choose what `num_to_keep` deletes, and
    with it Ray's checkpoint manager keeps each trial's list sorted by scanning it at every new
    checkpoint, flattening each earlier result's metrics again (ray/train/_internal/
    checkpoint_manager.py, "TODO: optimize this with sortedlist"): O(epochs^2) per trial, 29% of
    the driver's busy time in bench/scale.py at 100 trials of 60 epochs (bench/RESULTS.md)."""
    return tune.CheckpointConfig(num_to_keep=None)


class _Trial:
    """What the pruner knows of a trial: its arm, where its folder is stored, its epochs so far
    (search.results.TrialHistory: the best the records will name), its last epoch, whether it
    reported a failure, its place in `rank_key`'s order once it has ended (None: not ended, or never
    ranked), below which checkpoint number it was pruned, and whether its kept checkpoint has lost
    its `checkpoint.pt`."""

    def __init__(self, arm: str, fs, path: str, metric: str, later_stage: bool = False):
        self.arm, self.fs, self.path, self.later_stage = arm, fs, path, later_stage
        self.history, self.epochs, self.failed = TrialHistory(metric), 0, False
        self.prior = math.nan  # Ray's running max: for a resumed trial whose stored results could not be read
        self.ended, self.key = False, None
        self.pruned_below = 0
        self.slimmed = False  # its kept checkpoint's checkpoint.pt deleted


class PruneEndedCheckpoints(Callback):
    """Deletes checkpoints Ray's saved state no longer needs (module docstring). `deleted` counts
    the checkpoint folders it deleted. A resumed driver starts with an empty memory: the trials
    that ended before the resume keep what they had."""

    def __init__(self, metric: str, max_epochs: int, every_s: float | None = None):
        self.metric, self.max_epochs = metric, max_epochs
        self.every_s = PRUNE_EVERY_S if every_s is None else every_s
        self._trials: dict[str, _Trial] = {}
        self._last_pass = time.monotonic()
        self.deleted = 0

    # --- what Ray tells the driver ---------------------------------------------------------------
    def _of(self, trial, result: dict) -> _Trial:
        """The trial's record, with `result` (a report of it) counted."""
        if trial.trial_id not in self._trials:
            fs, path = compat.trial_storage(trial)
            t = self._trials[trial.trial_id] = _Trial(trial.config["arm"], fs, path, self.metric,
                                                      later_stage=is_later_stage(trial.config))
            for r in compat.stored_reports(trial, result):  # (a resumed trial's epochs before this driver)
                t.history.add(r)
            epoch = int(result.get("epoch", 1))
            if not set(range(1, epoch)) <= {int(h["epoch"]) for h in t.history.epochs}:
                # Not all readable now: never delete what may be the arm's best on a guess.
                prior = compat.metric_max(trial, self.metric)
                t.prior = math.nan if prior is None else prior
        t = self._trials[trial.trial_id]
        t.history.add(result)  # (a report already counted replaces itself)
        t.epochs = int(result.get("epoch", t.epochs))
        t.failed = t.failed or "fail_reason" in result
        return t

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._of(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        t = self._of(trial, trial.last_result or {})
        status = outcome(epochs=t.epochs, max_epochs=self.max_epochs, fail_reason="failed" if t.failed else None).status
        t.ended = True
        # A failed trial, or one with no finite metric, is never ranked (`results.ranked`): key None.
        # (`prior` stands for the epochs before a resume whose stored results could not be read.)
        best = max((b for b in (t.history.best, t.prior) if math.isfinite(b)), default=math.nan)
        t.key = None if status == STATUS_FAILED or not math.isfinite(best) else rank_key(status, best)

    def on_step_end(self, iteration, trials, **info):
        if self._trials and time.monotonic() - self._last_pass >= self.every_s:
            self.prune()

    def on_experiment_end(self, trials, **info):
        if self._trials:
            self.prune()

    # --- the pass ----------------------------------------------------------------------------------
    def prune(self) -> int:
        """Delete what may be deleted now; returns how many checkpoint folders went. A failure is
        logged, never raised: it costs disk, not the search."""
        self._last_pass = time.monotonic()
        try:
            saved = self._saved_state()
            if saved is None:
                return 0
            best_key: dict[str, tuple] = {}
            for t in self._trials.values():
                if t.key is not None and not t.later_stage and (t.arm not in best_key or t.key < best_key[t.arm]):
                    best_key[t.arm] = t.key
            n = 0
            for tid, t in list(self._trials.items()):
                if tid not in saved:
                    continue
                status, numbers = saved[tid]
                if (t.ended and status == "TERMINATED" and not t.later_stage
                        and (t.key is None or t.key > best_key[t.arm])):
                    n += _delete_checkpoints(t.fs, t.path, below=math.inf)
                    del self._trials[tid]  # nothing of it is left to delete
                    continue
                if numbers and max(numbers) > t.pruned_below:
                    n += _delete_checkpoints(t.fs, t.path, below=max(numbers))
                    t.pruned_below = max(numbers)
                if numbers and t.ended and status == "TERMINATED" and not t.slimmed:
                    _delete_file(t.fs, posixpath.join(t.path, f"{CHECKPOINT_PREFIX}{max(numbers):06d}", CKPT_NAME))
                    t.slimmed = True
            self.deleted += n
            return n
        except Exception:  # noqa: BLE001 - see the docstring
            log.warning("could not delete old checkpoints (the search goes on)", exc_info=True)
            return 0

    def _saved_state(self) -> dict[str, tuple[str, list[int] | None]] | None:
        """{trial id: (status, checkpoint numbers)} from Ray's newest experiment state in the run's
        storage; None when it cannot be read now (not written yet, or caught mid-copy: the next pass
        reads it)."""
        import pyarrow.fs

        some = next(iter(self._trials.values()))
        fs, exp = some.fs, posixpath.dirname(some.path)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(exp, allow_not_found=True))
        states = sorted(i.path for i in infos if compat.is_experiment_state(posixpath.basename(i.path)))
        if not states:
            return None
        with fs.open_input_stream(states[-1]) as f:
            text = f.read().decode("utf-8", errors="replace")
        try:
            return compat.trials_and_checkpoints(text)
        except ValueError:
            return None


def _delete_file(fs, path: str) -> None:
    """Delete one file (in a folder or a bucket alike), if it is there."""
    import pyarrow.fs

    if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
        fs.delete_file(path)


def _delete_checkpoints(fs, trial_path: str, below: float) -> int:
    """Delete the trial folder's checkpoint_NNNNNN folders numbered below `below` (in a folder or a
    bucket alike); returns how many."""
    import pyarrow.fs

    n = 0
    for info in fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True)):
        name = posixpath.basename(info.path)
        if info.type == pyarrow.fs.FileType.Directory and name.startswith(CHECKPOINT_PREFIX):
            try:
                number = int(name[len(CHECKPOINT_PREFIX):])
            except ValueError:
                continue
            if number < below:
                fs.delete_dir(info.path)
                n += 1
    return n
