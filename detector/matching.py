"""Detections matched to ground truth the way COCO evaluation matches them, and what follows from
the matching: precision-recall and F1 curves, AP at one IoU, and the operating score threshold.

The rule (pycocotools' `evaluateImg` at one IoU, without crowd regions or a per-image cap):
detections are taken highest score first; each takes, among the ground-truth objects of its class
that no earlier detection took, the one it overlaps most, if that IoU is at least `iou`; otherwise
it is a false positive. So a box matches at most one detection (a duplicate is a false positive) and
an object no detection took is a miss. `average_precision` then interpolates precision at 101
recall points as COCO does, so its mean over classes is the evaluator's mAP at that IoU: by default
at the recall points of the engine's evaluator (torchmetrics, `evaluator_recall_points`), or at
pycocotools' own (`COCO_RECALL_POINTS`); the two differ only where a class's recall is exactly k/100.

The engine scores every validation epoch with it (`operating_point`: the score threshold that
maximises F1, which becomes the model's `score_threshold`); search/detections.py draws its matches
and curves; detector.predict applies the threshold. numpy (torch only for the evaluator's points).
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, NamedTuple

import numpy as np

IOU = 0.5  # the study's metric is mAP50: matching at IoU 0.5
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # pycocotools' recall thresholds (float64)


@functools.lru_cache(maxsize=1)
def evaluator_recall_points() -> np.ndarray:
    """The recall thresholds of the engine's evaluator: torchmetrics' MeanAveragePrecision takes
    them from `torch.linspace(0, 1, 101)`, in float32 (0.07 is 0.07000000029802322), so where a
    class's recall is exactly k/100 it reads the next point of the curve, where pycocotools reads
    this one. The figures use these, so that their AP50 is the mAP50 the search reported."""
    import torch

    return np.array(torch.linspace(0.0, 1.0, 101).tolist())



def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), both xyxy: (N, M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ax0, ay0, ax1, ay1 = (a[:, k, None] for k in range(4))
    bx0, by0, bx1, by1 = (b[None, :, k] for k in range(4))
    inter = (np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
             * np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class Matched(NamedTuple):
    """One image's matching. Detections in the order given (not sorted)."""

    scores: np.ndarray    # (P,) each detection's score
    labels: np.ndarray    # (P,) each detection's class
    gt_index: np.ndarray  # (P,) the ground-truth object it matched, -1: a false positive
    gt_labels: np.ndarray  # (G,) each object's class
    found_by: np.ndarray  # (G,) score of the detection that matched it, nan: missed at any threshold

    def at(self, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true positives (P,), false positives (P,), missed objects (G,)) as masks, keeping the
        detections with score >= threshold. The matching does not depend on the threshold: a
        detection's match was decided among higher-scored ones only."""
        kept = self.scores >= threshold
        return kept & (self.gt_index >= 0), kept & (self.gt_index < 0), ~(self.found_by >= threshold)


