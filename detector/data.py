"""Datasets: COCO and Pascal VOC in, one decoded in-memory dataset out, and a loud check of the data.

Every image is decoded once per process into a compact single-channel array (uint8, or uint16 for
16-bit images) and kept; bad data is found and counted before the first training step, with the
same rules the `check` command reports:

    python -m detector.data check --data annotations.json [--json]
    python -m detector.data synth --out DIR [--images N] [--size S] [--seed K]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from detector.model import DataStats

EXAMPLES = 5  # file names listed per problem


class DataError(ValueError):
    """The data cannot be used (no readable image, no object, unreadable annotation file...)."""


# Problem kinds: what the check reports and what loading does about each.
PROBLEMS = {
    "missing_image": "image file not found (image skipped)",
    "unreadable_image": "image file unreadable or corrupt (image skipped)",
    "duplicate_image_id": "image id used more than once (later entries skipped)",
    "unknown_category": "annotation with a category id not in `categories` (annotation dropped)",
    "unknown_image": "annotation for an image id not in `images` (annotation dropped)",
    "box_clipped": "box partly outside the image (clipped to the image)",
    "box_degenerate": "box with zero or negative width/height after clipping (dropped)",
    "no_objects": "image without objects (kept as a background-only image)",
    "rgb_converted": "colour image converted to greyscale (notice)",
}


@dataclass
class Report:
    """Counts and first examples of every problem found while loading."""

    counts: dict = field(default_factory=lambda: defaultdict(int))
    examples: dict = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, where: str, n: int = 1) -> None:
        self.counts[kind] += n
        if len(self.examples[kind]) < EXAMPLES and where not in self.examples[kind]:
            self.examples[kind].append(where)

    def as_dict(self) -> dict:
        return {k: {"count": self.counts[k], "examples": self.examples[k], "meaning": PROBLEMS[k]}
                for k in PROBLEMS if self.counts.get(k)}


@dataclass
class DecodedDataset:
    """Decoded images and their boxes, held once in memory (and shareable in Ray's object store).

    images[i]: (H, W) uint8 or uint16 array; ranges[i]: (low, high) intensities mapped to [0, 1];
    boxes[i]: (N, 4) float32 xyxy in px; labels[i]: (N,) int64 in 1..C (0 is background).
    """

    images: list
    ranges: list
    boxes: list
    labels: list
    file_names: list
    class_names: list
    image_ids: list
    report: Report = field(default_factory=Report)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "DecodedDataset":
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return DecodedDataset(pick(self.images), pick(self.ranges), pick(self.boxes), pick(self.labels),
                              pick(self.file_names), self.class_names, pick(self.image_ids), self.report)

    def stats(self) -> DataStats:
        sizes = np.concatenate([np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) for b in self.boxes]
                               or [np.zeros(0)])
        q = tuple(float(x) for x in np.quantile(sizes, [0.05, 0.5, 0.95])) if sizes.size else ()
        return DataStats(num_classes=len(self.class_names),
                         max_objects=max((len(b) for b in self.boxes), default=0), box_size_quantiles=q)

    def fingerprint(self) -> str:
        """Hash of pixels and boxes: identifies the data a result was obtained on. Computed once and
        kept, so a dataset fingerprinted before it is shared carries the value to every trial."""
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        for img, b, lab in zip(self.images, self.boxes, self.labels):
            h.update(img.tobytes())
            h.update(np.ascontiguousarray(b).tobytes())
            h.update(np.ascontiguousarray(lab).tobytes())
        self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def summary(self) -> dict:
        """The numbers the check prints: objects per image, box sizes, small-object counts."""
        per_image = np.array([len(b) for b in self.boxes]) if self.boxes else np.zeros(0, int)
        allb = np.concatenate(self.boxes) if self.boxes else np.zeros((0, 4), np.float32)
        w, h = allb[:, 2] - allb[:, 0], allb[:, 3] - allb[:, 1]
        qs = [0.05, 0.25, 0.5, 0.75, 0.95]
        quant = (lambda x: {f"q{int(q * 100):02d}": round(float(v), 1) for q, v in zip(qs, np.quantile(x, qs))}
                 if x.size else {})
        side = np.maximum(w, h)
        return {
            "images": len(self), "objects": int(per_image.sum()), "classes": list(self.class_names),
            "objects_per_image": {"min": int(per_image.min()) if per_image.size else 0,
                                  "median": float(np.median(per_image)) if per_image.size else 0.0,
                                  "max": int(per_image.max(initial=0))},
            "box_width_px": quant(w), "box_height_px": quant(h),
            "boxes_under_16px": int((side < 16).sum()), "boxes_under_32px": int((side < 32).sum()),
        }


# ----------------------------------------------------------------------------------------------
# Decoding


def decode_image(path: Path, report: Report) -> tuple[np.ndarray, tuple[float, float]]:
    """Read one image as a single-channel array and the intensity range that maps to [0, 1].

    8-bit grey: as is, range (0, 255). 16-bit grey: kept as uint16, range = the image's own
    min..max (its real dynamic range: a 12-bit sensor in a 16-bit file is not squashed into
    the bottom 6% of 0..65535, and nothing is clipped at 255). Colour: converted to grey (ITU-R 601).
    Raises OSError / UnidentifiedImageError for unreadable files.
    """
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im)
            if arr.dtype != np.uint16:  # mode I (int32) or F: rescale into uint16 by its range
                arr = arr.astype(np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = np.round((arr - lo) / max(hi - lo, 1e-12) * 65535).astype(np.uint16)
            arr = arr.astype(np.uint16, copy=False)
            lo, hi = float(arr.min()), float(arr.max())
            return np.ascontiguousarray(arr), (lo, hi if hi > lo else lo + 1.0)
        if im.mode not in ("L", "1"):
            report.add("rgb_converted", path.name)
        return np.ascontiguousarray(np.asarray(im.convert("L"), dtype=np.uint8)), (0.0, 255.0)


def to_tensor(img: np.ndarray, rng: tuple[float, float]) -> torch.Tensor:
    """(H, W) integer array -> (1, H, W) float32 tensor in [0, 1]."""
    lo, hi = rng
    t = torch.from_numpy(img.astype(np.float32))  # a new array: the source may be read-only shared memory
    return ((t - lo) / (hi - lo)).clamp_(0.0, 1.0).unsqueeze(0)


def _clean_boxes(raw: list, width: int, height: int, where: str, report: Report) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes (xyxy) to the image and flag the degenerate ones, counting both; -> (boxes, keep)."""
    if not raw:
        return np.zeros((0, 4), np.float32), np.zeros(0, bool)
    b = np.asarray(raw, dtype=np.float64).reshape(-1, 4)
    clipped = b.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    moved = np.any(clipped != b, axis=1)
    ok = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    if (moved & ok).any():
        report.add("box_clipped", where, int((moved & ok).sum()))
    if (~ok).any():
        report.add("box_degenerate", where, int((~ok).sum()))
    return clipped.astype(np.float32), ok


def _assemble(records: list, class_names: list, report: Report) -> DecodedDataset:
    """records: (path, image_id, raw xyxy boxes, labels) -> decoded dataset with every rule applied."""
    images, ranges, boxes, labels, names, ids = [], [], [], [], [], []
    for path, image_id, raw_boxes, raw_labels in records:
        where = path.name
        if not path.is_file():
            report.add("missing_image", str(path))
            continue
        try:
            img, rng = decode_image(path, report)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            report.add("unreadable_image", str(path))
            continue
        h, w = img.shape
        if raw_boxes:
            b, ok = _clean_boxes(raw_boxes, w, h, where, report)
            b, lab = b[ok], np.asarray(raw_labels, dtype=np.int64)[ok]
        else:
            b, lab = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        if len(b) == 0:
            report.add("no_objects", where)
        images.append(img)
        ranges.append(rng)
        boxes.append(b)
        labels.append(lab)
        names.append(str(path))
        ids.append(image_id)
    return DecodedDataset(images, ranges, boxes, labels, names, class_names, ids, report)


# ----------------------------------------------------------------------------------------------
# Formats


def _coco_path(data: str | os.PathLike) -> Path:
    p = Path(data)
    if p.is_dir():
        p = p / "annotations.json"
    if not p.is_file():
        raise DataError(f"{data}: no COCO annotation file (expected a .json file or a folder holding "
                        f"annotations.json)")
    return p


def load_coco(data: str | os.PathLike, images: str | os.PathLike | None = None,
              class_names: list | None = None) -> DecodedDataset:
    """A COCO detection JSON (file, or folder holding annotations.json). Image `file_name`s resolve
    relative to `images` if given, else to the JSON's folder. Category ids are remapped to
    contiguous labels 1..C in id order; `class_names` forces the order (for a validation file)."""
    path = _coco_path(data)
    try:
        coco = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{path}: key '{key}' must be a list (COCO detection format)")
    root = Path(images) if images else path.parent
    report = Report()
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    if class_names is None:
        class_names = [c["name"] for c in cats]
    label_of = {c["id"]: class_names.index(c["name"]) + 1 for c in cats if c["name"] in class_names}

    imgs, seen = {}, set()
    for im in coco["images"]:
        if im["id"] in seen:
            report.add("duplicate_image_id", f"id {im['id']}: {im.get('file_name')}")
            continue
        seen.add(im["id"])
        imgs[im["id"]] = im
    anns = defaultdict(list)
    for a in coco["annotations"]:
        if a.get("image_id") not in imgs:
            report.add("unknown_image", f"annotation {a.get('id')}: image_id {a.get('image_id')}")
            continue
        if a.get("category_id") not in label_of:
            report.add("unknown_category", f"{imgs[a['image_id']]['file_name']}: category_id {a.get('category_id')}")
            continue
        x, y, w, h = a["bbox"]
        anns[a["image_id"]].append(([x, y, x + w, y + h], label_of[a["category_id"]]))
    records = [(root / im["file_name"], iid, [b for b, _ in anns[iid]], [lab for _, lab in anns[iid]])
               for iid, im in imgs.items()]
    return _assemble(records, class_names, report)


def load_voc(folder: str | os.PathLike, images: str | os.PathLike | None = None,
             class_names: list | None = None) -> DecodedDataset:
    """A Pascal VOC folder: `Annotations/*.xml` (or XML files in the folder itself) and images in
    `JPEGImages/` (or `images`, or beside the XML). VOC boxes are 1-based inclusive pixel indices."""
    folder = Path(folder)
    ann_dir = folder / "Annotations" if (folder / "Annotations").is_dir() else folder
    xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        raise DataError(f"{folder}: no Pascal VOC .xml annotation files found")
    img_dir = Path(images) if images else (folder / "JPEGImages" if (folder / "JPEGImages").is_dir() else ann_dir)
    parsed, names = [], set()
    for x in xmls:
        try:
            root = ET.parse(x).getroot()
        except ET.ParseError as e:
            raise DataError(f"{x}: not valid XML: {e}") from None
        objs = []
        for o in root.iter("object"):
            bb = o.find("bndbox")
            name = (o.findtext("name") or "").strip()
            coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            objs.append((name, [coords[0] - 1, coords[1] - 1, coords[2], coords[3]]))
            names.add(name)
        parsed.append((img_dir / (root.findtext("filename") or x.stem + ".png"), x.stem, objs))
    class_names = class_names or sorted(names)
    report = Report()
    records = []
    for path, iid, objs in parsed:
        known = [(n, b) for n, b in objs if n in class_names]
        for n, _ in objs:
            if n not in class_names:
                report.add("unknown_category", f"{path.name}: {n}")
        records.append((path, iid, [b for _, b in known], [class_names.index(n) + 1 for n, _ in known]))
    return _assemble(records, class_names, report)


def load_any(data: str | os.PathLike, images=None, class_names=None) -> DecodedDataset:
    """COCO JSON (file or folder with annotations.json) or a Pascal VOC folder."""
    p = Path(data)
    if p.is_dir() and not (p / "annotations.json").exists() and (
            (p / "Annotations").is_dir() or any(p.glob("*.xml"))):
        return load_voc(p, images, class_names)
    return load_coco(p, images, class_names)


def require_usable(ds: DecodedDataset, source: str) -> None:
    """Raise DataError with one line saying why the data cannot train a detector."""
    if len(ds) == 0:
        raise DataError(f"{source}: no readable image")
    if sum(len(b) for b in ds.boxes) == 0:
        raise DataError(f"{source}: no object in any image")


def split(ds: DecodedDataset, val_fraction: float, seed: int) -> tuple[DecodedDataset, DecodedDataset]:
    """Deterministic train/validation split by seed and fraction (at least one image each)."""
    if len(ds) < 2:
        raise DataError(f"{len(ds)} image(s): need at least 2 to split into train and validation")
    order = np.random.default_rng(seed).permutation(len(ds))
    n_val = min(len(ds) - 1, max(1, int(round(len(ds) * val_fraction))))
    return ds.subset(sorted(order[n_val:])), ds.subset(sorted(order[:n_val]))


class Splits(NamedTuple):
    """The images a configuration is trained (`train`), chosen (`val`) and scored (`test`) on.
    `test` is None when there are no held-out test images."""

    train: DecodedDataset
    val: DecodedDataset
    test: DecodedDataset | None

    def fingerprint(self) -> str:
        """Identifies the three sets together: train-val[-test] fingerprints."""
        return "-".join(d.fingerprint() for d in self if d is not None)


def default_data_dir() -> Path:
    """Cache folder of the embedded synthetic dataset (generated once)."""
    root = Path(os.environ.get("SMALLOBJ_CACHE", Path.home() / ".cache" / "smallobj-search"))
    return root / "synth-default"


def ensure_default_data() -> Path:
    """Generate the embedded synthetic dataset into the cache once; return its annotations path."""
    from detector import synth

    out = default_data_dir()
    ann = out / "annotations.json"
    if not ann.is_file():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        synth.write_dataset(tmp)
        try:
            os.replace(tmp, out)  # atomic: a concurrent or crashed writer never leaves half a dataset
        except OSError:
            if not ann.is_file():
                raise
    return ann


def load_splits(data: str | None = None, *, val_data: str | None = None, test_data: str | None = None,
                images: str | None = None, val_fraction: float = 0.2, test_fraction: float = 0.0,
                seed: int = 0) -> Splits:
    """Train, validation and (optional) test datasets; the embedded synthetic dataset when `data` is
    None. Test images come from `test_data`, or are split off `data` first (`test_fraction` of all
    images, by `seed`); validation images come from `val_data`, or are split off what is left
    (`val_fraction` of all images, by the same seed). Raises DataError when the data is unusable;
    a test set without any object is refused for the same reason a training set would be."""
    data = data or str(ensure_default_data())
    train = load_any(data, images)
    require_usable(train, str(data))
    test = None
    if test_data:
        test = load_any(test_data, images, class_names=train.class_names)
        require_usable(test, f"{test_data} (test images)")
    elif test_fraction > 0:
        train, test = split(train, test_fraction, seed)
        require_usable(test, f"{data}: the {len(test)} test image(s) split off by test_fraction={test_fraction}")
        val_fraction = val_fraction / (1.0 - test_fraction)  # still a share of all images
    if val_data:
        val = load_any(val_data, images, class_names=train.class_names)
        if len(val) == 0:
            raise DataError(f"{val_data}: no readable image")
        return Splits(train, val, test)
    train, val = split(train, val_fraction, seed)
    return Splits(train, val, test)


# ----------------------------------------------------------------------------------------------
# torch side


class DetectionDataset(torch.utils.data.Dataset):
    """Decoded images as (image (C, H, W) float in [0, 1], target) pairs for torchvision.

    `augment(image, boxes, generator)` is applied per sample with a generator seeded by
    (seed, epoch, index), so results do not depend on the number of loader workers. The key is an
    index (the epoch is then the one `set_epoch` set) or an (epoch, index) pair, as `EpochSampler`
    yields: persistent worker processes hold their own copy of the dataset, so the epoch travels
    with each index.
    """

    def __init__(self, ds: DecodedDataset, channels: int = 1, augment: Callable | None = None, seed: int = 0):
        self.ds, self.channels, self.augment, self.seed, self.epoch = ds, channels, augment, seed, 0

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, key: "int | tuple[int, int]"):
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        img = to_tensor(self.ds.images[i], self.ds.ranges[i])
        boxes = torch.from_numpy(self.ds.boxes[i]).float()
        labels = torch.from_numpy(self.ds.labels[i]).long()
        if self.augment is not None:
            g = torch.Generator().manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF)
            img, boxes, keep = self.augment(img, boxes, g)
            labels = labels[keep]
        if self.channels == 3:
            img = img.expand(3, -1, -1)
        return img, {"boxes": boxes.reshape(-1, 4), "labels": labels, "image_id": i}


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled (epoch, index) keys for `DetectionDataset`: each epoch's order is a function of
    (seed, epoch) alone, so one loader serves a whole run and a resumed run draws the orders an
    uninterrupted one would have. Call `set_epoch` before iterating."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return iter([(self.epoch, i) for i in torch.randperm(self.n, generator=g).tolist()])


