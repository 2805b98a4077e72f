"""The project's training loop, data pipeline included, against the bare torchvision loop.

    .venv/bin/python bench/loop_vs_raw.py [--arch resnet18-v1] [--size 256] [--batch 2] [--steps 12]
                                         [--device cpu|cuda] [--amp]

Runs ../shared/tools/raw_torchvision_bench.py (tensors already on the device, no data pipeline, no
metrics) and then `detector.engine.train_one_epoch` on a synthetic dataset of the same image size,
same architecture, batch size and torchvision defaults (RoI sampling, proposals), in one process
each, one after the other. Prints one JSON object with both images/s and their ratio.
Goal (issue: the training engine): ratio >= 0.90 on the CPU and on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RAW = ROOT.parent / "shared" / "tools" / "raw_torchvision_bench.py"

from detector import config as C  # noqa: E402
from detector import synth  # noqa: E402
from detector.data import DetectionDataset, collate, load_coco  # noqa: E402
from detector.engine import Setup, build_optimizer, build_scheduler, train_one_epoch  # noqa: E402
from detector.model import build_model  # noqa: E402
from detector.transforms import Augment  # noqa: E402


def raw(a) -> dict:
    cmd = [sys.executable, str(RAW), "--arch", a.arch, "--size", str(a.size), "--batch", str(a.batch),
           "--steps", str(a.steps), "--warmup", "2", "--device", a.device] + (["--amp"] if a.amp else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def project(a, data: Path) -> dict:
    backbone, version = a.arch.split("-")
    cfg = C.TrainConfig(backbone=backbone, version=version, min_size=a.size, max_size=a.size, batch_size=a.batch,
                        anchor_sizes="default", num_workers=a.workers, amp=a.amp, epochs=1, warmup_epochs=0.0)
    ds = load_coco(data)
    setup = Setup.create(cfg, ds, a.device)
    torch.backends.cudnn.benchmark = True
    model = build_model(cfg, setup.stats, image_scale=setup.image_scale).to(setup.device)
    opt = build_optimizer(cfg, model)
    n = len(ds)
    sched = build_scheduler(cfg, opt, (n + a.batch - 1) // a.batch)
    scaler = torch.amp.GradScaler("cuda", enabled=setup.amp_dtype == torch.float16)
    train = DetectionDataset(ds, 1, Augment(cfg.hflip, cfg.vflip, cfg.rot90))
    pin = setup.device.type == "cuda"

    def loader(subset):
        return torch.utils.data.DataLoader(torch.utils.data.Subset(train, subset), batch_size=a.batch, shuffle=True,
                                           num_workers=a.workers, collate_fn=collate, pin_memory=pin)

    warm = list(range(2 * a.batch))
    train_one_epoch(model, opt, sched, loader(warm), setup, cfg, scaler, 0)
    # train_one_epoch times itself (first batch to last step), as the raw loop times its steps.
    m = train_one_epoch(model, opt, sched, loader(list(range(a.steps * a.batch))), setup, cfg, scaler, 1)
    return {"train_img_s": round(m["train_img_per_s"], 2)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18-v1")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        data = synth.write_dataset(Path(d), n_images=a.steps * a.batch, size=a.size, seed=0)
        t0 = time.time()
        r = raw(a)
        pr = project(a, data)
    print(json.dumps({"benchmark": "loop_vs_raw", "arch": a.arch, "size": a.size, "batch": a.batch,
                      "device": a.device, "amp": a.amp, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                      "raw_train_img_s": r["train_img_s"], "project_train_img_s": pr["train_img_s"],
                      "ratio": round(pr["train_img_s"] / r["train_img_s"], 3), "goal_ratio": 0.90,
                      "wall_s": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
