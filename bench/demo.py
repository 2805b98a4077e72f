"""The demo search's wall time and the best mAP50 it reaches, against an untrained model.

    .venv/bin/python bench/demo.py [--space spaces/demo.yaml] [--out bench/out]

Runs `python -m search.run --space spaces/demo.yaml` as a user would (a fresh process, a local
Ray with this machine's cores), times it end to end, then evaluates an untrained model of each
arm (the same configuration, zero epochs) on the same validation split. Prints one JSON object.
Goal (issue: the search): at most 300 s on a 2-core CPU, best mAP50 clearly above untrained.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.data import DetectionDataset, collate, load_splits  # noqa: E402
from detector.engine import Setup, evaluate  # noqa: E402
from detector.model import build_model, detections_per_img  # noqa: E402
from search.space import load_space  # noqa: E402


def untrained_map50(space, arm) -> float:
    train, val, _ = load_splits(space.data, val_data=space.val_data, images=space.images, val_fraction=0.2,
                             seed=space.seed)
    cfg = space.trial_config(arm, {})
    setup = Setup.create(cfg, train, "cpu")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, setup.stats, image_scale=setup.image_scale)
    loader = torch.utils.data.DataLoader(DetectionDataset(val), batch_size=4, collate_fn=collate)
    return evaluate(model, loader, setup, detections_per_img(cfg, setup.stats))["map50"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--space", default=str(ROOT / "spaces" / "demo.yaml"))
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    a = p.parse_args()
    name = f"bench-demo-{int(time.time())}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "search.run", "--space", a.space, "--storage", a.out,
                           "--name", name], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return 1
    rows = list(csv.DictReader(open(Path(a.out) / name / "results.csv")))
    space = load_space(a.space)
    per_arm = {}
    for arm in space.arms:
        mine = [r for r in rows if r["arm"] == arm.name]
        per_arm[arm.name] = {
            "best_map50": max(float(r[f"best_{space.metric}"]) for r in mine),
            "untrained_map50": untrained_map50(space, arm),
            "finished": sum(r["status"] == "finished" for r in mine),
            "stopped": sum(r["status"].startswith("stopped") for r in mine),
            "failed": sum(r["status"].startswith("failed") for r in mine),
        }
    print(json.dumps({"benchmark": "demo", "date": str(date.today()), "machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "wall_s": round(wall, 1), "goal_wall_s": 300,
                      "best_map50": max(v["best_map50"] for v in per_arm.values()), "arms": per_arm,
                      "run": str(Path(a.out) / name)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
