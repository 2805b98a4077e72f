"""Evaluate a trained model on a dataset and print the metrics as JSON.

    python -m detector.evaluate --checkpoint runs/train/model.pt --data PATH [--images DIR] [--device cpu]

`f1`, `precision` and `recall` are at the model's operating threshold (`score_threshold`: the score
that maximised F1 on validation, kept in the model file), or at the best threshold on these images
when the file has none (then `score_threshold` is that one, chosen on the images it scores).
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from detector.config import ConfigError
from detector.data import DataError, DetectionDataset, collate, load_any, require_usable
from detector.engine import Setup, evaluate, model_from_checkpoint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m detector.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="model.pt or checkpoint.pt written by detector.train")
    p.add_argument("--data", required=True, help="COCO JSON, folder with annotations.json, or VOC folder")
    p.add_argument("--images", help="folder the image file names are relative to")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=4)
    a = p.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        loaded = model_from_checkpoint(a.checkpoint, device)
        model, cfg, class_names = loaded.model, loaded.cfg, loaded.class_names
        ds = load_any(a.data, a.images, class_names=class_names or None)
        require_usable(ds, a.data)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loader = torch.utils.data.DataLoader(DetectionDataset(ds, cfg.in_channels), batch_size=a.batch_size,
                                         collate_fn=collate)
    try:
        setup = Setup.create(cfg, ds, device)
    except ConfigError as e:
        print(f"error: {a.checkpoint}: {e}", file=sys.stderr)
        return 2
    metrics = evaluate(model, loader, setup, model.roi_heads.detections_per_img, loaded.score_threshold)
    metrics["images"] = len(ds)
    # Strict JSON (jq reads it): a value that is not a number, such as the threshold of a model that
    # found nothing, is null.
    print(json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in metrics.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
