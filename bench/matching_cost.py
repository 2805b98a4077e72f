"""What the operating point adds to every evaluation (issue 30): the per-image seconds of
detector/matching.py (matching at IoU 0.5, then the F1-optimal threshold over the images) against
those of the mAP the engine already computes (torchmetrics' MeanAveragePrecision, faster_coco_eval
backend, update and compute), on the same generated detections.

    python bench/matching_cost.py [--objects 10 100 300] [--images 20]

Each image holds K objects of 6-20 px in 1,000 x 1,000 px; the detections are K jittered copies
(some off by more than IoU 0.5 allows) and K / 2 false alarms, with random scores. One JSON object
on stdout: per K, milliseconds per image of each and their ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector import matching  # noqa: E402


def case(rng, k: int):
    xy = rng.uniform(0, 980, (k, 2))
    gt = np.c_[xy, xy + rng.uniform(6, 20, (k, 2))]
    found = gt + rng.normal(0, 2, gt.shape)
    q = rng.uniform(0, 980, (k // 2, 2))
    alarms = np.c_[q, q + rng.uniform(6, 20, (k // 2, 2))]
    boxes = np.r_[found, alarms]
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes.astype(np.float32), rng.uniform(0.05, 1, len(boxes)).astype(np.float32), gt.astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, nargs="+", default=[10, 100, 300])
    p.add_argument("--images", type=int, default=20)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    out = {"images": a.images, "per_objects": {}}
    for k in a.objects:
        cases = [case(rng, k) for _ in range(a.images)]
        t0 = time.perf_counter()
        matched = [matching.match(b, s, g) for b, s, g in cases]
        op = matching.operating_point(matched)
        t_match = time.perf_counter() - t0
        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval",
                                      max_detection_thresholds=[1, 10, max(100, 2 * k)])
        t0 = time.perf_counter()
        for b, s, g in cases:
            metric.update([{"boxes": torch.from_numpy(b), "scores": torch.from_numpy(s),
                            "labels": torch.ones(len(b), dtype=torch.long)}],
                          [{"boxes": torch.from_numpy(g), "labels": torch.ones(len(g), dtype=torch.long)}])
        m = metric.compute()
        t_map = time.perf_counter() - t0
        out["per_objects"][k] = {"detections_per_image": len(cases[0][0]),
                                 "matching_ms_per_image": round(1000 * t_match / a.images, 2),
                                 "map_ms_per_image": round(1000 * t_map / a.images, 2),
                                 "ratio": round(t_match / t_map, 3),
                                 "ap50_ours": round(matching.average_precision(matched), 5),
                                 "map50_torchmetrics": round(float(m["map_50"]), 5), "f1": round(op.f1, 4)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
