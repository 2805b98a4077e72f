"""Datasets: every problem the check reports, 16-bit and RGB input, the synthetic data, augmentations."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector import data as D
from detector import synth
from detector import transforms as T


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def _coco(root: Path, images: list, annotations: list, categories=None) -> Path:
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories or [{"id": 7, "name": "cell"}]}))
    return path


def _ann(i, image_id, bbox, cat=7):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0}


@pytest.fixture
def messy(tmp_path) -> Path:
    """A dataset with every problem at once, and enough good boxes to train on."""
    grey = (np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _png(tmp_path / name, grey)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}, {"id": 3, "file_name": "c.png"},
              {"id": 4, "file_name": "d.png"}, {"id": 5, "file_name": "missing.png"},
              {"id": 6, "file_name": "corrupt.png"}, {"id": 1, "file_name": "a-again.png"}]
    anns = [_ann(1, 1, [5, 5, 8, 8]), _ann(2, 1, [20, 20, 6, 7]),
            _ann(3, 1, [40, 40, 20, 20]),        # partly outside: clipped to 40..48
            _ann(4, 2, [60, 5, 5, 5]),           # wholly outside: nothing left, dropped
            _ann(5, 2, [10, 10, 0, 5]),          # zero width: dropped
            _ann(6, 2, [12, 12, 6, 6]),
            _ann(7, 3, [5, 5, 5, 5], cat=99),    # unknown category: dropped
            _ann(8, 42, [5, 5, 5, 5]),           # unknown image id: dropped
            _ann(9, 3, [30, 30, 6, 6])]
    # d.png has no annotation: kept as a background-only image.
    return _coco(tmp_path, images, anns)


def test_every_problem_is_counted_with_examples(messy):
    ds = D.load_coco(messy)
    p = ds.report.as_dict()
    assert {k: v["count"] for k, v in p.items()} == {
        "missing_image": 1, "unreadable_image": 1, "duplicate_image_id": 1, "unknown_category": 1,
        "unknown_image": 1, "box_clipped": 1, "box_degenerate": 2, "no_objects": 1}
    assert any("missing.png" in e for e in p["missing_image"]["examples"])
    assert any("corrupt.png" in e for e in p["unreadable_image"]["examples"])
    assert p["no_objects"]["examples"] == ["d.png"]
    assert len(ds) == 4 and [len(b) for b in ds.boxes] == [3, 1, 1, 0]
    assert ds.boxes[0][2].tolist() == [40.0, 40.0, 48.0, 48.0]  # clipped to the 48 px image
    assert ds.class_names == ["cell"] and ds.labels[0].tolist() == [1, 1, 1]  # id 7 -> label 1


def test_check_command_reports_and_exits(messy, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "detector.data", "check", *a],  # noqa: E731
                                    capture_output=True, text=True)
    out = run("--data", str(messy))
    assert out.returncode == 0, out.stderr
    assert "box_degenerate" in out.stdout and "usable: yes" in out.stdout
    js = json.loads(run("--data", str(messy), "--json").stdout)
    assert js["images"] == 4 and js["objects"] == 5 and js["objects_per_image"] == {"min": 0, "median": 1.0, "max": 3}
    assert js["problems"]["missing_image"]["count"] == 1
    # No object at all: unusable, exit 1 with one line saying why.
    empty = tmp_path / "empty"
    empty.mkdir()
    _png(empty / "x.png", np.zeros((16, 16), np.uint8))
    _coco(empty, [{"id": 1, "file_name": "x.png"}], [])
    bad = run("--data", str(empty))
    assert bad.returncode == 1 and "not usable:" in bad.stdout and "no object in any image" in bad.stdout


def test_dataset_with_every_problem_still_trains(messy, tmp_path):
    from detector.config import from_dict
    from detector.engine import fit
    from tests.conftest import TINY

    train, val, _ = D.load_splits(str(messy), val_fraction=0.25, seed=0)
    cfg = from_dict({**TINY, "backbone": "resnet18", "epochs": 1, "min_size": 48, "max_size": 48})
    s = fit(cfg, train, val, tmp_path / "run")
    assert s["epochs_run"] == 1 and 0.0 <= s["best"]["map50"] <= 1.0


def test_16bit_uses_the_real_dynamic_range(tmp_path):
    # A 12-bit sensor in a 16-bit file: values 100..4000. Scaling by 65535 or clipping at 255 would
    # lose it; by the image's own range, 100 -> 0 and 4000 -> 1.
    arr = np.full((8, 8), 100, np.uint16)
    arr[2:4, 2:4] = 4000
    arr[5, 5] = 2050
    _png(tmp_path / "x.png", arr)
    img, rng = D.decode_image(tmp_path / "x.png", D.Report())
    assert img.dtype == np.uint16 and rng == (100.0, 4000.0)
    t = D.to_tensor(img, rng)
    assert t.shape == (1, 8, 8) and t.dtype == torch.float32
    assert t[0, 0, 0] == 0.0 and t[0, 2, 2] == 1.0 and abs(t[0, 5, 5].item() - 0.5) < 1e-6


def test_rgb_is_converted_with_a_notice(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: ITU-R 601 luma 0.299 * 255 = 76
    _png(tmp_path / "c.png", rgb)
    report = D.Report()
    img, rng = D.decode_image(tmp_path / "c.png", report)
    assert img.shape == (4, 4) and img.dtype == np.uint8 and int(img[0, 0]) == 76 and rng == (0.0, 255.0)
    assert report.counts["rgb_converted"] == 1


def test_voc_folder_and_multiclass(tmp_path):
    (tmp_path / "Annotations").mkdir()
    _png(tmp_path / "JPEGImages" / "im1.png", np.zeros((32, 32), np.uint8))
    (tmp_path / "Annotations" / "im1.xml").write_text(
        "<annotation><filename>im1.png</filename>"
        "<object><name>scratch</name><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>"
        "<object><name>dent</name><bndbox><xmin>20</xmin><ymin>20</ymin><xmax>25</xmax><ymax>26</ymax></bndbox></object>"
        "</annotation>")
    ds = D.load_any(tmp_path)
    assert ds.class_names == ["dent", "scratch"]
    assert ds.labels[0].tolist() == [2, 1]
    assert ds.boxes[0][0].tolist() == [2.0, 3.0, 10.0, 12.0]  # VOC's 1-based inclusive corners


def test_synthetic_dataset_is_reproducible_and_small_object_dominated(tmp_path):
    def digest(folder):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()

    a = synth.write_dataset(tmp_path / "a", n_images=6, seed=1).parent
    b = synth.write_dataset(tmp_path / "b", n_images=6, seed=1).parent
    c = synth.write_dataset(tmp_path / "c", n_images=6, seed=2).parent
    assert digest(a) == digest(b) and digest(a) != digest(c)
    s = D.load_coco(a).summary()
    assert s["objects_per_image"]["min"] >= 10 and s["objects_per_image"]["max"] >= 60
    assert s["box_width_px"]["q05"] >= 3 and s["box_width_px"]["q95"] <= 25
    assert s["boxes_under_16px"] > 0.8 * s["objects"]

def test_the_embedded_dataset_is_the_versioned_easier_set_and_an_older_cache_is_not_read(tmp_path, monkeypatch):
    """The demos' dataset (synth.EMBEDDED): 28 images of 112 px, objects of at most 30 px and
    brighter than the hard family; a cache folder of version 1 (`synth-default`, 48 x 160 px)
    left by an earlier release is not taken for it, and `detector.data synth` writes the same set."""
    monkeypatch.setenv("SMALLOBJ_CACHE", str(tmp_path / "cache"))
    old = tmp_path / "cache" / "synth-default"
    synth.write_dataset(old, n_images=2)  # what version 1 left behind
    ann = D.ensure_default_data()
    assert ann.parent.name == "synth-v2" and ann.parent != old
    ds = D.load_coco(ann)
    s = ds.summary()
    assert len(ds) == 28 and {im.shape for im in ds.images} == {(112, 112)}
    assert s["objects_per_image"]["min"] >= 10
    assert max(float((b[:, 2:] - b[:, :2]).max()) for b in ds.boxes) <= 30.5
    assert s["boxes_under_16px"] > 0.5 * s["objects"]  # still a small-object set
    hard = D.load_coco(synth.write_dataset(tmp_path / "hard", n_images=28, size=112))

    def peak_above_background(d):  # each object's brightest pixel over its image's median
        return np.median([d.images[i][int(y0):int(y1) + 1, int(x0):int(x1) + 1].max() - np.median(d.images[i])
                          for i in range(len(d)) for x0, y0, x1, y1 in d.boxes[i].tolist()])
    assert peak_above_background(ds) > peak_above_background(hard) + 20  # of 255
    assert D.main(["synth", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "annotations.json").read_bytes() == ann.read_bytes()



def test_split_is_deterministic_and_disjoint(tiny_data):
    ds = D.load_coco(tiny_data)
    t1, v1 = D.split(ds, 0.3, seed=5)
    t2, v2 = D.split(ds, 0.3, seed=5)
    assert t1.file_names == t2.file_names and v1.file_names == v2.file_names
    assert not set(t1.file_names) & set(v1.file_names) and len(v1) == 3 and len(t1) == 7


def test_test_images_are_split_off_first_by_their_own_seed(tiny_data):
    none = D.load_splits(str(tiny_data), val_fraction=0.3, seed=5)
    assert none.test is None
    assert none.train.image_ids == D.split(D.load_coco(tiny_data), 0.3, 5)[0].image_ids  # unchanged without test
    s = D.load_splits(str(tiny_data), val_fraction=0.3, test_fraction=0.2, seed=5)
    ids = [set(d.image_ids) for d in s]
    assert [len(x) for x in ids] == [5, 3, 2]  # fractions of all 10 images
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    again = D.load_splits(str(tiny_data), val_fraction=0.3, test_fraction=0.2, seed=5)
    assert [d.image_ids for d in again] == [d.image_ids for d in s] and again.fingerprint() == s.fingerprint()
    other = D.load_splits(str(tiny_data), val_fraction=0.3, test_fraction=0.2, seed=6)
    assert [d.image_ids for d in other] != [d.image_ids for d in s] and other.fingerprint() != s.fingerprint()
    assert s.fingerprint().count("-") == 2 and none.fingerprint().count("-") == 1


def test_test_file_without_objects_is_refused_with_the_data_checks_reason(tiny_data, tmp_path):
    coco = json.loads(Path(tiny_data).read_text())
    coco["annotations"] = []
    empty = tmp_path / "test.json"
    empty.write_text(json.dumps(coco))
    for img in coco["images"]:
        (tmp_path / img["file_name"]).parent.mkdir(parents=True, exist_ok=True)
    with pytest.raises(D.DataError, match="test images.*no object in any image"):
        D.load_splits(str(tiny_data), test_data=str(empty), images=str(Path(tiny_data).parent))


# --- augmentations: boxes follow the pixels exactly ----------------------------------------------

def _mask_box(img):
    ys, xs = torch.nonzero(img[0] > 0.5, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize("op", ["hflip", "vflip", "rot1", "rot2", "rot3"])
def test_boxes_follow_the_pixels(op):
    img = torch.zeros(1, 20, 30)
    img[0, 3:9, 4:15] = 1.0  # an object at x 4..15, y 3..9
    boxes = torch.tensor([[4.0, 3.0, 15.0, 9.0]])
    fn = {"hflip": T.hflip, "vflip": T.vflip, "rot1": lambda i, b: T.rot90(i, b, 1),
          "rot2": lambda i, b: T.rot90(i, b, 2), "rot3": lambda i, b: T.rot90(i, b, 3)}[op]
    out, ob = fn(img, boxes)
    assert ob[0].tolist() == _mask_box(out)


def test_transform_then_inverse_gives_the_same_boxes():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 37, 53, generator=g)
    xy = torch.rand(20, 2, generator=g) * torch.tensor([40.0, 25.0])
    boxes = torch.cat([xy, xy + 1 + torch.rand(20, 2, generator=g) * 10], dim=1)
    for fwd, inv in [(T.hflip, T.hflip), (T.vflip, T.vflip),
                     (lambda i, b: T.rot90(i, b, 1), lambda i, b: T.rot90(i, b, 3))]:
        i2, b2 = inv(*fwd(img, boxes))
        assert torch.equal(i2, img) and torch.allclose(b2, boxes)
    i2, b2 = T.resize(*T.resize(img, boxes, 74, 106), 37, 53)
    assert torch.allclose(b2, boxes, atol=1e-4)


def test_random_augment_keeps_boxes_inside_the_image():
    aug = T.Augment(scale_jitter=(0.6, 1.4), crop_size=40)
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        img = torch.rand(1, 64, 48)
        xy = torch.rand(30, 2) * torch.tensor([44.0, 60.0])
        boxes = torch.cat([xy, xy + 2 + torch.rand(30, 2) * 6], dim=1).clamp(max=torch.tensor([48.0, 64.0] * 2))
        out, b, keep = aug(img, boxes, g)
        h, w = out.shape[-2:]
        assert len(b) == int(keep.sum())
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()


def test_synthetic_objects_can_be_fewer_and_larger(tmp_path):
    """bench/parity.py's second dataset: the same renderer with at most 15 objects of 16-64 px per image."""
    s = D.load_coco(synth.write_dataset(tmp_path, n_images=6, seed=1, object_px=(16.0, 64.0),
                                        objects_per_kpx=(0.2, 0.6))).summary()
    assert 3 <= s["objects_per_image"]["min"] and s["objects_per_image"]["max"] <= 15
    assert s["box_width_px"]["q05"] >= 10 and s["boxes_under_16px"] < 0.3 * s["objects"]


