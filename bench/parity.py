"""Accuracy parity: the project's training engine against a bare torchvision loop, and what each
augmentation does to a short run.

    .venv/bin/python bench/parity.py [--epochs 6] [--seeds 0 1 2] [--datasets embedded large]
                                     [--part parity|augment|both] [--augments none flips ...]
                                     [--threads 2] [--out bench/out/parity.json]

Parity. For each dataset and seed, two loops train the same model from the same initial weights
(built by `detector.model.build_model` after `torch.manual_seed(seed)`, as `fit` does; checked
equal) on the same train/validation split (split seed 0, whatever the training seed), with the same
hyperparameters and schedule (SGD, linear warm-up then cosine to zero, stepped per iteration; no
augmentation, no gradient clipping, no AMP):
- project: `detector.engine.fit`, the loop every search trial runs;
- bare: a plain loop in the style of torchvision's references/detection (shuffled batches, loss =
  sum of the four losses, backward, step, scheduler step), written here without the engine.
Both are scored after every epoch in two independent ways: the project's `evaluate` (torchmetrics
with faster-coco-eval) and pycocotools' own COCOeval on detections made here, with `maxDets` raised
to cover the most objects in any validation image (pycocotools counts at most `maxDets[-1]` per
image; its mAP50 is `stats[1]`).

Same random streams (`--part same-rng`): the bare loop started each epoch as `fit` starts it
(the same global seed, the same shuffling generator): the two must give the same numbers, which
shows that what separates their curves in the parity part is the random streams alone.

Augmentation. The project's loop on the same runs with flips, rot90, and both (the defaults), scored
by the project's evaluation; "none" is the parity part's project loop. Other settings: --augments.

Datasets: `embedded` (the synthetic dataset search.run uses by default: 48 images of 160 px, tens
to over a hundred objects of 4-24 px each) and `large` (same renderer and size, few larger objects:
16-64 px, at most 15 per image). Prints one JSON object; bench/RESULTS.md has the tables.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector import config as C  # noqa: E402
from detector import synth  # noqa: E402
from detector.data import DetectionDataset, collate, load_splits  # noqa: E402
from detector.engine import Setup, evaluate, fit, load_checkpoint  # noqa: E402
from detector.model import build_model, detections_per_img  # noqa: E402

DATASETS = {"embedded": {}, "large": {"object_px": (16.0, 64.0), "objects_per_kpx": (0.2, 0.6)}}
# The demo space's fixed fields (spaces/demo.yaml) and one point of its searched ranges.
BASE = dict(backbone="resnet18", version="v1", weights="none", min_size=160, max_size=160, anchor_sizes="small",
            box_batch_size_per_image=32, rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
            rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300, batch_size=4, num_workers=0,
            optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_epochs=0.5, warmup_factor=0.001,
            schedule="cosine", clip_grad_norm=None, amp=False, hflip=False, vflip=False, rot90=False)
AUGMENTS = {"none": {}, "hflip": {"hflip": True}, "vflip": {"vflip": True}, "flips": {"hflip": True, "vflip": True},
            "rot90": {"rot90": True}, "flips+rot90": {"hflip": True, "vflip": True, "rot90": True},
            "scale_jitter": {"scale_jitter": [0.75, 1.33]}}
SPLIT_SEED = 0


# ----------------------------------------------------------------------------------------------
# Scoring with pycocotools, independent of the project's evaluation


@torch.no_grad()
def pycocotools_map50(model, val, channels: int = 1) -> float:
    """AP at IoU 0.5 (COCOeval.stats[1]) of the model's detections on `val`, by pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model.eval()
    images, anns, dets = [], [], []
    for i in range(len(val)):
        img, target = DetectionDataset(val, channels)[i]
        h, w = img.shape[-2:]
        images.append({"id": i + 1, "width": int(w), "height": int(h)})
        for b, lab in zip(target["boxes"].tolist(), target["labels"].tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab), "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
        out = model([img])[0]
        for b, s, lab in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            dets.append({"image_id": i + 1, "category_id": int(lab), "score": float(s),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c} for c in sorted({a["category_id"] for a in anns})]}
    gt.createIndex()
    if not dets:
        return 0.0
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    most = max(np.bincount([a["image_id"] for a in anns]).max(), max(np.bincount([d["image_id"] for d in dets]).max(), 1))
    ev.params.maxDets = [1, 10, int(max(100, most))]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[1])


