"""Detections to look at: for each arm, its tuned model and its shared-hyperparameter (baseline)
model on the same held-out images, every detection marked as a hit or a false alarm and every
object the model missed, and the precision-recall and F1 curves they come from.

People judge a small-object detector by looking at it. After the search's stages, search.run writes,
for every arm, into RUN_DIR/detections/:
- `<arm>.png`: a row per model, a column per chosen image. The models: the arm's tuned configuration
  (the best confirmation run of its best confirmed configuration, `Confirmed.best_run`, the model
  search.export ships; or its best search trial without a confirmation stage), then its first
  baseline run, when the space has a baseline. Each model is the weights validation chose for that
  run (`model.pt` of the checkpoint Ray kept: search.trainable), run in a Ray task with the trials'
  resources like search/latency.py, on the test images (validation images when there are none; the
  first POOL of them).
- Each model's detections at its **operating threshold** (the score that maximised F1 on validation,
  kept in model.pt: detector/matching.py; its `box_score_thresh` if the file has none) are matched to
  the ground truth as COCO evaluation matches them at IoU 0.5 (one-to-one, highest score first):
  true positives, false positives and missed objects are drawn in three colours of the Okabe-Ito
  palette (distinguishable with the common colour-vision deficiencies) and three line styles, with
  the counts and the threshold in each panel's title.
- The images are chosen by a rule written under the figure (`choose_images`): the one with the most
  objects, the one nearest the median count, and the one where the two models' numbers of found
  objects differ most (with one model: where it misses most); images without objects only when the
  set has nothing else.
- `<arm>_curves.png`: precision against recall at IoU 0.5, and F1 against the score threshold, of
  each model on the same images, from the same matching; each curve's AP50 is in its legend (COCO's
  101-point interpolation: the mAP50 the evaluator reports for these images) and each model's
  operating threshold is marked.
- `<arm>.json`: what the report writes in words (the images, the rule, each model's threshold and
  its precision, recall, F1 and AP50 on these images).
search.report shows them. A failure costs the report its figure, never the search.
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import NamedTuple

import numpy as np

from detector import matching
from search.results import STATUS_FINISHED, TrialRecord, confirmed, ranked
from search.space import Space
from search.storage import RunLocation

FOLDER = "detections"
IMAGES = 3   # images per figure
POOL = 200   # the images predicted to choose from and to draw the curves on: the first POOL of the set
# Okabe & Ito's palette: told apart with protanopia, deuteranopia and tritanopia; the line styles differ too.
KINDS = {"tp": ("#0072B2", "-", "true positive"), "fp": ("#D55E00", "--", "false positive"),
         "missed": ("#F0E442", ":", "missed object")}
MODEL_COLOURS = ("tab:blue", "tab:grey")  # tuned, shared: as the study's curves
RULE = ("Images chosen by rule: the one with the most objects, the one nearest the median count, and the one where "
        "the models' numbers of found objects differ most (one model: where it misses most); images without "
        "objects only when there are no others.")


class Predicted(NamedTuple):
    """One model's detections on the pool (scores down to its box_score_thresh) and its threshold."""

    detections: list      # per image {"boxes", "scores", "labels"} as numpy arrays
    threshold: float      # keep detections with score >= this
    threshold_from: str   # "validation F1" or "box_score_thresh" (the model file has no operating point)


def _predict(checkpoint: str, train, images) -> Predicted:
    """In a Ray task: the kept model's detections on `images` (a DecodedDataset), at the precision
    of evaluation, and its operating threshold."""
    from detector.data import DetectionDataset
    from detector.engine import detect
    from search.latency import load_kept

    kept = load_kept(checkpoint, train)
    ds = DetectionDataset(images, kept.cfg.in_channels)
    out, bs = [], kept.cfg.batch_size  # batched as evaluation batches them: the same padding, the same boxes
    for start in range(0, len(ds), bs):
        batch = [ds[i][0] for i in range(start, min(start + bs, len(ds)))]
        for pred in detect(kept.model, batch, kept.setup.device, kept.setup.amp_dtype):
            out.append({k: pred[k].numpy() for k in ("boxes", "scores", "labels")})
    if kept.score_threshold is not None:
        return Predicted(out, kept.score_threshold, "validation F1")
    return Predicted(out, kept.cfg.box_score_thresh, "box_score_thresh")


def match_all(images, predicted: Predicted) -> list[matching.Matched]:
    """Each image's detections matched to its ground truth (detector/matching.py)."""
    return [matching.match(d["boxes"], d["scores"], images.boxes[i], d["labels"], images.labels[i])
            for i, d in enumerate(predicted.detections)]