def match(boxes, scores, gt_boxes, labels=None, gt_labels=None, iou: float = IOU) -> Matched:
    """Match one image's detections to its ground truth (the module docstring's rule)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    labels = np.ones(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    gt_labels = np.ones(len(gt_boxes), np.int64) if gt_labels is None else np.asarray(gt_labels, np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels) or len(gt_boxes) != len(gt_labels):
        raise ValueError(f"match: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels; "
                         f"{len(gt_boxes)} ground-truth boxes, {len(gt_labels)} labels: the counts must agree")
    # -1 where a pair can never match (another class), so a taken object is set to -1 too.
    ious = np.where(labels[:, None] == gt_labels[None, :], box_iou(boxes, gt_boxes), -1.0)
    gt_index = np.full(len(boxes), -1, np.int64)
    found_by = np.full(len(gt_boxes), np.nan)
    threshold = min(iou, 1 - 1e-10)  # as pycocotools: an IoU equal to the threshold matches
    if len(gt_boxes):
        could = ious.max(axis=1) >= threshold  # taking objects only lowers a row: the others never match
        for d in np.argsort(-scores, kind="mergesort"):  # highest score first; ties keep the given order
            if not could[d]:
                continue
            row = ious[d]
            g = len(row) - 1 - int(np.argmax(row[::-1]))  # the last of equal IoUs, as pycocotools' loop keeps it
            if ious[d, g] >= threshold:
                gt_index[d], found_by[g] = g, scores[d]
                ious[:, g] = -1.0  # taken
    return Matched(scores, labels, gt_index, gt_labels, found_by)


class Curve(NamedTuple):
    """Precision and recall after each detection, over images, highest score first: keeping the
    detections with score >= thresholds[i] gives precision[i] and recall[i]. Ties in score are one
    point (the last index of the run), since a threshold keeps all of them or none (`curve`'s
    `ties=False` keeps a point per detection, in COCO's order: what AP is computed from)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    n_objects: int

    @property
    def f1(self) -> np.ndarray:
        s = self.precision + self.recall
        return np.where(s > 0, 2 * self.precision * self.recall / np.where(s > 0, s, 1), 0.0)


def curve(images: Iterable[Matched], label: int | None = None, ties: bool = True) -> Curve:
    """The precision-recall curve of matched images, of one class (`label`) or of all (micro:
    every class's detections and objects pooled; the matching itself is always within a class).
    Tied scores are one point unless `ties` is False: then each detection is one, ordered as COCO
    orders them (by score, ties by image, then as given)."""
    scores, tp, n = [], [], 0
    for m in images:
        keep = np.ones(len(m.scores), bool) if label is None else m.labels == label
        scores.append(m.scores[keep])
        tp.append(m.gt_index[keep] >= 0)
        n += int(len(m.gt_labels) if label is None else (m.gt_labels == label).sum())
    s = np.concatenate(scores) if scores else np.zeros(0)
    t = np.concatenate(tp) if tp else np.zeros(0, bool)
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    ctp, cfp = np.cumsum(t), np.cumsum(~t)
    last_of_tie = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
    if not ties:
        last_of_tie[:] = True
    prec = ctp / np.maximum(ctp + cfp, 1)
    rec = ctp / n if n else np.zeros(len(s))
    return Curve(s[last_of_tie], prec[last_of_tie], rec[last_of_tie], n)


def _ap(c: Curve, points: np.ndarray) -> float:
    """COCO's interpolated AP of one class's curve at recall `points`; nan for a class without objects."""
    if not c.n_objects:
        return math.nan
    if not len(c.recall):
        return 0.0
    envelope = np.maximum.accumulate(c.precision[::-1])[::-1]  # best precision at this recall or more
    idx = np.searchsorted(c.recall, points, side="left")
    return float(np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0).mean())


def average_precision(images: list[Matched], recall_points: np.ndarray | None = None) -> float:
    """Mean over classes with objects of each class's AP at the matching's IoU (COCO's mAP at that
    IoU: by default as `detector.engine.evaluate` reports it, see the module docstring); nan when no
    image has an object."""
    points = evaluator_recall_points() if recall_points is None else recall_points
    classes = sorted({int(x) for m in images for x in m.gt_labels})
    aps = [_ap(curve(images, c, ties=False), points) for c in classes]  # COCO: a point per detection
    return float(np.mean(aps)) if aps else math.nan


class OperatingPoint(NamedTuple):
    threshold: float  # keep detections with score >= this; nan when no detection is a true positive
    f1: float
    precision: float
    recall: float


def operating_point(images: list[Matched], threshold: float | None = None) -> OperatingPoint:
    """The F1 of all classes pooled at `threshold`, or, without one, at the threshold that maximises
    it (the highest such score, i.e. the fewest detections, on a tie). Validation chooses the
    threshold; the test images are scored at the validation's choice."""
    c = curve(images)
    if threshold is not None:
        if math.isnan(threshold):
            return OperatingPoint(threshold, 0.0, 0.0, 0.0)
        kept = np.nonzero(c.thresholds >= threshold)[0]
        if not len(kept):
            return OperatingPoint(threshold, 0.0, 0.0, 0.0)
        i = kept[-1]
        return OperatingPoint(float(threshold), float(c.f1[i]), float(c.precision[i]), float(c.recall[i]))
    f1 = c.f1
    if not len(f1) or f1.max() <= 0:
        return OperatingPoint(math.nan, 0.0, 0.0, 0.0)
    i = int(np.argmax(f1))  # the first maximum: the highest threshold
    return OperatingPoint(float(c.thresholds[i]), float(f1[i]), float(c.precision[i]), float(c.recall[i]))
