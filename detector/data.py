"""Datasets: COCO, Pascal VOC and Ultralytics YOLO in, one decoded in-memory dataset out, and a loud check of the data.

Every image is decoded once per process into a compact single-channel array (uint8, or uint16 for
16-bit images) and kept; bad data is found and counted before the first training step, with the
same rules the `check` command reports:

    python -m detector.data check --data annotations.json [--json]     (or a VOC folder, or data.yaml)
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


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


class DataError(ValueError):
    """The data cannot be used (no readable image, no object, unreadable annotation file...)."""


# Problem kinds: what the check reports and what loading does about each.
PROBLEMS = {
    "missing_image": "image file not found (image skipped)",
    "unreadable_image": "image file unreadable or corrupt (image skipped)",
    "duplicate_image_id": "image id used more than once (later entries skipped)",
    "unknown_category": "annotation with a category id not in `categories` (annotation dropped)",
    "unused_category": "category no annotation uses (not a class: a detector cannot learn it)",
    "unknown_image": "annotation for an image id not in `images` (annotation dropped)",
    "box_clipped": "box partly outside the image (clipped to the image)",
    "box_degenerate": "box with zero or negative width/height after clipping (dropped)",
    "no_objects": "image without objects (kept as a background-only image)",
    "missing_label_file": "YOLO image without a label file (kept as a background-only image, as Ultralytics does)",
    "bad_label_line": "YOLO label line that is not `class cx cy w h` or a polygon (line skipped)",
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
    class_names[c - 1] is label c's name and category_ids[c - 1] the id the annotation file gave it
    (COCO files number their categories as they like; VOC and the embedded data have none: 1..C);
    image_ids[i] is the file's own id of image i.
    """

    images: list
    ranges: list
    boxes: list
    labels: list
    file_names: list
    class_names: list
    image_ids: list
    report: Report = field(default_factory=Report)
    category_ids: list = field(default_factory=list)  # empty: 1..C
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "DecodedDataset":
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return DecodedDataset(pick(self.images), pick(self.ranges), pick(self.boxes), pick(self.labels),
                              pick(self.file_names), self.class_names, pick(self.image_ids), self.report,
                              self.category_ids)

    def categories(self) -> list[dict]:
        """COCO `categories` of the classes, in label order: [{"id": the file's id, "name"}]."""
        ids = self.category_ids or list(range(1, len(self.class_names) + 1))
        return [{"id": int(i), "name": n} for i, n in zip(ids, self.class_names)]

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


