"""Detections to look at: for each arm, its tuned model and its shared-hyperparameter (baseline)
model drawn on the same few held-out images, ground truth and predictions in two colours.

People judge a small-object detector by looking at it. After the search's stages, search.run draws,
for every arm, one figure RUN_DIR/detections/<arm>.png: a row per model (the arm's tuned
configuration: the best confirmation run of its best confirmed configuration, `Confirmed.best_run`,
the model search.export ships; or its best search trial without a confirmation stage; then its first baseline run, when the space has a baseline),
a column per image (the first `IMAGES` test images, or validation images when there are none).
Each model is the weights validation chose for that run (`model.pt` of the checkpoint Ray kept:
search.trainable), run in a Ray task with the trials' resources like search/latency.py. search.report shows the figures.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from search.results import STATUS_FINISHED, TrialRecord, confirmed, ranked
from search.space import Space
from search.storage import RunLocation

FOLDER = "detections"
IMAGES = 3
SCORE = 0.5  # predictions at or above this score are drawn
GT_COLOUR, PRED_COLOUR = "lime", "red"


def _predict(checkpoint: str, train, images) -> list[dict]:
    """In a Ray task: the kept model's boxes and scores on `images` (a DecodedDataset)."""
    from detector.data import DetectionDataset
    from detector.engine import detect
    from search.latency import load_kept

    model, cfg, setup = load_kept(checkpoint, train)
    ds = DetectionDataset(images, cfg.in_channels)
    out = []
    for i in range(len(ds)):
        pred = detect(model, [ds[i][0]], setup.device, setup.amp_dtype)[0]  # the precision of evaluation
        keep = pred["scores"] >= SCORE
        out.append({"boxes": pred["boxes"][keep].numpy(), "scores": pred["scores"][keep].numpy()})
    return out


def models_to_draw(records: list[TrialRecord], arm: str) -> list[tuple[str, TrialRecord]]:
    """(label, run) for the arm's tuned model and its baseline model (see the module docstring)."""
    out = []
    conf = confirmed(records, arm)
    if conf:
        run = conf[0].best_run()  # the model search.export ships
        out.append((f"tuned (trial {conf[0].source.trial_id}, seed {run.config['seed']})", run))
    elif ranked(records, arm):
        best = ranked(records, arm)[0]
        out.append((f"tuned (search trial {best.trial_id})", best))
    base = sorted((r for r in records if r.stage == "baseline" and r.arm == arm and r.status == STATUS_FINISHED),
                  key=lambda r: r.config["seed"])
    if base:
        out.append((f"shared hyperparameters (seed {base[0].config['seed']})", base[0]))
    return out


def draw(space: Space, loc: RunLocation, data, records: list[TrialRecord]) -> dict[str, str]:
    """Draw every arm's figure into RUN_DIR/detections/; return {arm: file name, or why there is none}.
    `data`: the object-store references of (train, val, test). A failure costs the report its
    figure, never the search."""
    import ray

    train_ref, val_ref, test_ref = (*data, None)[:3]
    which = "test" if test_ref is not None else "validation"
    pool = ray.get(test_ref if test_ref is not None else val_ref)
    shown = pool.subset(range(min(IMAGES, len(pool))))
    task = ray.remote(num_cpus=space.cpu, num_gpus=space.gpu)(_predict)
    folder = loc.local / FOLDER
    folder.mkdir(exist_ok=True)
    out = {}
    for arm in space.arms:
        rows = []
        for label, rec in models_to_draw(records, arm.name):
            kept = loc.checkpoints(Path(rec.path))
            if not kept:
                continue
            try:
                rows.append((label, ray.get(task.remote(kept[-1], train_ref, shown))))
            except Exception as e:  # noqa: BLE001 - a figure is never worth the search's results
                out[arm.name] = f"{label}: {type(e).__name__}: {e}"[:300]
        if rows:
            name = f"{arm.name}.png"
            figure(shown, rows, f"{arm.name}: {which} images; ground truth {GT_COLOUR}, predictions (score >= "
                                f"{SCORE}) {PRED_COLOUR}", folder / name)
            out[arm.name] = name
    loc.push([f"{FOLDER}/{n}" for n in out.values() if n.endswith(".png")])
    return out


def figure(images, rows: list[tuple[str, list[dict]]], title: str, path: Path) -> None:
    """One row per model, one column per image: the image, its ground-truth boxes and the model's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(images)
    fig, axes = plt.subplots(len(rows), n, figsize=(3.2 * n, 3.4 * len(rows)), squeeze=False)
    for r, (label, preds) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            img = images.images[c].astype(np.float32)
            lo, hi = images.ranges[c]
            ax.imshow(np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray", vmin=0, vmax=1)
            for boxes, colour, lw in ((images.boxes[c], GT_COLOUR, 1.2), (preds[c]["boxes"], PRED_COLOUR, 0.9)):
                for x0, y0, x1, y1 in boxes:
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=lw))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{len(images.boxes[c])} objects, {len(preds[c]['boxes'])} detections", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
