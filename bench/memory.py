"""Memory of a search with 4 concurrent trials against 1: is the dataset held once per node?

    .venv/bin/python bench/memory.py [--images 40] [--size 2560] [--out bench/out]

Runs `python -m search.run` four times, on two synthetic datasets of `--size` px images (large:
`--images` images, about 250 MB decoded by default; small: `--small-images`, about 25 MB) with
1 and then 4 trials at a time (4 trials, one epoch each, tiny 64 px model input so training is
short). While each runs, the proportional set size (PSS: a shared page counts once, split among
the processes that map it) of the whole process tree (the driver, Ray's processes and the trial
workers) is sampled about every 0.5 s; the breakdown by process at the peak is kept.

Per extra concurrent trial, memory grows by (peak with 4 - peak with 1) / 3. On the small
dataset that is a worker's own cost (torch, a model, its optimiser, its batches of large images).
The difference between the two datasets' growth per trial is what each extra trial pays for the
dataset: about 0 if it is held once per node (Ray's object store, mapped zero-copy by every
worker), about the datasets' size difference if every trial holds a copy. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import proctree  # noqa: E402
from detector import synth  # noqa: E402

SPACE = """name: memory
data: {data}
arms: {{backbone: [resnet18]}}
fixed: {{min_size: 64, max_size: 64, anchor_sizes: [8, 16, 32, 64, 128], box_batch_size_per_image: 16,
        rpn_batch_size_per_image: 32, rpn_pre_nms_top_n_train: 200, rpn_post_nms_top_n_train: 100,
        rpn_pre_nms_top_n_test: 200, rpn_post_nms_top_n_test: 100, batch_size: 2, num_workers: 0,
        warmup_epochs: 0.5, val_fraction: 0.2}}
params:
  lr: {{type: float, low: 0.005, high: 0.01}}
budget: {{max_epochs: 1, grace_period: 1, reduction_factor: 2, trials_per_arm: 4, max_concurrent: {concurrent}}}
resources: {{cpu: {cpu}}}
"""


def tree_pss_mb(root: psutil.Process) -> tuple[float, dict]:
    """(PSS of the process tree in MB, details): details has PSS by process label, and for Ray's
    object store (the /dev/shm/plasma* file every Ray process maps) each trial worker's resident
    MB of it and the PSS of it summed over all processes (a page counted once, however many map it)."""
    total, parts, store_rss, store_pss = 0, {}, [], 0
    for p in proctree.tree(root):
        try:
            name = proctree.label(p)
            maps = p.memory_maps(grouped=True)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss = sum(m.pss for m in maps)
        store = [m for m in maps if "/plasma" in m.path]
        store_pss += sum(m.pss for m in store)
        if name.startswith("ray::ImplicitFunc"):
            store_rss.append(round(sum(m.rss for m in store) / 2 ** 20))
        total += pss
        parts[name] = parts.get(name, 0) + pss
    return total / 2 ** 20, {"pss_by_process_mb": {k: round(v / 2 ** 20) for k, v in
                                                   sorted(parts.items(), key=lambda kv: -kv[1])},
                             "object_store_resident_per_trial_worker_mb": store_rss,
                             "object_store_pss_total_mb": round(store_pss / 2 ** 20)}


def peak_pss(cmd: list[str], log: Path) -> tuple[float, float, dict]:
    """(peak PSS of the command's process tree in MB, wall seconds, per-process MB at the peak)."""
    peak, at_peak = 0.0, {}

    def sample(root):
        nonlocal peak, at_peak
        total, parts = tree_pss_mb(root)
        if total > peak:
            peak, at_peak = total, parts

    rc, wall = proctree.run_sampled(cmd, log, sample)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {rc}); see {log}")
    return peak, wall, at_peak


def write_dataset(folder: Path, n: int, size: int, boxes_per_image: int = 20) -> Path:
    """`n` images of `size` px: the synthetic generator's images (at most 512 px, since its object
    count grows with the area) tiled up to `size`, with the first objects' boxes only, so that the
    pixels, not training on thousands of boxes, make the dataset large."""
    import numpy as np
    from PIL import Image

    base = min(size, 512)
    ann = synth.write_dataset(folder, n_images=n, size=base, seed=0)
    coco = json.loads(ann.read_text())
    reps = -(-size // base)
    for im in coco["images"]:
        path = folder / im["file_name"]
        px = np.tile(np.asarray(Image.open(path)), (reps, reps))[:size, :size]
        Image.fromarray(px).save(path)
        im["width"] = im["height"] = size
    kept, count = [], {}
    for a in coco["annotations"]:
        count[a["image_id"]] = count.get(a["image_id"], 0) + 1
        if count[a["image_id"]] <= boxes_per_image:
            kept.append(a)
    coco["annotations"] = kept
    ann.write_text(json.dumps(coco))
    return ann


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--size", type=int, default=2560)
    p.add_argument("--small-images", type=int, default=4, help="images of the small dataset (same size)")
    p.add_argument("--only", nargs="+", help="run only these (e.g. large-1)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / f"memory-{int(time.time())}"))
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # Same image size in both (a trial's working memory grows with the image, not the dataset).
    datasets = {"large": a.images, "small": a.small_images}
    res = {"benchmark": "memory", "size": a.size, "images": datasets, "runs": {}}
    for label, n in datasets.items():
        data = write_dataset(out / f"data-{label}", n, a.size)
        res[f"{label}_dataset_mb"] = round(n * a.size * a.size / 2 ** 20, 1)  # uint8, one channel
        for concurrent in (1, 4):
            if a.only and f"{label}-{concurrent}" not in a.only:
                continue
            space = out / f"space-{label}-{concurrent}.yaml"
            space.write_text(SPACE.format(data=data, concurrent=concurrent, cpu=2 / concurrent if concurrent > 2 else 1))
            name = f"{label}-{concurrent}"
            cmd = [sys.executable, "-m", "search.run", "--space", str(space), "--storage", str(out / "runs"),
                   "--name", name, "--num-cpus", "2"]
            peak, wall, parts = peak_pss(cmd, out / f"{name}.log")
            res["runs"][name] = {"peak_pss_mb": round(peak), "wall_s": round(wall, 1), "at_peak_mb": parts}
            print(name, res["runs"][name], file=sys.stderr)
    if a.only:
        print(json.dumps(res, indent=1))
        return 0
    per_trial = {label: (res["runs"][f"{label}-4"]["peak_pss_mb"] - res["runs"][f"{label}-1"]["peak_pss_mb"]) / 3
                 for label in datasets}
    res["per_extra_trial_mb"] = {k: round(v) for k, v in per_trial.items()}
    res["dataset_cost_per_extra_trial_mb"] = round(per_trial["large"] - per_trial["small"])
    res["dataset_mb_difference"] = round(res["large_dataset_mb"] - res["small_dataset_mb"])
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
