"""The validation metrics a configuration can be selected by, and the one rule for its best epoch.

Every reader of a trial's per-epoch metrics (the engine choosing which epoch becomes `model.pt`
and counting patience, search.results writing `best_epoch`, search.export) asks `best_epoch`;
none of them compares metric values itself. Imports nothing heavy: search/ reads it too.
"""
from __future__ import annotations

import math
from typing import Iterable

# All maximised. `map50` is the study's metric; `iou_per_gt` / `iou_per_pred` are its IoU curves.
METRICS = ("map50", "map", "map75", "map_small", "iou_per_gt", "iou_per_pred")


def is_better(value: float, best: float) -> bool:
    """Whether an epoch's `value` replaces the `best` so far: strictly greater, so among tied epochs
    the earliest stays best (the cheaper model; what patience counts from). Non-finite never wins."""
    return math.isfinite(value) and (not math.isfinite(best) or value > best)


def best_epoch(history: Iterable[dict], metric: str) -> tuple[float, int]:
    """(best value, its epoch) over per-epoch metric dicts (each with "epoch"); (nan, 0) when no
    epoch has a finite `metric`. Ties go to the earliest epoch (`is_better`)."""
    best, epoch = math.nan, 0
    for h in sorted(history, key=lambda h: h["epoch"]):
        v = h.get(metric, math.nan)
        if v is not None and is_better(float(v), best):
            best, epoch = float(v), int(h["epoch"])
    return best, epoch