def collate(batch):
    return tuple(zip(*batch))


# ----------------------------------------------------------------------------------------------
# Command line


def _print_check(ds: DecodedDataset, usable: str | None) -> None:
    s = ds.summary()
    opi = s["objects_per_image"]
    print(f"images   {s['images']}   objects {s['objects']}   classes {len(s['classes'])}: {', '.join(s['classes'])}")
    print(f"objects per image   min {opi['min']}   median {opi['median']:g}   max {opi['max']}")
    for key in ("box_width_px", "box_height_px"):
        print(f"{key:<13} " + "  ".join(f"{k} {v:g}" for k, v in s[key].items()))
    print(f"boxes under 16 px: {s['boxes_under_16px']}   under 32 px: {s['boxes_under_32px']}")
    problems = ds.report.as_dict()
    print("problems: " + ("none" if not problems else ""))
    for kind, p in problems.items():
        print(f"  {kind:<20} {p['count']:>6}  {p['meaning']}; e.g. {', '.join(p['examples'])}")
    print("usable: yes" if usable is None else f"not usable: {usable}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detector.data", description="Check or generate datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="read everything once and report statistics and problems")
    c.add_argument("--data", required=True, help="COCO JSON file, folder with annotations.json, or VOC folder")
    c.add_argument("--images", help="folder the image file names are relative to")
    c.add_argument("--json", action="store_true")
    s = sub.add_parser("synth", help="write the embedded synthetic small-object dataset (COCO + PNG)")
    s.add_argument("--out", required=True)
    s.add_argument("--images", type=int, default=None, help="number of images")
    s.add_argument("--size", type=int, default=None, help="image side in px")
    s.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.cmd == "synth":
        from detector import synth

        kw = {k: v for k, v in (("n_images", a.images), ("size", a.size)) if v is not None}
        path = synth.write_dataset(Path(a.out), seed=a.seed, **kw)
        print(f"wrote {path}")
        return 0
    try:
        ds = load_any(a.data, a.images)
    except DataError as e:
        print(f"not usable: {e}", file=sys.stderr)
        return 1
    usable = None
    try:
        require_usable(ds, a.data)
    except DataError as e:
        usable = str(e)
    if a.json:
        print(json.dumps({**ds.summary(), "problems": ds.report.as_dict(), "usable": usable is None,
                          "reason": usable}))
    else:
        _print_check(ds, usable)
    return 0 if usable is None else 1


if __name__ == "__main__":
    sys.exit(main())