def choose_images(counts: list[int], found: list[list[int]], missed: list[list[int]], k: int = IMAGES
                  ) -> list[tuple[int, str]]:
    """(image index, why) for up to `k` images by the module docstring's rule. `counts[i]`: objects
    in image i; `found[m][i]` / `missed[m][i]`: objects model m found / missed there."""
    pool = [i for i, c in enumerate(counts) if c > 0] or list(range(len(counts)))
    chosen: list[tuple[int, str]] = []

    def take(key, why):
        left = [i for i in pool if i not in {c for c, _ in chosen}]
        if left and len(chosen) < k:
            i = max(left, key=key)  # the first of ties: the set's order
            chosen.append((i, why(i)))

    take(lambda i: counts[i], lambda i: f"most objects ({counts[i]})")
    median = float(np.median([counts[i] for i in pool])) if pool else 0.0
    take(lambda i: -abs(counts[i] - median), lambda i: f"nearest the median count {median:g} ({counts[i]})")
    left = [i for i in pool if i not in {c for c, _ in chosen}]
    if len(found) >= 2 and any(found[0][i] != found[1][i] for i in left):
        take(lambda i: abs(found[0][i] - found[1][i]),
             lambda i: f"largest disagreement (found {found[0][i]} vs {found[1][i]} of {counts[i]})")
    elif len(found) >= 2:
        take(lambda i: counts[i], lambda i: f"the models found as many everywhere else; next most objects ({counts[i]})")
    elif found:
        take(lambda i: missed[0][i], lambda i: f"most missed ({missed[0][i]} of {counts[i]})")
    return chosen


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


def summarise(label: str, p: Predicted, matched: list[matching.Matched]) -> dict:
    """A model's numbers on the pool at its threshold, and its AP50 there."""
    op = matching.operating_point(matched, p.threshold)
    masks = [m.at(p.threshold) for m in matched]
    return {"model": label, "threshold": p.threshold, "threshold_from": p.threshold_from,
            "true_positives": int(sum(tp.sum() for tp, _, _ in masks)),
            "false_positives": int(sum(fp.sum() for _, fp, _ in masks)),
            "missed": int(sum(ms.sum() for _, _, ms in masks)),
            "precision": op.precision, "recall": op.recall, "f1": op.f1, "ap50": matching.average_precision(matched)}


def draw(space: Space, loc: RunLocation, data, records: list[TrialRecord]) -> dict[str, str]:
    """Draw every arm's figures into RUN_DIR/detections/; return {arm: file name, or why there is none}.
    `data`: the object-store references of (train, val, test)."""
    import ray

    train_ref, val_ref, test_ref = (*data, None)[:3]
    which = "test" if test_ref is not None else "validation"
    whole_ref = test_ref if test_ref is not None else val_ref
    whole = ray.get(whole_ref)
    pool = whole.subset(range(min(POOL, len(whole))))
    pool_ref = whole_ref if len(pool) == len(whole) else ray.put(pool)  # the set itself: no second copy
    task = ray.remote(num_cpus=space.cpu, num_gpus=space.gpu)(_predict)
    folder = loc.local / FOLDER
    folder.mkdir(exist_ok=True)
    out, written = {}, []
    for arm in space.arms:
        models, failed = [], {}
        for label, rec in models_to_draw(records, arm.name):
            kept = loc.checkpoints(Path(rec.path))
            if not kept:
                failed[label] = "no kept checkpoint"
                continue
            try:
                p = ray.get(task.remote(kept[-1], train_ref, pool_ref))
            except Exception as e:  # noqa: BLE001 - a figure is never worth the search's results
                failed[label] = f"{type(e).__name__}: {e}"[:300]
                continue
            models.append((label, p, match_all(pool, p)))
        if not models:
            if failed:
                out[arm.name] = "; ".join(f"{k}: {v}" for k, v in failed.items())
            continue
        try:
            written += _draw_arm(arm.name, pool, len(whole), which, models, failed, folder)
            out[arm.name] = f"{arm.name}.png"
        except Exception as e:  # noqa: BLE001 - the same: this arm loses its figures, the search nothing
            out[arm.name] = f"drawing: {type(e).__name__}: {e}"[:300]
    loc.push([f"{FOLDER}/{n}" for n in written])
    return out