def _assemble(records: list, class_names: list, report: Report, category_ids: list | None = None) -> DecodedDataset:
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
    return DecodedDataset(images, ranges, boxes, labels, names, class_names, ids, report, list(category_ids or []))


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
    relative to `images` if given, else to the JSON's folder. The categories that annotations use
    become contiguous labels 1..C in id order (an unused one, such as the id-0 supercategory Roboflow
    adds, is not a class: reported as unused_category); `class_names` forces the classes and their
    order, matched by name (a validation or test file, or a trained model's). The file's own
    category ids are kept (`category_ids`), for detections written back in them."""
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
        image_ids = {im.get("id") for im in coco["images"]}
        used = {a.get("category_id") for a in coco["annotations"] if a.get("image_id") in image_ids}
        for c in cats:
            if c["id"] not in used:
                report.add("unused_category", f"id {c['id']}: {c['name']}")
        cats = [c for c in cats if c["id"] in used]
        class_names = [c["name"] for c in cats]
    label_of = {c["id"]: class_names.index(c["name"]) + 1 for c in cats if c["name"] in class_names}
    id_of = {class_names[label - 1]: cid for cid, label in label_of.items()}
    category_ids = [id_of.get(n) for n in class_names]

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
    return _assemble(records, class_names, report, category_ids if None not in category_ids else None)


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


YOLO_SPLITS = ("train", "val", "test")


def _yolo_spec(data: str | os.PathLike) -> tuple[Path, str]:
    """(data.yaml, split) from `data.yaml` (its train split) or `data.yaml#val` / `data.yaml#test`."""
    text = str(data)
    path, _, split = text.partition("#")
    split = split or "train"
    if split not in YOLO_SPLITS:
        raise DataError(f"{text}: unknown split '{split}' (a YOLO data file's splits: {', '.join(YOLO_SPLITS)})")
    return Path(path), split


def is_yolo(data: str | os.PathLike) -> bool:
    """Whether `data` names an Ultralytics YOLO data file (`data.yaml`, optionally `#split`)."""
    return Path(str(data).partition("#")[0]).suffix.lower() in (".yaml", ".yml")


def _yolo_images(entry, root: Path, where: str) -> list[Path]:
    """The image files of one split entry: a folder, a .txt file listing images, or a list of either."""
    out = []
    for item in entry if isinstance(entry, list) else [entry]:
        p = Path(str(item))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                if line.strip():
                    f = Path(line.strip())
                    out.append(f if f.is_absolute() else (p.parent / f).resolve())
        else:
            raise DataError(f"{where}: {p}: neither a folder of images nor a .txt list of them")
    return out


def _yolo_label_file(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder of the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def load_yolo(data: str | os.PathLike, images=None, class_names: list | None = None) -> DecodedDataset:
    """An Ultralytics YOLO dataset: `data.yaml` (`path`, `train`/`val`/`test` folders or lists, `names`)
    with one `labels/*.txt` per image (`class cx cy w h`, normalised to the image; a polygon line's
    points give its box). `data.yaml` is its train split, `data.yaml#val` its val split. Class index k
    is category id k; `class_names` forces the classes by name (a validation split, a trained model's).
    Every rule of the other formats applies: boxes clipped to the image or dropped when empty, an
    unknown class index dropped, and an image without a label file kept as one without objects."""
    import yaml

    path, split = _yolo_spec(data)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: not a readable YOLO data file ({e})") from None
    if not isinstance(spec, dict) or "names" not in spec:
        raise DataError(f"{path}: key 'names' missing (an Ultralytics YOLO data file lists its classes there)")
    names = spec["names"]
    names = dict(enumerate(names)) if isinstance(names, list) else names
    if not isinstance(names, dict) or not all(isinstance(k, int) for k in names):
        raise DataError(f"{path}: key 'names' must be a list or a mapping of class index: name")
    if not spec.get(split):
        raise DataError(f"{path}: no '{split}' split (key '{split}' is missing or empty)")
    base = Path(str(spec.get("path", "")))
    root = Path(images) if images else (base if base.is_absolute() else path.parent / base)
    report = Report()
    raw = []
    for image in _yolo_images(spec[split], root, f"{path} [{split}]"):
        label_file = _yolo_label_file(image)
        objs = []
        if not label_file.is_file():
            report.add("missing_label_file", str(image.name))
        else:
            try:
                with Image.open(image) as im:
                    width, height = im.size
            except (OSError, UnidentifiedImageError):
                raw.append((image, []))  # _assemble reports it unreadable
                continue
            for n, line in enumerate(label_file.read_text().splitlines(), start=1):
                values = line.split()
                if not values:
                    continue
                try:
                    k, coords = int(values[0]), [float(v) for v in values[1:]]
                except ValueError:
                    report.add("bad_label_line", f"{label_file.name}:{n}")
                    continue
                if len(coords) == 4:
                    cx, cy, w, h = coords
                    box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
                elif len(coords) >= 6 and len(coords) % 2 == 0:  # a polygon: its bounding box
                    xs, ys = coords[0::2], coords[1::2]
                    box = [min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height]
                else:
                    report.add("bad_label_line", f"{label_file.name}:{n}")
                    continue
                if k not in names:
                    report.add("unknown_category", f"{label_file.name}:{n}: class {k}")
                    continue
                objs.append((k, box))
        raw.append((image, objs))
    if class_names is None:
        used = {k for _, objs in raw for k, _ in objs}
        for k in sorted(names):
            if k not in used:
                report.add("unused_category", f"id {k}: {names[k]}")
        kept = [k for k in sorted(names) if k in used]
        class_names, category_ids = [names[k] for k in kept], kept
    else:
        id_of = {v: k for k, v in names.items()}
        category_ids = [id_of.get(n) for n in class_names]
    label_of = {k: class_names.index(names[k]) + 1 for k in names if names[k] in class_names}
    records = []
    for image, objs in raw:
        known = [(k, b) for k, b in objs if k in label_of]
        records.append((image, image.relative_to(root).as_posix() if image.is_relative_to(root) else str(image),
                        [b for _, b in known], [label_of[k] for k, _ in known]))
    return _assemble(records, class_names, report, category_ids if None not in category_ids else None)


def load_any(data: str | os.PathLike, images=None, class_names=None) -> DecodedDataset:
    """COCO JSON (file or folder with annotations.json), a Pascal VOC folder, or an Ultralytics YOLO
    data file (`data.yaml`, `data.yaml#val`)."""
    if is_yolo(data):
        return load_yolo(data, images, class_names)
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
    """Cache folder of the embedded synthetic dataset (generated once; a new folder per version of
    it, so a cache written by an earlier release is never read as the current one)."""
    from detector.synth import EMBEDDED_VERSION

    root = Path(os.environ.get("SMALLOBJ_CACHE", Path.home() / ".cache" / "smallobj-search"))
    return root / f"synth-v{EMBEDDED_VERSION}"


def ensure_default_data() -> Path:
    """Generate the embedded synthetic dataset into the cache once; return its annotations path."""
    from detector import synth

    out = default_data_dir()
    ann = out / "annotations.json"
    if not ann.is_file():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        synth.write_dataset(tmp, **synth.EMBEDDED)
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
    c.add_argument("--data", required=True, help="COCO JSON file, folder with annotations.json, VOC folder, or YOLO data.yaml (data.yaml#val: its val split)")
    c.add_argument("--images", help="folder the image file names are relative to")
    c.add_argument("--json", action="store_true")
    s = sub.add_parser("synth", help="write the embedded synthetic small-object dataset (COCO + PNG), "
                                     "or with --hard the harder family the tests use")
    s.add_argument("--out", required=True)
    s.add_argument("--images", type=int, default=None, help="number of images")
    s.add_argument("--size", type=int, default=None, help="image side in px")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--hard", action="store_true", help="objects of 4-24 px, fainter (write_dataset's defaults)")
    a = p.parse_args(argv)
    if a.cmd == "synth":
        from detector import synth

        kw = {} if a.hard else dict(synth.EMBEDDED)
        kw.update({k: v for k, v in (("n_images", a.images), ("size", a.size)) if v is not None})
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
