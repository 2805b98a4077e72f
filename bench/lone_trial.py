"""What a lone last trial would gain from the idle cores (issue 17, part 5): one demo configuration's
epoch time with 1 and with 2 torch threads, in this process, one after the other.

    .venv/bin/python bench/lone_trial.py [--threads 1 2] [--arm 1] [--epochs 2]

Prints one JSON line: {threads: [seconds per epoch]}.
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
    out = {"arm": arm.name}
    for n in args.threads:
        torch.set_num_threads(n)
        times: list[float] = []
        with tempfile.TemporaryDirectory() as d:
            fit(cfg, train, val, d, on_epoch=lambda m, _: times.append(round(m["epoch_time_s"], 1)))
        out[str(n)] = times
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