def _draw_arm(arm: str, pool, of: int, which: str, models: list, failed: dict, folder: Path) -> list[str]:
    """One arm's figure, curves and numbers (the module docstring); the names of the files written."""
    counts = [len(b) for b in pool.boxes]
    masks = [[m.at(p.threshold) for m in matched] for _, p, matched in models]
    found = [[int(tp.sum()) for tp, _, _ in mm] for mm in masks]
    missed = [[int(ms.sum()) for _, _, ms in mm] for mm in masks]
    chosen = choose_images(counts, found, missed)
    summary = {"arm": arm, "images": which, "pool": len(pool), "of": of, "rule": RULE,
               "chosen": [{"image_id": int(pool.image_ids[i]), "file_name": str(pool.file_names[i]), "why": why}
                          for i, why in chosen],
               "models": [summarise(label, p, matched) for label, p, matched in models], "failed": failed}
    where = f"{which} images" + (f" (the first {len(pool)} of {of})" if len(pool) < of else "")
    figure(pool, chosen, [(label, p.threshold, p.detections, mm) for (label, p, _), mm in zip(models, masks)],
           f"{arm}: {where}, each model at its operating threshold; IoU 0.5", folder / f"{arm}.png")
    curves(models, summary["models"], f"{arm}: {len(pool)} {where}", folder / f"{arm}_curves.png")
    # Strict JSON: an AP without objects to score is null, not NaN.
    for m in summary["models"]:
        m["ap50"] = m["ap50"] if math.isfinite(m["ap50"]) else None
    (folder / f"{arm}.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    return [f"{arm}.png", f"{arm}_curves.png", f"{arm}.json"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(images, chosen: list[tuple[int, str]], rows: list[tuple[str, float, list, list]], title: str,
           path: Path) -> None:
    """One row per model, one column per chosen image: the image, its hits, false alarms and misses.
    `rows`: (label, threshold, per image of `images` its detections and its (tp, fp, missed) masks)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    n = max(len(chosen), 1)
    fig, axes = plt.subplots(len(rows), n, figsize=(3.4 * n, 3.6 * len(rows) + 0.8), squeeze=False,
                             layout="constrained")
    for r, (label, threshold, dets, masks) in enumerate(rows):
        for c, (i, why) in enumerate(chosen):
            ax = axes[r][c]
            img = images.images[i].astype(np.float32)
            lo, hi = images.ranges[i]
            ax.imshow(np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray", vmin=0, vmax=1)
            tp, fp, missed = masks[i]
            # False positives last: a duplicate on a found object stays visible over its hit.
            for kind, boxes in (("missed", images.boxes[i][missed]), ("tp", dets[i]["boxes"][tp]),
                                ("fp", dets[i]["boxes"][fp])):
                colour, style, _ = KINDS[kind]
                for x0, y0, x1, y1 in boxes:
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, ls=style,
                                           lw=1.8 if kind == "missed" else 1.3))
            ax.set_xticks([])
            ax.set_yticks([])
            head = f"image {images.image_ids[i]}: {why}\n" if r == 0 else ""
            ax.set_title(f"{head}TP {int(tp.sum())} · FP {int(fp.sum())} · missed {int(missed.sum())} "
                         f"(score ≥ {threshold:.2f})", fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    handles = [Line2D([], [], color=colour, ls=style, lw=1.6, label=name) for colour, style, name in KINDS.values()]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{title}\n{textwrap.fill(RULE, 45 * n)}", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(models: list[tuple[str, Predicted, list]], numbers: list[dict], title: str, path: Path) -> None:
    """Precision against recall and F1 against score threshold, one line per model on each axis."""
    plt = _pyplot()
    fig, (pr, f1) = plt.subplots(1, 2, figsize=(9, 3.8))
    for (label, p, matched), num, colour in zip(models, numbers, MODEL_COLOURS):
        c = matching.curve(matched)
        name = label.split(" (")[0]
        n_classes = len({int(x) for m in matched for x in m.gt_labels})
        ap = ("no objects" if not math.isfinite(num["ap50"]) else f"AP50 {num['ap50']:.3f}" if n_classes <= 1 else
              f"mAP50 {num['ap50']:.3f}, the mean of {n_classes} classes' APs (the curve pools them)")
        pr.plot(c.recall, c.precision, color=colour, lw=1.6, label=f"{name}: {ap}")
        pr.plot(num["recall"], num["precision"], "o", color=colour, ms=6)
        f1.plot(c.thresholds, c.f1, color=colour, lw=1.6, label=f"{name}: F1 {num['f1']:.3f} at {p.threshold:.2f} "
                f"({p.threshold_from})")
        f1.axvline(p.threshold, color=colour, ls=":", lw=1)
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall (IoU 0.5)")
    f1.set(xlabel="score threshold", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02), title="F1 against score threshold")
    for ax in (pr, f1):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}; dots and dotted lines: each model's operating threshold (legend: where it is from)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
