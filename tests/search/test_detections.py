"""search/detections.py without Ray: the rule that chooses the images, each model's numbers at its
threshold, and the figures drawn from hand-made detections."""
import json

import numpy as np
import pytest

from detector.data import DecodedDataset
from search import detections
from search.detections import Predicted, choose_images


def test_images_are_chosen_by_the_stated_rule():
    counts = [0, 5, 2, 9, 3, 0]
    found = [[0, 4, 2, 5, 1, 0], [0, 1, 2, 5, 3, 0]]  # tuned, shared
    # The most objects: image 3. The median of the images with objects (5, 2, 9, 3) is 4: images 1
    # and 4 are as near, the first in the set's order wins. Of the rest (2, 4), the models differ
    # most on image 4 (1 vs 3 found); images 0 and 5 have no objects and are never shown.
    chosen = choose_images(counts, found, missed=[[0] * 6, [0] * 6])
    assert [i for i, _ in chosen] == [3, 1, 4]
    assert [why for _, why in chosen] == ["most objects (9)", "nearest the median count 4 (5)",
                                          "largest disagreement (found 1 vs 3 of 3)"]
    # Models that found as many on every image left: the next most objects, said so.
    assert choose_images(counts, [found[0], found[0]], [[0] * 6] * 2)[2] == (
        4, "the models found as many everywhere else; next most objects (3)")
    # One model: the third image is where it misses most.
    assert choose_images(counts, found[:1], [[0, 1, 0, 4, 2, 0]])[2] == (4, "most missed (2 of 3)")
    # Images without objects only when there are no others; fewer images than asked: all of them.
    assert [i for i, _ in choose_images([0, 0], [[0, 0]], [[0, 0]])] == [0, 1]
    assert [i for i, _ in choose_images([0, 4, 0], [[0, 1, 0]], [[0, 3, 0]])] == [1]


def _pool():
    """Two 64 x 64 images: three objects, then one."""
    rng = np.random.default_rng(0)
    boxes = [np.array([[4, 4, 14, 14], [30, 30, 40, 40], [50, 8, 60, 18]], np.float32),
             np.array([[10, 40, 20, 50]], np.float32)]
    return DecodedDataset(images=[rng.integers(0, 255, (64, 64), dtype=np.uint8) for _ in boxes],
                          ranges=[(0, 255)] * 2, boxes=boxes, labels=[np.ones(len(b), np.int64) for b in boxes],
                          file_names=["a.png", "b.png"], class_names=["object"], image_ids=[7, 9])


def _predicted(threshold=0.5):
    """Image a: two hits (0.9, 0.6; a duplicate of the first at 0.8) and a miss; image b: a false alarm
    at 0.7 and its object found at 0.3, under the threshold."""
    dets = [{"boxes": np.array([[4, 4, 14, 14], [5, 4, 14, 14], [30, 31, 40, 40]], np.float32),
             "scores": np.array([0.9, 0.8, 0.6], np.float32), "labels": np.ones(3, np.int64)},
            {"boxes": np.array([[40, 0, 50, 10], [10, 40, 20, 50]], np.float32),
             "scores": np.array([0.7, 0.3], np.float32), "labels": np.ones(2, np.int64)}]
    return Predicted(dets, threshold, "validation F1")


def test_a_model_s_numbers_at_its_threshold():
    pool, p = _pool(), _predicted()
    s = detections.summarise("tuned (trial x)", p, detections.match_all(pool, p))
    # Kept at 0.5: 0.9 (hit), 0.8 (the duplicate: a false positive), 0.6 (hit), 0.7 (false alarm).
    assert (s["true_positives"], s["false_positives"], s["missed"]) == (2, 2, 2)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(0.5) and s["threshold_from"] == "validation F1"
    # AP50 by hand: by score 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP, 0.3 TP: recall 1/4, 1/4, 1/4, 2/4, 3/4 with
    # precision 1, 1/2, 1/3, 1/2, 3/5. Interpolated: 1 up to recall 0.25, then 3/5 to 0.75, 0 after:
    # (26 points x 1 + 50 x 0.6) / 101.
    assert s["ap50"] == pytest.approx((26 + 50 * 0.6) / 101)


def test_the_figures_are_drawn_from_hand_made_detections(tmp_path):
    pool, p = _pool(), _predicted()
    matched = detections.match_all(pool, p)
    masks = [m.at(p.threshold) for m in matched]
    chosen = choose_images([3, 1], [[int(tp.sum()) for tp, _, _ in masks]], [[int(x.sum()) for _, _, x in masks]])
    detections.figure(pool, chosen, [("tuned", p.threshold, p.detections, masks)], "title", tmp_path / "f.png")
    shared = _predicted(0.25)
    numbers = [detections.summarise(n, q, detections.match_all(pool, q)) for n, q in (("tuned", p), ("shared", shared))]
    detections.curves([("tuned", p, matched), ("shared", shared, detections.match_all(pool, shared))], numbers,
                      "title", tmp_path / "c.png")
    for f in ("f.png", "c.png"):
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"
    json.dumps(numbers)  # what draw writes to <arm>.json
