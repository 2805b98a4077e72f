"""Which checkpoints a search keeps: Ray's `CheckpointConfig` for its trials, and the deletion of
ended search trials' checkpoints that nothing will read.

Ray keeps a trial's checkpoints (the `num_to_keep` best, and always the latest) until the run ends:
at a thousand GPU trials of ~330 MB each, terabytes. Once the search is over, one checkpoint per
arm is read: its best trial's (search/latency.py times it; the best is `results.ranked`'s first).
So `PruneEndedCheckpoints` deletes an ended search trial's checkpoints when

1. it ended without an error (Ray: TERMINATED; an errored trial keeps them, --resume retries it from
   its last checkpoint),
2. Ray's experiment state *in the run's storage* already says so: until then a driver lost and
   resumed would restart the trial from its checkpoint (Ray deletes a checkpoint of its own only
   after the same condition, by forcing a snapshot), and
3. it can no longer be its arm's best: another ended trial of the arm ranks strictly above it
   (`results.rank_key`; trials that tie with the arm's best are all kept).

Why `num_to_keep` is 2 and not 1 (bench/RESULTS.md, seventh and eighth sessions): Ray forces an
experiment snapshot (every trial's state written and the run folder copied) as soon as any trial has
checkpointed `num_to_keep` times since the last snapshot. With 1 and a checkpoint every epoch, that
is one snapshot per epoch of every trial, and each costs time in proportion to the trials in the
run: most of the driver's time at 300 trials. With 2, a snapshot is forced about once per epoch of
the fastest running trial instead; each trial keeps one checkpoint more while it runs.

The confirmation and baseline stages keep theirs (their best runs' models feed the report's
detection figures; they hold a few runs per arm, not the search's thousand).
"""
from __future__ import annotations

import math
import os
import posixpath
import time

from ray import tune
from ray.tune import Callback

from search import compat
from search.results import STATUS_FAILED, outcome, parse_experiment_state, rank_key

SEARCH_KEEP = 2  # CheckpointConfig.num_to_keep of the search's trials (see the module docstring)
STAGE_KEEP = 1   # ... of the confirmation and baseline runs
# At most this often (seconds): each pass reads Ray's experiment state (~26 kB per trial).
# SEARCH_PRUNE_EVERY_S sets it (the tests prune every few seconds).
PRUNE_EVERY_S = float(os.environ.get("SEARCH_PRUNE_EVERY_S", "60"))


def checkpoint_config(metric: str, keep: int) -> tune.CheckpointConfig:
    """Ray keeps a trial's `keep` best checkpoints by `metric`, and its latest."""
    return tune.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=metric, checkpoint_score_order="max")


class _Ended:
    """What the pruner knows of an ended trial: its arm, its place in `results.rank_key`'s order,
    and where its folder is stored."""

    def __init__(self, arm: str, key: tuple | None, fs, path: str):
        self.arm, self.key, self.fs, self.path = arm, key, fs, path


class PruneEndedCheckpoints(Callback):
    """Deletes the checkpoints of ended search trials that cannot be their arm's best (module
    docstring), at most every `every_s` seconds while the search runs and once at its end.
    `deleted` counts the trials whose checkpoints it deleted (this driver's; a resumed run starts
    from 0 and prunes only trials it saw end)."""

    def __init__(self, metric: str, max_epochs: int, every_s: float | None = None):
        self.metric, self.max_epochs = metric, max_epochs
        self.every_s = PRUNE_EVERY_S if every_s is None else every_s
        self._best: dict[str, float] = {}      # trial id -> best finite metric so far
        self._epochs: dict[str, int] = {}
        self._failed: set[str] = set()          # reported a fail_reason
        self._ended: dict[str, _Ended] = {}     # ended without a Ray error, checkpoints not yet deleted
        self._last_pass = 0.0
        self.deleted = 0

    # --- what Ray tells the driver ---------------------------------------------------------------
    def on_trial_result(self, iteration, trials, trial, result, **info):
        v = result.get(self.metric)
        if v is not None and math.isfinite(float(v)):
            self._best[trial.trial_id] = max(float(v), self._best.get(trial.trial_id, -math.inf))
        if "epoch" in result:
            self._epochs[trial.trial_id] = int(result["epoch"])
        if "fail_reason" in result:
            self._failed.add(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = trial.trial_id
        best = self._best.get(tid, math.nan)
        status = outcome(epochs=self._epochs.get(tid, 0), max_epochs=self.max_epochs,
                         fail_reason="failed" if tid in self._failed else None).status
        # A failed trial, or one with no finite metric, is never ranked (`results.ranked`): key None.
        key = None if status == STATUS_FAILED or not math.isfinite(best) else rank_key(status, best)
        fs, path = compat.trial_storage(trial)
        self._ended[tid] = _Ended(trial.config["arm"], key, fs, path)

    def on_step_end(self, iteration, trials, **info):
        if self._ended and time.monotonic() - self._last_pass >= self.every_s:
            self.prune()

    def on_experiment_end(self, trials, **info):
        # Ray has uploaded its last experiment state before this call (see search/trackers.py).
        if self._ended:
            self.prune()

    # --- the pass ----------------------------------------------------------------------------------
    def prune(self) -> int:
        """Delete what may be deleted now; returns how many trials' checkpoints went."""
        self._last_pass = time.monotonic()
        terminated = self._persisted_terminated()
        if terminated is None:
            return 0
        best_key: dict[str, tuple] = {}
        for e in self._ended.values():
            if e.key is not None and (e.arm not in best_key or e.key < best_key[e.arm]):
                best_key[e.arm] = e.key
        n = 0
        for tid, e in list(self._ended.items()):
            if tid not in terminated:
                continue
            if e.key is not None and e.key <= best_key[e.arm]:
                continue  # its arm's best so far (or tied with it): latency.py may read it
            _delete_checkpoints(e.fs, e.path)
            del self._ended[tid]
            n += 1
        self.deleted += n
        return n

    def _persisted_terminated(self) -> set[str] | None:
        """The ids of trials Ray's newest experiment state in storage records as TERMINATED; None
        when it cannot be read now (not written yet, or caught mid-copy: the next pass reads it)."""
        import pyarrow.fs

        some = next(iter(self._ended.values()))
        fs, exp = some.fs, posixpath.dirname(some.path)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(exp, allow_not_found=True))
        states = sorted((i for i in infos if posixpath.basename(i.path).startswith("experiment_state-")
                         and i.path.endswith(".json")), key=lambda i: i.path)
        if not states:
            return None
        newest = states[-1]
        with fs.open_input_stream(newest.path) as f:
            text = f.read().decode("utf-8", errors="replace")
        try:
            saved = parse_experiment_state(text)
        except ValueError:
            return None
        return {tid for tid, t in saved.items() if t.get("status") == "TERMINATED"}


def _delete_checkpoints(fs, trial_path: str) -> None:
    """Delete the trial folder's checkpoint_* folders (in a folder or a bucket alike)."""
    import pyarrow.fs

    for info in fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.Directory and posixpath.basename(info.path).startswith("checkpoint_"):
            fs.delete_dir(info.path)
