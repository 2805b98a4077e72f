"""The project's training loop, data pipeline included, against the bare torchvision loop.

    .venv/bin/python bench/loop_vs_raw.py [--arch resnet18-v1] [--size 256] [--batch 2] [--steps 12]
                                         [--device cpu|cuda] [--amp off|bf16|fp16]

Measures, one after the other: (1) ../shared/tools/raw_torchvision_bench.py as a subprocess (random
tensors already on the device, no data pipeline, no metrics); (2) that script's bare step in this
process, on the project's synthetic images collated on the device beforehand; (3)
`detector.engine.train_one_epoch` with its data pipeline on the same images: same architecture
(frozen BatchNorm, as the script builds it), image size, batch size and torchvision defaults.
(1) is reported for reference only: see bare_on_our_data for why its figure is not comparable on
the CPU; (2) against (3) is the like-for-like ratio.
Goal (issue: the training engine): ratio >= 0.90 on the CPU and on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The shared yardstick: beside the checkout here; inside it (shared/ or .gpu/) on the GPU machine.
RAW_CANDIDATES = [ROOT.parent / "shared" / "tools", ROOT / "shared" / "tools", ROOT / ".gpu"]

from detector import config as C  # noqa: E402
from detector import synth  # noqa: E402
from detector.data import DetectionDataset, collate, load_coco  # noqa: E402
from detector.engine import Setup, build_optimizer, build_scheduler, train_one_epoch  # noqa: E402
from detector.model import build_model  # noqa: E402
from detector.precision import amp_dtype, autocast  # noqa: E402
from detector.transforms import Augment  # noqa: E402


def raw(a) -> dict:
    raw_script = a.raw or next((str(d / "raw_torchvision_bench.py") for d in RAW_CANDIDATES
                                if (d / "raw_torchvision_bench.py").exists()), None)
    if raw_script is None:
        return {"train_img_s": None, "note": "raw_torchvision_bench.py not found; pass --raw"}
    if a.amp == "fp16":
        return {"train_img_s": None, "note": "raw_torchvision_bench.py has no fp16 mode (its --amp is bf16)"}
    cmd = [sys.executable, raw_script, "--arch", a.arch, "--size", str(a.size), "--batch", str(a.batch),
           "--steps", str(a.steps), "--warmup", "2", "--device", a.device] + (["--amp"] if a.amp == "bf16" else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bare_on_our_data(a, data: Path) -> dict:
    """The raw script's bare step (SGD, lr 0.01, momentum 0.9; no clipping, no checks) in this
    process, on the project's images collated on the device beforehand, with the project's model
    (the same structure as the script's: frozen-BatchNorm ResNet-FPN, 1 channel, 2 classes).

    Not the script's own run: on this CPU (resnet18-v1, 256 px, batch 2, its random tensors) its loss
    went 3.4, 12.8, 10.1, 8.1, 61.8, 153.9, 7e7, then NaN from the 8th step on, and a NaN step took
    0.75 s against 2.0-2.6 s before: its images/s measure a diverged model. Non-finite steps of this
    bare loop are counted and reported, so a ratio is never taken against a NaN run."""
    ds = load_coco(data)
    dev = torch.device(a.device)
    items = [DetectionDataset(ds)[i] for i in range(len(ds))]
    batches = [([im.to(dev) for im, _ in items[i:i + a.batch]],
                [{"boxes": t["boxes"].to(dev), "labels": t["labels"].to(dev)} for _, t in items[i:i + a.batch]])
               for i in range(0, len(items), a.batch)]
    torch.manual_seed(0)
    model = build_model(_cfg(a), ds.stats(), load_weights=False).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    losses = []
    dtype = amp_dtype(a.amp, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)

    def step(images, targets):
        with autocast(dev, dtype):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.detach())

    for b in batches[:2]:
        step(*b)
    sync()
    t0 = time.perf_counter()
    for b in batches:
        step(*b)
    sync()
    rate = len(items) / (time.perf_counter() - t0)
    return {"train_img_s": round(rate, 2), "nonfinite_steps": int((~torch.isfinite(torch.stack(losses))).sum())}


def _cfg(a) -> C.TrainConfig:
    backbone, version = a.arch.split("-")
    # weights="imagenet" built without loading: the same frozen-BatchNorm structure as the raw script's
    # resnet_fpn_backbone (its default norm layer), so both loops train the same model.
    return C.TrainConfig(backbone=backbone, version=version, weights="imagenet", min_size=a.size, max_size=a.size,
                         batch_size=a.batch, anchor_sizes="default", num_workers=a.workers, amp=a.amp, epochs=1,
                         warmup_epochs=0.0)


def project(a, data: Path) -> dict:
    cfg = _cfg(a)
    ds = load_coco(data)
    setup = Setup.create(cfg, ds, a.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build_model(cfg, setup.stats, image_scale=setup.image_scale, load_weights=False).to(setup.device)
    opt = build_optimizer(cfg, model)
    n = len(ds)
    sched = build_scheduler(cfg, opt, (n + a.batch - 1) // a.batch)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.amp_dtype == torch.float16)
    train = DetectionDataset(ds, 1, Augment(cfg.hflip, cfg.vflip, cfg.rot90))
    pin = setup.device.type == "cuda"

    def loader(subset):
        return torch.utils.data.DataLoader(torch.utils.data.Subset(train, subset), batch_size=a.batch, shuffle=True,
                                           num_workers=a.workers, collate_fn=collate, pin_memory=pin)

    warm = list(range(2 * a.batch))
    train_one_epoch(model, opt, sched, loader(warm), setup=setup, cfg=cfg, scaler=scaler, epoch=0)
    # train_one_epoch times itself (first batch to last step), as the raw loop times its steps.
    m = train_one_epoch(model, opt, sched, loader(list(range(a.steps * a.batch))), setup=setup, cfg=cfg, scaler=scaler, epoch=1)
    return {"train_img_s": round(m["train_img_per_s"], 2)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18-v1")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=list(C.AMP_MODES), default="off")
    p.add_argument("--raw", help="path of raw_torchvision_bench.py (default: ../shared/tools, shared/tools, .gpu)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each loop (medians reported)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        data = synth.write_dataset(Path(d), n_images=a.steps * a.batch, size=a.size, seed=0)
        t0 = time.time()
        r = raw(a)
        # Alternate the two loops and take medians: this machine's speed drifts by tens of percent
        # between minutes, so one run of each compares the minutes, not the loops.
        bares, projects, nonfinite = [], [], []
        for _ in range(a.repeats):
            b = bare_on_our_data(a, data)
            bares.append(b["train_img_s"])
            nonfinite.append(b["nonfinite_steps"])
            projects.append(project(a, data)["train_img_s"])
        bare, pr = {"train_img_s": statistics.median(bares)}, {"train_img_s": statistics.median(projects)}
    print(json.dumps({"benchmark": "loop_vs_raw", "arch": a.arch, "size": a.size, "batch": a.batch,
                      "device": a.device, "amp": a.amp, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                      "raw_script_train_img_s": r["train_img_s"], "bare_loop_same_data_train_img_s": bare["train_img_s"],
                      "project_train_img_s": pr["train_img_s"],
                      "ratio_vs_raw_script": round(pr["train_img_s"] / r["train_img_s"], 3) if r["train_img_s"] else None,
                      "ratio_vs_bare_loop_same_data": round(pr["train_img_s"] / bare["train_img_s"], 3),
                      "bare_runs": bares, "bare_nonfinite_steps": nonfinite, "project_runs": projects, "goal_ratio": 0.90,
                      "wall_s": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
