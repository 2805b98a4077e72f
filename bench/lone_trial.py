"""What a lone last trial would gain from the idle cores (issue 17, part 5): one demo configuration's
epoch time with 1 and with 2 torch threads, in this process, one after the other, and whether the
thread count changes what the trial computes (same seed, same data: is each epoch's training loss
and validation mAP50 bit for bit the same?).

    .venv/bin/python bench/lone_trial.py [--threads 1 2] [--arm 1] [--epochs 2]

Prints one JSON line: each run's thread count, seconds, losses and mAP50s per epoch, `same_results`
(all runs alike) and `same_results_at_equal_threads` (the control: `--threads 1 2 1` runs the first
count twice).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from detector.data import load_splits  # noqa: E402
from detector.engine import fit  # noqa: E402
from search.space import load_space  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--arm", type=int, default=1, help="index of the demo's arm (1: resnet34)")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args(argv)
    space = load_space(ROOT / "spaces" / "demo.yaml")
    split = space.split()
    train, val, _ = load_splits(None, val_fraction=split.val_fraction, test_fraction=split.test_fraction,
                                seed=split.split_seed)
    arm = space.arms[args.arm]
    cfg = dataclasses.replace(space.trial_config(arm, {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}),
                              epochs=args.epochs)
    runs = []
    for n in args.threads:
        torch.set_num_threads(n)
        epochs: list[dict] = []
        with tempfile.TemporaryDirectory() as d:
            fit(cfg, train, val, d, on_epoch=lambda m, _: epochs.append(m))
        runs.append({"threads": n, "epoch_time_s": [round(m["epoch_time_s"], 1) for m in epochs],
                     "loss": [m["loss"] for m in epochs], "map50": [m["map50"] for m in epochs]})

    def same(group) -> bool | None:  # None: fewer than two runs to compare
        return len({json.dumps([r["loss"], r["map50"]]) for r in group}) == 1 if len(group) > 1 else None

    out = {"arm": arm.name, "runs": runs, "same_results": same(runs),
           "same_results_at_equal_threads": same([r for r in runs if r["threads"] == runs[0]["threads"]])}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