def test_an_ultralytics_yolo_folder_goes_through_the_same_checks(tmp_path):
    """data.yaml + images/ + labels/*.txt (normalised cx cy w h): boxes outside the image clipped,
    zero-size ones and unknown class indices dropped, a polygon line read as its box, an image without
    a label file kept without objects; class index k is category id k; `#val` is the val split."""
    root = tmp_path / "yolo"
    _png(root / "images" / "train" / "a.png", np.zeros((40, 80), np.uint8))  # 80 wide, 40 high
    _png(root / "images" / "train" / "b.png", np.zeros((40, 80), np.uint8))  # no label file
    _png(root / "images" / "val" / "c.png", np.zeros((20, 20), np.uint8))
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "1 0.5 0.5 0.25 0.5\n"            # pore: x 30..50, y 10..30
        "0 0.95 0.5 0.2 0.2\n"            # crack: x 68..88 -> clipped to 80
        "5 0.5 0.5 0.1 0.1\n"             # class 5: not in names
        "1 0.5 0.5 0 0.2\n"               # zero width
        "pore 0.5 0.5 0.1 0.1\n"          # not a class index
        "0 0.1 0.1 0.3 0.1 0.3 0.3\n")    # a polygon: x 8..24, y 4..12
    (root / "labels" / "val" / "c.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\n"
                                    "names: {0: crack, 1: pore, 2: rust}\n")
    ds = D.load_any(root / "data.yaml")
    assert ds.class_names == ["crack", "pore"] and ds.categories() == [{"id": 0, "name": "crack"}, {"id": 1, "name": "pore"}]
    assert [Path(f).name for f in ds.file_names] == ["a.png", "b.png"] and ds.image_ids == ["images/train/a.png", "images/train/b.png"]
    assert ds.boxes[0].tolist() == [[30.0, 10.0, 50.0, 30.0], [68.0, 16.0, 80.0, 24.0], [8.0, 4.0, 24.0, 12.0]]
    assert ds.labels[0].tolist() == [2, 1, 1] and len(ds.boxes[1]) == 0
    counts = {k: v["count"] for k, v in ds.report.as_dict().items()}
    assert counts == {"missing_label_file": 1, "no_objects": 1, "unknown_category": 1, "bad_label_line": 1,
                      "box_degenerate": 1, "box_clipped": 1, "unused_category": 1}
    val = D.load_any(f"{root / 'data.yaml'}#val", class_names=ds.class_names)
    assert val.labels[0].tolist() == [2] and val.boxes[0].tolist() == [[5.0, 5.0, 15.0, 15.0]]
    splits = D.load_splits(str(root / "data.yaml"), val_data=f"{root / 'data.yaml'}#val")
    assert len(splits.train) == 2 and len(splits.val) == 1
    with pytest.raises(D.DataError, match=r"data.yaml: no 'test' split"):
        D.load_any(f"{root / 'data.yaml'}#test")
    with pytest.raises(D.DataError, match=r"data.yaml#valid: unknown split 'valid'"):
        D.load_any(f"{root / 'data.yaml'}#valid")
    (root / "bad.yaml").write_text("train: images/train\n")
    with pytest.raises(D.DataError, match=r"bad.yaml: key 'names' missing"):
        D.load_any(root / "bad.yaml")
