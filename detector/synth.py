"""Synthetic datasets of single-channel images dominated by numerous small objects.

Each image has tens to over a hundred bright, soft-edged elliptical objects (some of them
touching) on a textured, unevenly lit, noisy background, plus distractors that are *not* objects:
thin lines, hollow rings and dark blobs of similar size and contrast. A dataset is written as a real
COCO dataset (8-bit PNG files + annotations.json) and read through the same loader as user data.
Same seed, same bytes.

`write_dataset`'s defaults are the hard family (objects of 4-24 px, faint) that the tests and the
benchmarks generate at their own sizes. `EMBEDDED` is the dataset the demos search when a space
names no data (detector.data.ensure_default_data): 28 images of 112 px with objects of 12-30 px
(12-38 per image, 14 px across at the median, all COCO-small) of higher contrast, so that the demo's
2-epoch search on a 2-core CPU trains a detector that visibly finds most objects (bench/RESULTS.md,
issue 25). Its cache folder carries `EMBEDDED_VERSION`, which changes whenever EMBEDDED does.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_IMAGES = 48
DEFAULT_SIZE = 160
MIN_OBJECT, MAX_OBJECT = 4.0, 24.0   # object bounding-box side, px
OBJECTS_PER_KPX = (1.0, 4.6)        # objects per 1000 px^2 of image: tens to over a hundred at 160 px
CONTRAST = (0.22, 0.45)             # an object's peak brightness above the background (1 = white)

# The embedded dataset (see the module docstring). Version 1 was the defaults above, 48 images of 160 px.
EMBEDDED = dict(n_images=28, size=112, object_px=(12.0, 30.0), contrast=(0.35, 0.6))
EMBEDDED_VERSION = 2


def _blur(x: np.ndarray, r: int) -> np.ndarray:
    """Box blur of radius r along both axes (cumulative sums; wraps at the borders)."""
    for axis in (0, 1):
        c = np.cumsum(np.concatenate([x.take(range(-r - 1, 0), axis), x, x.take(range(r), axis)], axis), axis)
        x = (c.take(range(2 * r + 1, c.shape[axis]), axis) - c.take(range(0, c.shape[axis] - 2 * r - 1), axis))
        x = x / (2 * r + 1)
    return x


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    # Uneven illumination: a tilted plane and a broad bright spot.
    cx, cy = rng.uniform(0, 1, 2)
    light = (0.25 + rng.uniform(-0.08, 0.08) * (xx - 0.5) + rng.uniform(-0.08, 0.08) * (yy - 0.5)
             + rng.uniform(0.05, 0.15) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.15))
    # Texture: smoothed noise at two scales.
    texture = 0.06 * _blur(rng.normal(0, 1, (size, size)), 6) * 3 + 0.03 * _blur(rng.normal(0, 1, (size, size)), 2) * 2
    return light + texture


def _stamp(canvas: np.ndarray, cx: float, cy: float, a: float, b: float, theta: float, amp: float,
           ring: float = 0.0) -> None:
    """Add a soft-edged ellipse (semi-axes a, b px; angle theta) of peak `amp` in place.
    ring > 0 draws only a hollow outline of that relative thickness."""
    r_out = int(math.ceil(max(a, b))) + 2
    x0, x1 = max(0, int(cx) - r_out), min(canvas.shape[1], int(cx) + r_out + 1)
    y0, y1 = max(0, int(cy) - r_out), min(canvas.shape[0], int(cy) + r_out + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
    c, s = math.cos(theta), math.sin(theta)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    edge = 1.0 / (1.0 + np.exp((r - 1.0) * min(a, b) * 2.5))   # ~half-pixel soft edge
    if ring:
        edge = edge * (1.0 / (1.0 + np.exp(-(r - (1.0 - ring)) * min(a, b) * 2.5)))
        canvas[y0:y1, x0:x1] += amp * edge
    else:
        canvas[y0:y1, x0:x1] += amp * edge * (1.0 - 0.35 * np.clip(r, 0, 1) ** 2)  # domed interior


def _ellipse_box(cx, cy, a, b, theta, size) -> list[float] | None:
    hw = math.sqrt((a * math.cos(theta)) ** 2 + (b * math.sin(theta)) ** 2)
    hh = math.sqrt((a * math.sin(theta)) ** 2 + (b * math.cos(theta)) ** 2)
    x0, y0, x1, y1 = max(0.0, cx - hw), max(0.0, cy - hh), min(size, cx + hw), min(size, cy + hh)
    if x1 - x0 < 2 or y1 - y0 < 2:  # cut off by the border: too little left to call an object
        return None
    return [x0, y0, x1, y1]


def render_image(rng: np.random.Generator, size: int, object_px: tuple[float, float] = (MIN_OBJECT, MAX_OBJECT),
                 objects_per_kpx: tuple[float, float] = OBJECTS_PER_KPX,
                 contrast: tuple[float, float] = CONTRAST) -> tuple[np.ndarray, list[list[float]]]:
    """One (size, size) uint8 image and its object boxes (xyxy, px). `object_px`: the range of object
    sizes (px, skewed to the small end); `objects_per_kpx`: the range of objects per 1000 px^2;
    `contrast`: the range of an object's peak above the background (distractors keep theirs)."""
    img = _background(rng, size)
    area_k = size * size / 1000.0
    n = int(rng.integers(int(objects_per_kpx[0] * area_k), int(objects_per_kpx[1] * area_k) + 1))
    min_object, max_object = object_px
    placed: list[tuple[float, float, float]] = []  # (cx, cy, radius)
    boxes = []
    for _ in range(n):
        # Sizes skewed to the small end: most objects are under 12 px.
        d = min_object * (max_object / min_object) ** (rng.uniform() ** 1.6)
        a = d / 2
        b = a * rng.uniform(0.6, 1.0)
        theta = rng.uniform(0, math.pi)
        for _attempt in range(20):
            if placed and rng.uniform() < 0.15:  # a touching neighbour
                px, py, pr = placed[int(rng.integers(len(placed)))]
                ang = rng.uniform(0, 2 * math.pi)
                cx, cy = px + (pr + a) * math.cos(ang), py + (pr + a) * math.sin(ang)
                need = 0.9
            else:
                cx, cy = rng.uniform(0, size, 2)
                need = 1.05
            if all((cx - px) ** 2 + (cy - py) ** 2 >= (need * (a + pr)) ** 2 for px, py, pr in placed):
                break
        else:
            continue
        box = _ellipse_box(cx, cy, a, b, theta, size)
        if box is None:
            continue
        _stamp(img, cx, cy, a, b, theta, amp=rng.uniform(*contrast))
        placed.append((cx, cy, a))
        boxes.append(box)
    # Distractors: shapes of the same size and contrast that are not objects.
    for _ in range(int(rng.integers(max(1, n // 8), max(2, n // 4) + 1))):
        kind = rng.integers(3)
        cx, cy = rng.uniform(0, size, 2)
        if kind == 0:  # a thin line (a scratch, a fibre)
            length, theta = rng.uniform(15, 50), rng.uniform(0, math.pi)
            _stamp(img, cx, cy, length / 2, rng.uniform(0.7, 1.1), theta, amp=rng.uniform(0.2, 0.4))
        elif kind == 1:  # a hollow ring
            r = rng.uniform(4, 10)
            _stamp(img, cx, cy, r, r, 0.0, amp=rng.uniform(0.2, 0.4), ring=0.3)
        else:  # a dark blob
            r = rng.uniform(3, 10)
            _stamp(img, cx, cy, r, r * rng.uniform(0.6, 1), rng.uniform(0, math.pi), amp=-rng.uniform(0.12, 0.25))
    img = img + rng.normal(0, rng.uniform(0.025, 0.05), img.shape)  # sensor noise
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), boxes


def write_dataset(out: str | os.PathLike, n_images: int = DEFAULT_IMAGES, size: int = DEFAULT_SIZE,
                  seed: int = 0, **render) -> Path:
    """Write `n_images` PNGs and a COCO `annotations.json` into `out`; return the JSON's path.
    `render` (object_px, objects_per_kpx, contrast) changes the objects' character (render_image)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n_images):
        rng = np.random.default_rng([seed, i])
        pixels, boxes = render_image(rng, size, **render)
        name = f"images/{i:05d}.png"
        Image.fromarray(pixels, mode="L").save(out / name, format="PNG", optimize=False, compress_level=6)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for x0, y0, x1, y1 in boxes:
            w, h = round(x1 - x0, 2), round(y1 - y0, 2)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": [round(x0, 2), round(y0, 2), w, h], "area": round(w * h, 2),
                                "iscrowd": 0})
    coco = {"info": {"description": f"smallobj-search synthetic dataset, seed {seed}, {n_images} x {size}px"},
            "images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    path = out / "annotations.json"
    path.write_text(json.dumps(coco, indent=1, sort_keys=True))
    return path
