"""detector/matching.py on hand-made detections: the matching COCO does, the AP the evaluator
reports, and the F1-optimal operating threshold, with values worked out by hand."""
import math

import numpy as np
import pytest
import torch

from detector import matching

GT = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]


def test_one_object_matches_one_detection_the_highest_scored_and_a_miss_stays_missed():
    # Two detections on object 0 (the lower-scored one overlaps it more), one on object 1 at IoU
    # exactly 0.5 (its upper half), none on object 2, and a false alarm.
    boxes = [[0, 0, 10, 10.5], [0, 0, 10, 10], [20, 20, 30, 25], [60, 60, 70, 70]]
    m = matching.match(boxes, [0.9, 0.8, 0.7, 0.6], GT)
    assert m.gt_index.tolist() == [0, -1, 1, -1]  # the duplicate is a false positive, whatever its IoU
    assert np.isnan(m.found_by[2]) and m.found_by[:2].tolist() == [0.9, 0.7]
    tp, fp, missed = m.at(0.65)
    assert tp.tolist() == [True, False, True, False] and fp.tolist() == [False, True, False, False]
    assert missed.tolist() == [False, False, True]
    tp, fp, missed = m.at(0.75)  # object 1's detection is below the threshold: the object is missed
    assert tp.sum() == 1 and fp.sum() == 1 and missed.tolist() == [False, True, True]


def test_a_detection_matches_only_objects_of_its_class():
    m = matching.match([[0, 0, 10, 10]], [0.9], [[0, 0, 10, 10]], labels=[2], gt_labels=[1])
    assert m.gt_index.tolist() == [-1] and np.isnan(m.found_by[0])
    with pytest.raises(ValueError, match="2 boxes, 1 scores"):
        matching.match([[0, 0, 1, 1], [0, 0, 1, 1]], [0.5], GT)


def test_the_f1_optimal_threshold_by_hand():
    # Scores and whether each is a true positive, over two images with 4 objects in all:
    #   0.9 TP, 0.8 FP, 0.7 TP, 0.6 TP, 0.3 FP. Keeping >= 0.6: P 3/4, R 3/4, F1 0.75 (the best:
    #   >= 0.9 gives P 1, R 1/4, F1 0.4; >= 0.7: P 2/3, R 1/2, F1 0.571; >= 0.3: P 3/5, R 3/4, F1 0.667).
    a = matching.match([[0, 0, 10, 10], [100, 100, 110, 110], [20, 20, 30, 30]], [0.9, 0.8, 0.7], GT[:2])
    b = matching.match([[0, 0, 10, 10], [50, 50, 60, 60]], [0.6, 0.3], [[0, 0, 10, 10], [80, 80, 90, 90]])
    op = matching.operating_point([a, b])
    assert op.threshold == 0.6 and op.f1 == pytest.approx(0.75) and (op.precision, op.recall) == (0.75, 0.75)
    at = matching.operating_point([a, b], threshold=0.65)  # a given threshold is applied, not chosen
    assert at.threshold == 0.65 and at.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert matching.operating_point([a, b], threshold=0.95).f1 == 0.0
    none = matching.operating_point([matching.match([[60, 60, 70, 70]], [0.9], GT)])
    assert math.isnan(none.threshold) and none.f1 == 0.0  # nothing found: no threshold to choose


def test_tied_scores_are_one_point_of_the_curve():
    # Two detections at 0.5, one TP one FP: a threshold keeps both or neither.
    m = matching.match([[0, 0, 10, 10], [60, 60, 70, 70]], [0.5, 0.5], GT[:1])
    c = matching.curve([m])
    assert c.thresholds.tolist() == [0.5] and c.precision.tolist() == [0.5] and c.recall.tolist() == [1.0]


