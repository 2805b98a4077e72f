"""Detect objects in a folder of images and write COCO-format detections.

    python -m detector.predict --checkpoint runs/train/model.pt --images DIR --out detections.json
                               [--score-thresh 0.05] [--device cpu]

The output is a COCO results list ({image_id, category_id, bbox [x, y, w, h], score}) plus, beside
it, DIR's image list (`<out>.images.json`) so it can be scored against annotations later.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import UnidentifiedImageError

from detector.data import Report, decode_image, to_tensor
from detector.config import ConfigError
from detector.engine import detect, model_from_checkpoint
from detector.precision import amp_dtype

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m detector.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--score-thresh", type=float, default=None, help="default: the model's box_score_thresh")
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, class_names = model_from_checkpoint(a.checkpoint, device)
    try:
        dtype = amp_dtype(cfg.amp, device)  # the precision the model was evaluated in
    except ConfigError as e:
        print(f"error: {a.checkpoint}: {e}", file=sys.stderr)
        return 2
    thresh = cfg.box_score_thresh if a.score_thresh is None else a.score_thresh
    files = sorted(f for f in Path(a.images).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        print(f"error: {a.images}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})", file=sys.stderr)
        return 2
    report, results, images = Report(), [], []
    for image_id, f in enumerate(files, start=1):
        try:
            arr, rng = decode_image(f, report)
        except (OSError, UnidentifiedImageError, ValueError):
            print(f"skipped unreadable image {f}", file=sys.stderr)
            continue
        x = to_tensor(arr, rng)
        x = x.expand(3, -1, -1) if cfg.in_channels == 3 else x
        out = detect(model, [x], device, dtype)[0]
        images.append({"id": image_id, "file_name": str(f.relative_to(a.images)), "height": arr.shape[0],
                       "width": arr.shape[1]})
        for box, label, score in zip(out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist()):
            if score < thresh:
                continue
            x0, y0, x1, y1 = box
            results.append({"image_id": image_id, "category_id": int(label), "score": round(score, 5),
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]})
    out_path = Path(a.out)
    out_path.write_text(json.dumps(results))
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    out_path.with_suffix(".images.json").write_text(json.dumps({"images": images, "categories": cats}))
    print(f"{len(results)} detections in {len(images)} images -> {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
