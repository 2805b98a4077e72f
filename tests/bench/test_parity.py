"""The training engine computes what a bare torchvision loop computes (bench/parity.py): started from
the same weights with the same random streams, `fit` and a plain loop written without the engine
give the same per-epoch loss and mAP50. Any change to the engine that alters the optimisation
(the schedule, a skipped or doubled step, the loss) fails here."""
from __future__ import annotations

import pytest

from bench import parity
from detector import config as C
from detector.data import load_splits
from detector.engine import fit
from tests.conftest import TINY


def test_fit_and_the_bare_loop_compute_the_same_numbers(tiny_data, tmp_path):
    train, val, _ = load_splits(str(tiny_data), val_fraction=0.3, seed=0)
    cfg = C.from_dict({**parity.BASE, **TINY, "epochs": 2, "seed": 3, "lr": 0.01}, source="test")
    seen = []
    fit(cfg, train, val, tmp_path, device="cpu", on_epoch=lambda m, ck: seen.append(m))
    bare = parity.bare_loop(cfg, train, val, engine_rng=True, score_coco=False)
    assert [m["loss"] for m in seen] == pytest.approx(bare["loss"], rel=1e-5)
    assert [m["map50"] for m in seen] == pytest.approx(bare["project_eval"], abs=1e-6)
    assert seen[-1]["loss"] < seen[0]["loss"]  # it trained
