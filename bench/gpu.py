"""GPU figures, driving detector/ directly (the GPU machine has no Ray): `bench/gpu.sh` runs these.

    python bench/gpu.py throughput [--size 512] [--batches 8 32] [--archs ...] [--seconds 3]
    python bench/gpu.py share [--arch resnet18-v1] [--batch 8] [--procs 1 2 4] [--seconds 15]
    python bench/gpu.py precision [--size 64] [--images 32] [--epochs 6]

throughput: training images/s of each architecture (the project's models, built by
    detector.model.build_model, 1 channel, 2 classes) on synthetic 512 x 512 tensors already on
    the device, 40 boxes of 6-24 px per image, SGD: the model's own speed, without a data path, as
    ../shared/tools/raw_torchvision_bench.py measures it. `amp` off (fp32), bf16 and fp16 (with a
    gradient scaler). Each figure: 3 warm-up steps, then steps for `--seconds`.
share: N processes each running the project's own loop (`detector.engine.train_one_epoch`, data
    pipeline included) at the same time on one GPU, each capping its allocator at 1/N of the GPU
    (`detector.engine.limit_gpu_memory`, what a trial with `resources.gpu: 1/N` does); the aggregate
    images/s over a window in which all N run, against one process alone, and which ran out of memory.
precision: one model trained briefly (`detector.engine.fit`, fp32) on synthetic 64-px images, then
    evaluated on 128 x 2048 mosaics of its validation images (objects at their trained scale,
    coordinates up to 2048 px) in fp32, bf16 and fp16: mAP50 must agree within 0.01.
Each prints one JSON object. On a machine without CUDA they run on the CPU (for a smoke test).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector import config as C  # noqa: E402
from detector import synth  # noqa: E402
from detector.data import DecodedDataset, DetectionDataset, collate  # noqa: E402
from detector.engine import Setup, build_optimizer, build_scheduler, train_one_epoch  # noqa: E402
from detector.engine import limit_gpu_memory  # noqa: E402
from detector.model import build_model, count_params  # noqa: E402
from detector.precision import amp_dtype, autocast  # noqa: E402

ARCHS = [f"resnet{d}-{v}" for v in ("v1", "v2") for d in (18, 34, 50, 101)]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _cfg(arch: str, size: int, batch: int, amp: str, workers: int = 0) -> C.TrainConfig:
    backbone, version = arch.split("-")
    return C.TrainConfig(backbone=backbone, version=version, weights="none", min_size=size, max_size=size,
                         batch_size=batch, anchor_sizes="default", amp=amp, epochs=1, warmup_epochs=0.0,
                         num_workers=workers, lr=0.01)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def synthetic_batch(batch: int, size: int, gen: torch.Generator):
    images = [torch.rand(1, size, size, device=DEVICE, generator=gen) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(40, 2, device=DEVICE, generator=gen) * (size - 30)
        wh = 6 + torch.rand(40, 2, device=DEVICE, generator=gen) * 18
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.ones(40, dtype=torch.int64, device=DEVICE)})
    return images, targets


def model_throughput(arch: str, size: int, batch: int, amp: str, seconds: float) -> dict:
    cfg = _cfg(arch, size, batch, amp)
    dtype = amp_dtype(amp, torch.device(DEVICE))
    scaler = torch.amp.GradScaler(DEVICE, enabled=dtype == torch.float16)
    torch.manual_seed(0)
    stats = DecodedDataset([np.zeros((size, size), np.uint8)], [(0, 255)], [np.zeros((0, 4), np.float32)],
                           [np.zeros(0, np.int64)], ["x"], ["object"], [1]).stats()
    model = build_model(cfg, stats, load_weights=False).to(DEVICE).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    images, targets = synthetic_batch(batch, size, gen)

    def step():
        with autocast(torch.device(DEVICE), dtype):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        scaler.step(opt)
        scaler.update()
        return loss

    for _ in range(3):
        step()
    _sync()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps, t0 = 0, time.perf_counter()
    losses = []
    while time.perf_counter() - t0 < seconds or steps < 3:
        losses.append(step().detach())
        steps += 1
    _sync()
    dt = time.perf_counter() - t0
    nonfinite = int((~torch.isfinite(torch.stack(losses))).sum())
    out = {"arch": arch, "batch": batch, "amp": amp, "train_img_s": round(steps * batch / dt, 1), "steps": steps,
           "nonfinite_steps": nonfinite, "params_m": round(count_params(model)[0] / 1e6, 2)}
    if DEVICE == "cuda":
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    del model, opt
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return out


def throughput(a) -> dict:
    torch.backends.cudnn.benchmark = True
    rows = []
    for arch in a.archs:
        for batch in a.batches:
            for amp in a.amp:
                try:
                    rows.append(model_throughput(arch, a.size, batch, amp, a.seconds))
                except torch.OutOfMemoryError:
                    rows.append({"arch": arch, "batch": batch, "amp": amp, "error": "out of memory"})
                    torch.cuda.empty_cache()
                print(json.dumps(rows[-1]), flush=True)  # a row at a time: kept if the part runs out of time
    return {"benchmark": "gpu_throughput", "device": _device_name(), "size": a.size, "rows": rows}


def _dataset(n: int, size: int) -> DecodedDataset:
    """n synthetic images (the embedded dataset's generator) decoded in memory."""
    imgs, boxes = [], []
    for i in range(n):
        px, bx = synth.render_image(np.random.default_rng([0, i]), size)
        imgs.append(px)
        boxes.append(np.asarray(bx, np.float32).reshape(-1, 4))
    return DecodedDataset(imgs, [(0, 255)] * n, boxes, [np.ones(len(b), np.int64) for b in boxes],
                          [f"{i}.png" for i in range(n)], ["object"], list(range(1, n + 1)))


def child(a) -> dict:
    """One 'trial' of `share`: the project's loop for a time window starting at `--start-at`."""
    cfg = _cfg(a.arch, a.size, a.batch, "bf16" if DEVICE == "cuda" else "off", a.workers)
    ds = _dataset(a.images, a.size)
    setup = Setup.create(cfg, ds, DEVICE)
    limit_gpu_memory(setup.device, a.memory_fraction)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build_model(cfg, setup.stats, image_scale=setup.image_scale, load_weights=False).to(DEVICE)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, 10 ** 6)
    scaler = torch.amp.GradScaler(DEVICE, enabled=setup.amp_dtype == torch.float16)
    loader = torch.utils.data.DataLoader(DetectionDataset(ds), batch_size=a.batch, shuffle=True, collate_fn=collate,
                                         num_workers=a.workers, pin_memory=DEVICE == "cuda",
                                         persistent_workers=a.workers > 0)
    train_one_epoch(model, opt, sched, loader, setup=setup, cfg=cfg, scaler=scaler, epoch=0)  # warm-up, cudnn autotuning
    time.sleep(max(0.0, a.start_at - time.time()))
    images, t0 = 0, time.time()
    try:
        while time.time() - t0 < a.seconds:
            m = train_one_epoch(model, opt, sched, loader, setup=setup, cfg=cfg, scaler=scaler, epoch=1)
            images += round(m["train_img_per_s"] * m["epoch_time_s"])
    except torch.cuda.OutOfMemoryError:
        return {"images": images, "seconds": round(time.time() - t0, 2), "start": t0, "out_of_memory": True}
    out = {"images": images, "seconds": round(time.time() - t0, 2), "start": t0, "out_of_memory": False}
    if DEVICE == "cuda":
        out["peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2 ** 20)
    return out


def share(a) -> dict:
    runs = []
    for n in a.procs:
        start_at = time.time() + a.setup_s  # every process has built its model and warmed up by then
        cmd = [sys.executable, __file__, "child", "--arch", a.arch, "--batch", str(a.batch), "--size", str(a.size),
               "--images", str(a.images), "--workers", str(a.workers), "--seconds", str(a.seconds),
               "--start-at", str(start_at), "--memory-fraction", str(1.0 / n)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        late = max(o["start"] for o in outs) - start_at
        total = sum(o["images"] / o["seconds"] for o in outs)
        runs.append({"procs": n, "memory_fraction": round(1.0 / n, 3), "aggregate_train_img_s": round(total, 1),
                     "per_process_img_s": [round(o["images"] / o["seconds"], 1) for o in outs],
                     "out_of_memory": [o["out_of_memory"] for o in outs],
                     "peak_reserved_mb": [o.get("peak_reserved_mb") for o in outs], "late_start_s": round(late, 1)})
        print(json.dumps(runs[-1]), flush=True)
    one = runs[0]["aggregate_train_img_s"] if runs and runs[0]["procs"] == 1 else None
    for r in runs:
        r["vs_one"] = round(r["aggregate_train_img_s"] / one, 2) if one else None
    return {"benchmark": "gpu_share", "device": _device_name(), "arch": a.arch, "batch": a.batch, "size": a.size,
            "amp": "bf16" if DEVICE == "cuda" else "off", "runs": runs}


def precision(a) -> dict:
    """mAP50 of one trained model in the three amp modes (see the module docstring)."""
    import tempfile

    from detector.data import load_splits
    from detector.engine import evaluate, fit, load_checkpoint
    from detector.model import DataStats

    root = Path(tempfile.mkdtemp(prefix="gpu-precision-"))
    data = synth.write_dataset(root / "data", n_images=a.images, size=a.size, seed=3)
    train, val = load_splits(str(data), val_fraction=0.25, seed=0)[:2]
    cfg = C.from_dict(dict(backbone="resnet18", min_size=a.size, max_size=a.size, anchor_sizes=[8, 16, 32, 64, 128],
                           box_batch_size_per_image=16, rpn_batch_size_per_image=32, rpn_pre_nms_top_n_train=200,
                           rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=600, rpn_post_nms_top_n_test=300,
                           num_workers=0, batch_size=2, epochs=a.epochs, lr=0.02, warmup_epochs=0.5, seed=1))
    t0 = time.time()
    summary = fit(cfg, train, val, root / "run", device=DEVICE)
    train_s = time.time() - t0
    ck = load_checkpoint(root / "run" / "model.pt")
    rows, cols = 2, a.width // a.size
    tiles = DetectionDataset(val)
    batches = []
    for offset in (0, 3):
        img = torch.zeros(1, a.size * rows, a.size * cols)
        boxes, labels = [], []
        for k in range(rows * cols):
            x, t = tiles[(k + offset) % len(tiles)]
            r, c = divmod(k, cols)
            img[:, a.size * r:a.size * (r + 1), a.size * c:a.size * (c + 1)] = x
            boxes.append(t["boxes"] + torch.tensor([a.size * c, a.size * r] * 2, dtype=torch.float32))
            labels.append(t["labels"])
        batches.append(([img], [{"boxes": torch.cat(boxes), "labels": torch.cat(labels)}]))
    ecfg = C.from_dict(ck["config"]).replace(min_size=a.size * rows, max_size=a.size * cols,
                                             rpn_pre_nms_top_n_test=3000, rpn_post_nms_top_n_test=3000,
                                             box_detections_per_img=2000)
    stats = DataStats(**{**ck["stats"], "box_size_quantiles": tuple(ck["stats"]["box_size_quantiles"])})
    model = build_model(ecfg, stats, load_weights=False, image_scale=ck["image_scale"])
    model.load_state_dict(ck["model"])
    model = model.to(DEVICE).eval()
    scores = {}
    for mode in C.AMP_MODES:
        setup = Setup(torch.device(DEVICE), stats, 1.0, amp_dtype(mode, torch.device(DEVICE)))
        scores[mode] = round(evaluate(model, batches, setup, 2000)["map50"], 4)
        print(json.dumps({"amp": mode, "map50": scores[mode]}), flush=True)
    spread = max(scores.values()) - min(scores.values())
    return {"benchmark": "gpu_precision", "device": _device_name(), "val_map50_fp32_trained": round(summary["best"]["map50"], 4),
            "train_s": round(train_s, 1), "mosaic": [a.size * rows, a.size * cols], "map50": scores,
            "spread": round(spread, 4), "agree_within_0.01": spread <= 0.01}


def _device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else f"cpu ({os.cpu_count()} cores)"


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--size", type=int, default=512)
    t.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    t.add_argument("--archs", nargs="+", default=ARCHS)
    t.add_argument("--seconds", type=float, default=3.0)
    t.add_argument("--amp", nargs="+", choices=list(C.AMP_MODES), default=list(C.AMP_MODES))
    q = sub.add_parser("precision")
    q.add_argument("--size", type=int, default=64)
    q.add_argument("--images", type=int, default=32)
    q.add_argument("--epochs", type=int, default=6)
    q.add_argument("--width", type=int, default=2048, help="mosaic width in px (2 tiles high)")
    for name in ("share", "child"):
        s = sub.add_parser(name)
        s.add_argument("--arch", default="resnet18-v1")
        s.add_argument("--batch", type=int, default=8)
        s.add_argument("--size", type=int, default=512)
        s.add_argument("--images", type=int, default=64, help="images in each process's dataset (one epoch)")
        s.add_argument("--workers", type=int, default=2, help="DataLoader workers per process")
        s.add_argument("--seconds", type=float, default=15.0, help="the timed window")
        if name == "share":
            s.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
            s.add_argument("--setup-s", type=float, default=25.0, help="time allowed to build and warm up")
        else:
            s.add_argument("--start-at", type=float, required=True)
            s.add_argument("--memory-fraction", type=float, default=None, help="allocator cap (share of the GPU)")
    a = p.parse_args()
    res = {"throughput": throughput, "share": share, "child": child, "precision": precision}[a.cmd](a)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