# ----------------------------------------------------------------------------------------------
# The two loops


def cfg_for(seed: int, epochs: int, **changes) -> C.TrainConfig:
    return C.from_dict({**BASE, "epochs": epochs, "seed": seed, **changes}, source="bench/parity.py")


def project_loop(cfg: C.TrainConfig, train, val, work: Path, score_coco: bool) -> dict:
    """`detector.engine.fit`; after each epoch the checkpoint's weights are also scored by pycocotools."""
    curves = {"project_eval": [], "pycocotools": [], "loss": []}
    setup = Setup.create(cfg, train, "cpu")
    scorer = build_model(cfg, setup.stats, load_weights=False, image_scale=setup.image_scale)

    def on_epoch(m, ckpt_path):
        curves["project_eval"].append(m["map50"])
        curves["loss"].append(m["loss"])
        if score_coco:
            scorer.load_state_dict(load_checkpoint(ckpt_path)["model"])
            curves["pycocotools"].append(pycocotools_map50(scorer, val, cfg.in_channels))

    t0 = time.perf_counter()
    fit(cfg, train, val, work, device="cpu", on_epoch=on_epoch)
    curves["wall_s"] = round(time.perf_counter() - t0, 1)
    return curves


def initial_weights(cfg: C.TrainConfig, train) -> dict:
    """The weights both loops start from: the model built right after torch.manual_seed(cfg.seed)."""
    setup = Setup.create(cfg, train, "cpu")
    torch.manual_seed(cfg.seed)
    return build_model(cfg, setup.stats, image_scale=setup.image_scale).state_dict()


