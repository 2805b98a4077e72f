"""Inference latency of each arm's best model, measured once the search has ended.

A trial runs beside other trials and its model changes every epoch; Faster R-CNN's time per image
depends on how many proposals and detections survive, which training changes. So the latency the
report ranks arms by is measured here instead: after the search (and confirmation) stages, for each
arm its best configuration (`results.ranked`), the weights validation chose for it (`model.pt` in
the checkpoint search.checkpoints keeps), all in one Ray task with the trials' own resources (on a
cluster, a node like the trials': every arm timed on the same node, and one worker started, which
costs seconds of imports), one arm after the other so that nothing else runs on that device,
timed by `detector.engine.latency_ms`: warm-up and
timed passes under the same settings, the median of `REPEATS` passes at batch size 1 on a
validation image. Written to RUN_DIR/latency.json: {arm: {trial_id, latency_ms, latency_n, device}}.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from search.results import TrialRecord, ranked
from search.space import Space
from search.storage import RunLocation

LATENCY_FILE = "latency.json"
REPEATS = 10  # at batch size 1: 3 s of passes per model on a CPU (0.3 s each), a fraction of a second on a GPU


class Kept(NamedTuple):
    model: object                  # in eval mode
    cfg: object                    # its TrainConfig
    setup: object                  # its engine Setup on this node's device
    score_threshold: float | None  # its operating threshold (detector.engine.LoadedModel)


def load_kept(checkpoint: str, train) -> Kept:
    """In a Ray task: the model in the validation-best weights (`model.pt`) of a checkpoint Ray
    kept, on this node's GPU if it has one."""
    import torch
    from ray import tune

    from detector.engine import MODEL_FILE, Setup, model_from_checkpoint

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tune.Checkpoint(checkpoint).as_directory() as d:
        if not (Path(d) / MODEL_FILE).exists():
            raise FileNotFoundError(f"{checkpoint}: no {MODEL_FILE} (no epoch of the trial had a finite metric)")
        loaded = model_from_checkpoint(Path(d) / MODEL_FILE, device)
    return Kept(loaded.model, loaded.cfg, Setup.create(loaded.cfg, train, device), loaded.score_threshold)


def _measure(checkpoints: list[str], train, val, repeats: int) -> list[dict]:
    """In one Ray task: each checkpoint's model loaded and timed on the first validation image, one
    after the other (one worker started, every arm timed on the same node). A model that cannot be
    timed gets {"error"} and the next is still timed."""
    from detector.data import DetectionDataset
    from detector.engine import latency_ms

    out = []
    for checkpoint in checkpoints:
        try:
            model, cfg, setup, _ = load_kept(checkpoint, train)
            image = DetectionDataset(val, cfg.in_channels)[0][0]
            out.append({**latency_ms(model, image, setup, repeats=repeats), "device": str(setup.device)})
            del model
        except Exception as e:  # a failed measurement costs the report this arm's latency only
            out.append({"error": f"{type(e).__name__}: {e}"[:500]})
    return out


def measure(space: Space, loc: RunLocation, data, records: list[TrialRecord], repeats: int = REPEATS) -> dict:
    """Measure every arm's best model (see the module docstring), write latency.json, return its content.
    `data`: the object-store references of (train, val, ...), resolved by Ray in the task.
    An arm whose best model could not be timed (no checkpoint kept, the task failed) gets
    {"trial_id", "error"} instead of a time."""
    import ray

    out, todo = {}, []  # todo: (arm, trial id, checkpoint)
    for arm in space.arms:
        order = ranked(records, arm.name)
        if not order:
            continue
        best = order[0]
        kept = loc.checkpoints(Path(best.path))
        if kept:
            todo.append((arm.name, best.trial_id, kept[-1]))
        else:
            out[arm.name] = {"trial_id": best.trial_id, "error": "no checkpoint kept"}
    if todo:
        task = ray.remote(num_cpus=space.cpu, num_gpus=space.gpu)(_measure)
        try:  # one task, the models one at a time: nothing else runs on that device meanwhile
            timed = ray.get(task.remote([c for _, _, c in todo], data[0], data[1], repeats))
        except Exception as e:  # a failed measurement costs the report its latency, never the search
            timed = [{"error": f"{type(e).__name__}: {e}"[:500]}] * len(todo)
        for (arm, trial_id, _), t in zip(todo, timed):
            out[arm] = {"trial_id": trial_id, **t}
    out = {a.name: out[a.name] for a in space.arms if a.name in out}  # the space's order
    (loc.local / LATENCY_FILE).write_text(json.dumps(out, indent=1))
    loc.push([LATENCY_FILE])
    return out


def read(run_dir: Path) -> dict:
    """latency.json of a run, or {} when it has none (a run that ended before the measurement)."""
    f = Path(run_dir) / LATENCY_FILE
    return json.loads(f.read_text()) if f.exists() else {}
