"""What one trial checkpoint costs (issue 24, part 6): size and seconds to write and to persist.

    python bench/checkpoint_cost.py [--archs resnet18-v1 resnet50-v1] [--repeats 3]

For each architecture: the checkpoint `detector.engine.fit` writes (model, SGD-with-momentum
optimizer state after one step, scheduler, scaler, RNG, history) written with `engine.atomic_save`
to local disk, then copied once to another folder, which is what Ray's `tune.report(checkpoint=...)`
does with it when the run's storage is a local or mounted path (to S3 it is an upload of the same
bytes). One JSON object on stdout; the per-epoch cost of `budget.checkpoint_every: N` is these
seconds / N.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector import config as C  # noqa: E402
from detector.engine import atomic_save, build_optimizer  # noqa: E402
from detector.model import build_model  # noqa: E402


def measure(arch: str, repeats: int) -> dict:
    backbone, version = arch.split("-")
    cfg = C.TrainConfig(backbone=backbone, version=version, min_size=64, max_size=64, optimizer="sgd", momentum=0.9)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = build_optimizer(cfg, model)
    loss = sum(model([torch.rand(1, 64, 64)], [{"boxes": torch.tensor([[8.0, 8, 24, 24]]),
                                                 "labels": torch.tensor([1])}]).values())
    loss.backward()
    opt.step()  # momentum buffers exist from here on, as in every epoch after the first step
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": {}, "scaler": {},
             "epoch": 1, "rng": {"torch": torch.get_rng_state()}, "config": C.to_dict(cfg), "history": []}
    writes, copies = [], []
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "checkpoint.pt", Path(d) / "persisted"
        for _ in range(repeats):
            t0 = time.perf_counter()
            atomic_save(state, src)
            writes.append(time.perf_counter() - t0)
            shutil.rmtree(dst, ignore_errors=True)
            dst.mkdir()
            t0 = time.perf_counter()
            shutil.copy(src, dst / src.name)
            copies.append(time.perf_counter() - t0)
        size = src.stat().st_size
    return {"arch": arch, "size_mb": round(size / 1e6, 1), "write_s": round(statistics.median(writes), 3),
            "copy_s": round(statistics.median(copies), 3), "repeats": repeats}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet18-v1", "resnet50-v1", "resnet50-v2"])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rows = [measure(arch, a.repeats) for arch in a.archs]
    print(json.dumps({"benchmark": "checkpoint_cost", "rows": rows, "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
