"""Detect objects in a folder of images and write COCO-format detections.

    python -m detector.predict --checkpoint best.pt --images DIR --out detections.json
                               [--data annotations.json] [--score-thresh 0.05] [--batch-size 4] [--device cpu]

The output is a COCO results list ({image_id, category_id, bbox [x, y, w, h], score}). Its
`category_id`s are the ones the training annotation file gave its categories (kept in the model
file), or, with `--data`, that file's ids of the same category names. Its `image_id`s are, with
`--data` (a COCO file listing the images), that file's ids, images matched by file name (the path
relative to DIR, else the bare name when it is unique): pycocotools' COCOeval scores the output
against that file directly; images it does not list are not detected, and are named. Without
`--data`, image ids number DIR's images 1..N in path order, and `<out>.images.json` beside the
output lists them with the categories, a COCO file to score against later.

Detections are kept from `--score-thresh`, by default the model's operating threshold: the score
that maximised F1 on validation at the epoch the model is from (`score_threshold` in the model file,
detector/matching.py), or its `box_score_thresh` when the file has none. To score the output with
COCOeval, keep every detection: `--score-thresh 0` (COCO's AP needs the low-scored ones too).

Images run in batches on the model's device at the precision it was trained and evaluated in
(its configuration's `amp`), with a progress bar on standard error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import UnidentifiedImageError
from tqdm import tqdm

from detector.config import ConfigError
from detector.data import IMAGE_SUFFIXES, Report, decode_image, to_tensor
from detector.engine import detect, model_from_checkpoint
from detector.precision import amp_dtype

class InputError(ValueError):
    """An input predict cannot use; the message names the file and the rule."""


def image_files(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def ids_from_annotations(path: Path, files: list[Path], folder: Path) -> tuple[dict[Path, int], list[Path], dict]:
    """({image file: the COCO file's image id}, files it does not list, {category name: its id}).
    A file matches an entry whose `file_name` is its path relative to `folder`, else one whose
    bare name is the file's own when only one entry has that name."""
    try:
        coco = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable COCO annotation file ({e})") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise InputError(f"{path}: key 'images' must be a list (COCO detection format)")
    by_path, by_name = {}, {}
    for im in coco["images"]:
        name = Path(str(im.get("file_name", "")))
        by_path[name.as_posix()] = im["id"]
        by_name.setdefault(name.name, []).append(im["id"])
    ids, unmatched = {}, []
    for f in files:
        rel = f.relative_to(folder).as_posix()
        if rel in by_path:
            ids[f] = by_path[rel]
        elif len(by_name.get(f.name, [])) == 1:
            ids[f] = by_name[f.name][0]
        else:
            unmatched.append(f)
    cats = {c["name"]: c["id"] for c in coco.get("categories", []) if isinstance(c, dict) and "name" in c}
    return ids, unmatched, cats


def _batches(files: list[Path], size: int):
    for i in range(0, len(files), size):
        yield files[i:i + size]


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m detector.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="model.pt of detector.train, or best.pt of search.export")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--data", help="COCO file listing the images: its image and category ids are used")
    p.add_argument("--score-thresh", type=float, default=None, help="default: the model's operating threshold (F1-optimal on validation), else its box_score_thresh")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    if a.batch_size < 1:
        print(f"error: --batch-size {a.batch_size}: must be at least 1", file=sys.stderr)
        return 2
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    folder = Path(a.images)
    try:
        files = image_files(folder)
        ids, unmatched, file_cats = (ids_from_annotations(Path(a.data), files, folder) if a.data
                                     else ({f: i for i, f in enumerate(files, start=1)}, [], {}))
        loaded = model_from_checkpoint(a.checkpoint, device)
        dtype = amp_dtype(loaded.cfg.amp, device)  # the precision the model was evaluated in
    except (InputError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if unmatched:
        print(f"{len(unmatched)} image(s) in {folder} that {a.data} does not list (not detected): "
              + ", ".join(str(f.relative_to(folder)) for f in unmatched[:20])
              + (" ..." if len(unmatched) > 20 else ""), file=sys.stderr)
    model, cfg = loaded.model, loaded.cfg
    # Category ids: the --data file's, by class name, where it names the class; else the training file's.
    category_of = [file_cats.get(name, cid) for name, cid in zip(loaded.class_names, loaded.category_ids)]
    if a.score_thresh is not None:
        thresh = a.score_thresh
    elif loaded.score_threshold is not None:
        thresh = loaded.score_threshold
        print(f"keeping detections with score >= {thresh:.4f}, the model's operating threshold (F1-optimal on "
              f"validation); --score-thresh 0 keeps all, for COCO scoring", file=sys.stderr)
    else:
        thresh = cfg.box_score_thresh
    todo = [f for f in files if f in ids]
    report, results, images = Report(), [], []
    with tqdm(total=len(todo), unit="img", file=sys.stderr, disable=len(todo) <= a.batch_size) as bar:
        for batch in _batches(todo, a.batch_size):
            tensors, done = [], []
            for f in batch:
                try:
                    arr, rng = decode_image(f, report)
                except (OSError, UnidentifiedImageError, ValueError):
                    print(f"skipped unreadable image {f}", file=sys.stderr)
                    continue
                x = to_tensor(arr, rng)
                tensors.append(x.expand(3, -1, -1) if cfg.in_channels == 3 else x)
                done.append((f, arr.shape))
            outs = detect(model, tensors, device, dtype) if tensors else []
            for (f, (h, w)), out in zip(done, outs):
                image_id = ids[f]
                images.append({"id": image_id, "file_name": str(f.relative_to(folder)), "height": h, "width": w})
                for box, label, score in zip(out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist()):
                    if score < thresh:
                        continue
                    x0, y0, x1, y1 = box
                    results.append({"image_id": image_id, "category_id": int(category_of[label - 1]),
                                    "score": round(score, 5),
                                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]})
            bar.update(len(batch))
    out_path = Path(a.out)
    out_path.write_text(json.dumps(results))
    if not a.data:
        cats = [{"id": int(c), "name": n} for c, n in zip(category_of, loaded.class_names)]
        out_path.with_suffix(".images.json").write_text(json.dumps({"images": images, "categories": cats}))
    print(f"{len(results)} detections in {len(images)} images -> {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
