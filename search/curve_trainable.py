"""A trainable that replays recorded learning curves instead of training: the search machinery at
full scale on a machine without GPUs (`search.run --replay-curves DIR`, used by bench/scale.py).

Everything around the trial is the real search: the space, the per-arm searcher and ASHA, the
progress table, results, storage and resume. Only the trial's body differs: for its arm and proposed
parameters it takes the nearest recorded configuration (`search.replay.Matcher`, the matching the
replay of strategies uses) and reports that curve's metric epoch by epoch, sleeping each epoch's
recorded cost times `time_scale`, with a checkpoint every epoch (a small JSON file) so that ASHA's
stops, Ray's retries and resumes go through the same paths as a real trial's. The stages after the
search get a `test_<metric>` at each new best epoch when the run has test images, as real trials do.

A value is the recorded one plus a small noise drawn from the trial's seed and epoch (so a
confirmation run with another seed differs, and the same seed repeats exactly). No torch is
imported here: the trials are cheap processes and the benchmark measures the machinery.
"""
from __future__ import annotations

import functools
import json
import math
import random
import tempfile
import time
from pathlib import Path

from ray import tune

from search import replay as R
from search.stages import scores_test

CKPT_NAME = "replay.json"
NOISE = 0.005  # sd of the per-seed noise added to a recorded value


@functools.lru_cache(maxsize=4)
def _matchers(curves_dir: str) -> tuple[str, dict[str, R.Matcher]]:
    """(metric, {arm: Matcher}) of a recording, loaded once per worker process."""
    rec = R.load_recording(curves_dir)
    return rec.space.metric, {arm: R.Matcher(rec.space, rec.of(arm)) for arm in rec.arms()}


def _value(recorded: float, seed: int, epoch: int, stream: str) -> float:
    rng = random.Random(f"{stream}:{seed}:{epoch}")
    return min(1.0, max(0.0, recorded + rng.gauss(0.0, NOISE)))


def replay_trial(config: dict, data: tuple = (), curves_dir: str = "", time_scale: float = 1.0) -> None:
    """Ray Tune function trainable with `train_trial`'s signature (see search.trainable); `data` is
    only looked at to know whether the trial is scored on test images."""
    has_test = scores_test(config, data)
    cfg, arm = config["cfg"], config["arm"]
    metric, matchers = _matchers(str(curves_dir))
    if arm not in matchers:
        raise ValueError(f"{curves_dir}: the recording has no curve for arm {arm} "
                         f"(it has {', '.join(sorted(matchers))})")
    curve, _ = matchers[arm].nearest(config.get("params", {}))
    seed, epochs = int(cfg["seed"]), int(cfg["epochs"])
    state = {"epoch": 0, "best": -math.inf}
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = json.loads((Path(d) / CKPT_NAME).read_text())
    report_s = 0.0  # how long the previous epoch's `tune.report` took (bench/scale.py's `held` split)
    for epoch in range(state["epoch"] + 1, epochs + 1):
        i = min(epoch, len(curve.values)) - 1  # a curve shorter than the budget holds its last value
        time.sleep(curve.costs[i] * time_scale)
        m = {"epoch": float(epoch), metric: _value(curve.values[i], seed, epoch, curve.trial_id),
             "epoch_time_s": curve.costs[i] * time_scale, "replayed_from": curve.trial_id, "report_s": report_s}
        if m[metric] > state["best"]:
            state["best"] = m[metric]
            if has_test:
                m[f"test_{metric}"] = _value(curve.values[i], seed, epoch, curve.trial_id + ":test")
        state["epoch"] = epoch
        with tempfile.TemporaryDirectory(prefix="smallobj-replay-ckpt-") as d:
            (Path(d) / CKPT_NAME).write_text(json.dumps(state))
            reported_at = time.time()
            tune.report({**m, "reported_at": reported_at}, checkpoint=tune.Checkpoint.from_directory(d))
            report_s = time.time() - reported_at
