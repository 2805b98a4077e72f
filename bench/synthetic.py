"""Synthetic recordings of a space's learning curves, for what does not depend on the numbers: the
search machinery at scale with trials that replay them (bench/scale.py, bench/pipeline.py, and the
tests of kills, resumes, object storage and clusters), and the cost of a replay (bench/replay_speed.py).
Real recordings come from real runs (bench/record_curves.py)."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from search.replay import CURVES, FORMAT
from search.space import load_space


def synthetic_recording(space_file: str | Path, folder: str | Path, per_arm: int, seed: int = 0,
                        command: str = "synthetic") -> Path:
    """Write a synthetic compact recording of `space_file`'s space into `folder` (its space.yaml and
    curves.json) and return the folder: `per_arm` random configurations per arm (conditional
    parameters included), saturating curves whose height depends on lr (best near 0.004) and on the
    arm, and epochs of 20-40 s. For what does not depend on the numbers: the cost of a replay
    (bench/replay_speed.py) and of the search machinery (bench/scale.py). The space needs an `lr`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = Path(space_file).read_text()
    (folder / "space.yaml").write_text(text)
    space = load_space(folder / "space.yaml")
    rng = np.random.default_rng(seed)
    trials = []
    for a, arm in enumerate(space.arms):
        offset = rng.uniform(-0.1, 0.1)
        for i in range(per_arm):
            params: dict = {}
            for p in space.params:
                if not p.active(params):
                    continue
                if p.type == "categorical":
                    params[p.name] = p.choices[rng.integers(len(p.choices))]
                elif p.log:
                    params[p.name] = float(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
                else:
                    params[p.name] = float(rng.uniform(p.low, p.high))
            top = 0.55 + offset - 0.08 * abs(math.log10(params["lr"]) - math.log10(0.004)) + rng.normal(0, 0.02)
            rate = rng.uniform(0.03, 0.3)
            epochs = np.arange(1, space.max_epochs + 1)
            values = np.clip(top * (1 - np.exp(-rate * epochs)) + rng.normal(0, 0.005, len(epochs)), 0, 1)
            trials.append({"trial_id": f"a{a:02d}-{i:03d}", "arm": arm.name, "params": params, "status": "finished",
                           "values": [round(float(v), 5) for v in values],
                           "costs": [round(float(c), 2) for c in rng.uniform(20, 40, len(epochs))], "reported_at": []})
    doc = {"format": FORMAT, "metric": space.metric, "space_sha256": hashlib.sha256(text.encode()).hexdigest(),
           "command": command, "source": "synthetic", "trials": trials}
    (folder / CURVES).write_text(json.dumps(doc))
    return folder