def _random_case(rng, n_images=6, classes=(1, 2), objects=None):
    """Images with 3-8 objects each (or `objects`), of two classes, detections near some of them,
    duplicates and false alarms, with random scores."""
    preds, gts = [], []
    for _ in range(n_images):
        n = objects or rng.integers(3, 9)
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(6, 20, (n, 2))
        g = np.c_[xy, xy + wh]
        gl = rng.choice(classes, n)
        p, pl = [], []
        for box, lab in zip(g, gl):
            for _ in range(rng.integers(0, 3)):  # 0 (a miss), 1 or 2 (a duplicate) detections
                jitter = rng.normal(0, 2.5, 4)
                p.append(box + jitter)
                pl.append(lab if rng.random() > 0.1 else 3 - lab)  # now and then the wrong class
        for _ in range(rng.integers(0, 3)):  # false alarms
            q = rng.uniform(0, 200, 2)
            p.append(np.r_[q, q + rng.uniform(6, 20, 2)])
            pl.append(rng.choice(classes))
        p = np.array(p).reshape(-1, 4)
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 1)
        preds.append({"boxes": torch.tensor(p, dtype=torch.float32), "scores": torch.tensor(rng.uniform(0.05, 1, len(p)), dtype=torch.float32),
                      "labels": torch.tensor(pl, dtype=torch.int64)})
        gts.append({"boxes": torch.tensor(g, dtype=torch.float32), "labels": torch.tensor(gl, dtype=torch.int64)})
    return preds, gts


def _evaluators_map50(preds, gts) -> float:
    """mAP50 as the engine computes it: torchmetrics with the faster_coco_eval backend."""
    from torchmetrics.detection import MeanAveragePrecision

    ref = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval",
                               max_detection_thresholds=[1, 10, 100])
    ref.update(preds, gts)
    return float(ref.compute()["map_50"])


def _pycocotools_map50(preds, gts) -> float:
    """mAP50 of pycocotools' COCOeval on the same boxes, written as COCO files."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]  # noqa: E731
    anns, dets = [], []
    for i, (p, g) in enumerate(zip(preds, gts), 1):
        for b, c in zip(g["boxes"].tolist(), g["labels"].tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": xywh(b), "iscrowd": 0,
                         "area": (b[2] - b[0]) * (b[3] - b[1])})
        for b, c, sc in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist()):
            dets.append({"image_id": i, "category_id": c, "bbox": xywh(b), "score": sc})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in range(1, len(gts) + 1)], "annotations": anns,
                      "categories": [{"id": 1}, {"id": 2}]}
        gt.createIndex()
        e = COCOeval(gt, gt.loadRes(dets), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return float(e.stats[1])


def _matched(preds, gts):
    return [matching.match(p["boxes"].numpy(), p["scores"].numpy(), g["boxes"].numpy(), p["labels"].numpy(),
                           g["labels"].numpy()) for p, g in zip(preds, gts)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_equals_the_evaluators_map50(seed):
    """The area under our precision-recall curves is the mAP50 faster_coco_eval reports (the
    engine's evaluator), on hand-made detections with duplicates, misses, false alarms and wrong classes."""
    preds, gts = _random_case(np.random.default_rng(seed))
    expected = _evaluators_map50(preds, gts)
    assert 0.1 < expected < 0.95  # a case with something to get wrong
    assert matching.average_precision(_matched(preds, gts)) == pytest.approx(expected, abs=1e-6)


def test_at_a_recall_of_exactly_k_in_100_the_evaluator_and_pycocotools_differ_and_both_are_reproduced():
    """Four images of 10 objects of one class: recall steps of 1/40 land on the 101 recall points.
    torchmetrics takes those points from a float32 linspace, pycocotools from a float64 one, and
    their mAP50 differ; with each one's points our AP is each one's number."""
    preds, gts = _random_case(np.random.default_rng(4), n_images=4, classes=(1,), objects=10)
    ours, theirs, coco = (matching.average_precision(_matched(preds, gts)), _evaluators_map50(preds, gts),
                          _pycocotools_map50(preds, gts))
    assert abs(theirs - coco) > 1e-3  # the two references disagree here
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert matching.average_precision(_matched(preds, gts), matching.COCO_RECALL_POINTS) == pytest.approx(coco, abs=1e-9)


def test_tied_scores_give_the_evaluators_ap_in_either_order():
    """One image, 2 objects; detections at 0.9 (hit), then 0.5 (hit) and 0.5 (false alarm) in both
    orders: COCO keeps a point per detection in the given order, so the two orders differ (1.0 and
    (51 + 50 x 2/3) / 101), and our AP is the evaluator's in each."""
    gt = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.ones(2, dtype=torch.int64)}
    for boxes, expected in (([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], 1.0),
                            ([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], (51 + 50 * 2 / 3) / 101)):
        pred = {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor([0.9, 0.5, 0.5]),
                "labels": torch.ones(3, dtype=torch.int64)}
        assert _evaluators_map50([pred], [gt]) == pytest.approx(expected, abs=1e-6)
        assert matching.average_precision(_matched([pred], [gt])) == pytest.approx(expected, abs=1e-6)
