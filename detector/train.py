"""Train one configuration from the command line.

    python -m detector.train --config best.yaml [--data PATH] [--val-data PATH] [--test-data PATH]
                             [--images DIR] [--set key=value ...] [--epochs N] [--out DIR] [--resume]
                             [--device cpu]
    python -m detector.train --print-config > my.yaml

Writes into DIR: model.pt (best weights + configuration), checkpoint.pt (latest, for --resume),
metrics.jsonl (one JSON object per epoch) and summary.json. Without --data it trains on the
embedded synthetic dataset. --config accepts the files `search.export` writes, unchanged: the
split fields it carries (split_seed, val_fraction, test_fraction) give the same train, validation
and test images as the search had, and a warning is printed when the data's fingerprint differs
from the one recorded in the file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from detector import config as C
from detector import tracking
from detector.data import DataError, load_splits
from detector.engine import NonFiniteLossError, OutOfMemoryError, fit


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m detector.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="configuration YAML (default: the built-in defaults)")
    p.add_argument("--data", help="COCO JSON, folder with annotations.json, or VOC folder (default: synthetic)")
    p.add_argument("--val-data", help="separate validation annotations (default: split --data by val_fraction)")
    p.add_argument("--test-data", help="held-out test annotations (default: split --data by test_fraction, if > 0)")
    p.add_argument("--images", help="folder the image file names are relative to")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    p.add_argument("--epochs", type=int, help="override the epoch count")
    p.add_argument("--out", default="runs/train", help="output folder (default: runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--print-config", action="store_true", help="print the default configuration as commented YAML")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--log", action="append", default=[], metavar="TRACKER",
                   help="also send the training to a tracker: mlflow[=TRACKING_URI], wandb[=PROJECT], tensorboard "
                        "(repeatable; see detector/tracking.py)")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> C.TrainConfig:
    """The configuration file, then --set overrides, then --epochs (each validated)."""
    cfg = C.load(args.config) if args.config else C.TrainConfig()
    changes = dict(C.parse_assignment(s) for s in args.set)
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if changes:
        unknown = sorted(set(changes) - set(C.FIELD_NAMES))
        if unknown:
            raise C.ConfigError(f"--set: unknown field(s) {unknown}; valid fields are {list(C.FIELD_NAMES)}")
        cfg = C.from_dict({**C.to_dict(cfg), **changes}, source="--set")
    return cfg


def recorded_fingerprint(path: str) -> str | None:
    """The data fingerprint an exported configuration records (its `search:` block), if any."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    meta = data.get("search") if isinstance(data, dict) else None
    return meta.get("data_fingerprint") if isinstance(meta, dict) else None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.print_config:
        print(C.dump(C.TrainConfig(), comments=True,
                     header="Default training configuration (python -m detector.train --print-config)."), end="")
        return 0
    try:
        cfg = resolve_config(args)
        trackers = tracking.parse(args.log)
        splits = load_splits(args.data, val_data=args.val_data, test_data=args.test_data, images=args.images,
                             val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.split_seed)
    except (C.ConfigError, DataError, tracking.TrackerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train, val, test = splits
    recorded = recorded_fingerprint(args.config) if args.config else None
    if recorded and recorded != splits.fingerprint():
        print(f"warning: {args.config}: the data differs from the data this configuration was chosen on "
              f"(fingerprint {splits.fingerprint()}, recorded {recorded}): its results are not comparable",
              file=sys.stderr)
    problems = train.report.as_dict()
    for kind, pr in problems.items():
        print(f"data: {kind}: {pr['count']} ({pr['meaning']})", file=sys.stderr)
    print(f"training {cfg.backbone} {cfg.version} weights={cfg.weights} on {len(train)} images, "
          f"validating on {len(val)}" + (f", testing on {len(test)}" if test is not None else "")
          + f"; output {args.out}", file=sys.stderr)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    runs = tracking.Runs(trackers, cfg, Path(args.out), name=Path(args.out).name)
    ok = False
    try:
        summary = fit(cfg, train, val, Path(args.out), test=test, device=args.device, resume=args.resume,
                      progress=not args.quiet, log=lambda s: print(s, file=sys.stderr),
                      on_epoch=lambda m, _: runs.log(m, int(m["epoch"])))
        ok = True
    except (NonFiniteLossError, OutOfMemoryError, C.ConfigError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        runs.end(ok)
    best = summary["best"]
    print(json.dumps({"metric": cfg.metric, "best_epoch": summary["best_epoch"], cfg.metric: best.get(cfg.metric),
                      "map50": best.get("map50"), "map": best.get("map"), "epochs_run": summary["epochs_run"],
                      **{k: v for k, v in best.items() if k.startswith("test_")},
                      "data_fingerprint": splits.fingerprint(), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