def bare_loop(cfg: C.TrainConfig, train, val, engine_rng: bool = False, score_coco: bool = True) -> dict:
    """A plain torchvision training loop with the same model, data, hyperparameters and schedule.

    Its random streams (batch order; the RPN's and box head's sampling of anchors and proposals,
    which draw from torch's global generator) are its own, unless `engine_rng`: then each epoch
    starts them as `fit` does (torch.manual_seed(seed * 1_000_003 + epoch); the permutation of
    detector.data.EpochSampler, from a generator seeded seed * 7919 + epoch), and the two loops
    must compute the same numbers: whatever else the engine does changes nothing."""
    setup = Setup.create(cfg, train, "cpu")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, setup.stats, image_scale=setup.image_scale)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    items = [DetectionDataset(train, cfg.in_channels)[i] for i in range(len(train))]
    iters = math.ceil(len(items) / cfg.batch_size)
    warm, total = round(cfg.warmup_epochs * iters), cfg.epochs * iters

    def factor(it: int) -> float:  # linear warm-up from warmup_factor, then cosine to zero
        w = 1.0 if it >= warm else cfg.warmup_factor + (1 - cfg.warmup_factor) * it / warm
        return w * 0.5 * (1 + math.cos(math.pi * min(it, total) / total))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    val_loader = torch.utils.data.DataLoader(DetectionDataset(val, cfg.in_channels), batch_size=cfg.batch_size,
                                             collate_fn=collate)
    curves = {"project_eval": [], "pycocotools": [], "loss": []}
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if engine_rng:
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)
            g = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        else:
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(items), generator=g).tolist()
        losses = []
        for k in range(0, len(order), cfg.batch_size):
            batch = [items[i] for i in order[k:k + cfg.batch_size]]
            loss = sum(model([im for im, _ in batch],
                             [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in batch]).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        curves["loss"].append(statistics.mean(losses))
        curves["project_eval"].append(evaluate(model, val_loader, setup, detections_per_img(cfg, setup.stats))["map50"])
        if score_coco:
            curves["pycocotools"].append(pycocotools_map50(model, val, cfg.in_channels))
    curves["wall_s"] = round(time.perf_counter() - t0, 1)
    return curves


# ----------------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4), "max": round(max(values), 4)}


def agreement(project: list[list[float]], bare: list[list[float]]) -> dict:
    """Per epoch: the difference of the two loops' means over seeds, and the larger of their ranges
    (max - min over seeds). The loops agree where every difference is within that spread."""
    rows = []
    for e, (p, b) in enumerate(zip(zip(*project), zip(*bare)), start=1):
        diff = statistics.mean(p) - statistics.mean(b)
        rng = max(max(p) - min(p), max(b) - min(b))
        rows.append({"epoch": e, "project_mean": round(statistics.mean(p), 4), "bare_mean": round(statistics.mean(b), 4),
                     "difference": round(diff, 4), "seed_range": round(rng, 4), "within": abs(diff) <= rng})
    return {"per_epoch": rows, "agree": all(r["within"] for r in rows)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--part", choices=("parity", "augment", "both", "same-rng"), default="both",
                   help="same-rng: the bare loop with the engine's random streams against fit (must be equal)")
    # `none` is the parity part's project loop (the same configuration and seeds): not run again by default.
    p.add_argument("--augments", nargs="+", default=["flips", "rot90", "flips+rot90"], choices=list(AUGMENTS))
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 each for two runs side by side)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "parity.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    out = {"benchmark": "parity", "epochs": a.epochs, "seeds": a.seeds, "base": BASE, "threads": torch.get_num_threads(),
           "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.datasets:
            data = synth.write_dataset(Path(tmp) / name, seed=0, **DATASETS[name])
            train, val, _ = load_splits(str(data), val_fraction=0.25, seed=SPLIT_SEED)
            counts = [len(b) for b in val.boxes]
            res = out["datasets"][name] = {"train_images": len(train), "val_images": len(val),
                                           "val_objects_per_image": [min(counts), max(counts)],
                                           "median_object_px": round(float(np.median(np.concatenate(
                                               [np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) for b in train.boxes]))), 1)}
            if a.part in ("parity", "both"):
                runs = {"project": [], "bare": []}
                for seed in a.seeds:
                    cfg = cfg_for(seed, a.epochs)
                    w = initial_weights(cfg, train)
                    assert all(torch.equal(w[k], v) for k, v in initial_weights(cfg, train).items())
                    runs["project"].append(project_loop(cfg, train, val, Path(tmp) / f"{name}-p{seed}", True))
                    runs["bare"].append(bare_loop(cfg, train, val))
                    print(f"{name} seed {seed}: project {runs['project'][-1]['project_eval']} "
                          f"bare {runs['bare'][-1]['project_eval']}", file=sys.stderr, flush=True)
                res["parity"] = {
                    "runs": runs,
                    "by_project_eval": agreement([r["project_eval"] for r in runs["project"]],
                                                 [r["project_eval"] for r in runs["bare"]]),
                    "by_pycocotools": agreement([r["pycocotools"] for r in runs["project"]],
                                                [r["pycocotools"] for r in runs["bare"]]),
                    "scorers_differ_by_at_most": float(max(abs(x - y) for r in runs["project"] + runs["bare"]
                                                           for x, y in zip(r["project_eval"], r["pycocotools"])))}
            if a.part == "same-rng":
                res["same_rng"] = []
                for seed in a.seeds:
                    cfg = cfg_for(seed, a.epochs)
                    pr = project_loop(cfg, train, val, Path(tmp) / f"{name}-s{seed}", False)
                    ba = bare_loop(cfg, train, val, engine_rng=True, score_coco=False)
                    res["same_rng"].append({
                        "seed": seed, "project": pr, "bare": ba,
                        "max_abs_diff_map50": max(abs(x - y) for x, y in zip(pr["project_eval"], ba["project_eval"])),
                        "max_rel_diff_loss": max(abs(x - y) / abs(x) for x, y in zip(pr["loss"], ba["loss"]))})
                    print(f"{name} seed {seed} same rng: map50 {pr['project_eval']} vs {ba['project_eval']}",
                          file=sys.stderr, flush=True)
            if a.part in ("augment", "both"):
                res["augment"] = {}
                for aug in a.augments:
                    finals, curves = [], []
                    for seed in a.seeds:
                        c = project_loop(cfg_for(seed, a.epochs, **AUGMENTS[aug]), train, val,
                                         Path(tmp) / f"{name}-{aug}-{seed}", False)
                        curves.append(c["project_eval"])
                        finals.append(c["project_eval"][-1])
                    res["augment"][aug] = {"final_map50": spread(finals), "best_map50": spread([max(c) for c in curves]),
                                           "curves": curves}
                    print(f"{name} {aug}: final map50 {spread(finals)}", file=sys.stderr, flush=True)
    out["wall_s"] = round(time.time() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "datasets"} | {"out": a.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
