"""Run a search: Ray Tune schedules the trials, Optuna (TPE) proposes them, ASHA stops weak ones.

    python -m search.run --space spaces/demo.yaml [--data PATH] [--storage DIR|s3://bucket/prefix]
                         [--name NAME] [--address auto] [--resume] [--dry-run]

Everything the run produces lives in STORAGE/NAME: `trials/` (Ray's per-trial folders: params,
per-epoch results, checkpoints), `optuna.journal` (the studies), `results.csv` and `trials.json`
(one row per trial), `run.json` (space, data fingerprint, versions) and `run.log`. With object
storage, this machine works in a copy of the small files (see search/storage.py).

This module is the command line: the arguments, the checks made before anything runs (the space,
the data, the run folder, whether a run can be resumed) and run.json. search/driver.py does what
needs Ray: the Tuner and the steps after the search.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from datetime import datetime
from pathlib import Path

from detector import config as C
from detector.data import DataError
from search import compat, driver
from search.space import RESUME_MAY_CHANGE_KEYS, Space, SpaceError, dry_run_text, load_space, resume_changes
from search.storage import RunLocation

log = logging.getLogger("search")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--space", required=True, help="space YAML file (see spaces/README.md)")
    p.add_argument("--data", help="COCO JSON / folder / VOC folder; overrides the space's `data`")
    p.add_argument("--val-data", help="separate validation annotations; overrides the space's `val_data`")
    p.add_argument("--test-data", help="held-out test annotations; overrides the space's `test_data`")
    p.add_argument("--images", help="folder the image file names are relative to")
    p.add_argument("--storage", default="runs", help="folder, or object storage (s3://bucket/prefix), holding runs")
    p.add_argument("--local-dir", default="runs",
                   help="with object storage: where this machine keeps its working copy of the run's small files")
    p.add_argument("--name", help="run name (default: the space's name and the start time)")
    p.add_argument("--address", help="Ray cluster address ('auto' joins the running cluster); default: local Ray")
    p.add_argument("--shared-storage", action="store_true",
                   help="with --address: --storage is a folder every node mounts at the same path (NFS, EFS)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all of this machine's)")
    p.add_argument("--resume", action="store_true", help="continue the run STORAGE/NAME where it stopped")
    p.add_argument("--log", action="append", default=[], metavar="TRACKER",
                   help="also send every trial to a tracker: mlflow[=TRACKING_URI], wandb[=PROJECT], tensorboard "
                        "(repeatable; see search/trackers.py)")
    p.add_argument("--dry-run", action="store_true", help="print arms, skipped combinations and budget; run nothing")
    p.add_argument("--replay-curves", metavar="DIR",
                   help="benchmarks: trials replay the recorded curves in DIR (curves.json + space.yaml, or a run "
                        "folder) instead of training (search/curve_trainable.py); no latency or detection figures")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="with --replay-curves: each replayed epoch sleeps its recorded cost times this")
    return p.parse_args(argv)


def _versions() -> dict:
    import optuna
    import ray
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__}


LOGGERS = ("search", "ray")


def _start_log(run_dir: Path) -> logging.Handler:
    """Send this run's log lines (ours and Ray's) to RUN_DIR/run.log until `_stop_log`."""
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in LOGGERS:
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    logging.getLogger("ray").propagate = False
    return handler


def _stop_log(handler: logging.Handler) -> None:
    """Detach and close the run's log file: a later run in the same process writes only its own."""
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def replay_problem(space: Space, curves_dir: str, time_scale: float) -> str | None:
    """Why a recording cannot stand in for training in this space (None: it can)."""
    from search import replay as R

    if not time_scale >= 0:
        return f"--time-scale {time_scale}: must be 0 or more"
    try:
        rec = R.load_recording(curves_dir)
    except (R.ReplayError, OSError) as e:
        return str(e)
    if rec.space.metric != space.metric:
        return f"its metric is {rec.space.metric}, the space's is {space.metric}"
    missing = [a.name for a in space.arms if not rec.of(a.name)]
    if missing:
        return f"no recorded curve for {len(missing)} of the space's arms ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})"
    return None


def space_change_problem(space: Space, run_dir: Path) -> str | None:
    """Why `--resume` with `space` would mix two searches (its space differs from the run's own
    space.yaml in a key other than `space.RESUME_MAY_CHANGE`), or None. Allowed changes are printed."""
    try:
        old = load_space(run_dir / "space.yaml")
    except (SpaceError, C.ConfigError) as e:
        return f"the run's own space file cannot be read ({e}); nothing was started"
    allowed, refused = resume_changes(old, space)
    if refused:
        return (f"{space.path} differs from the run's space ({run_dir / 'space.yaml'}) in {', '.join(refused)}: "
                f"a resumed search must be the search that was started (the stored studies and ASHA keep the old "
                f"values); resume with the run's space.yaml, or start a new run with --name. Only "
                f"{', '.join(RESUME_MAY_CHANGE_KEYS)} may change")
    if allowed:
        print(f"resume: {', '.join(allowed)} changed from the run's space (allowed: it does not change the trials "
              f"already run); the run's space.yaml is replaced by {space.path}")
    return None


def layout_problem(run_dir: Path) -> str | None:
    """Why this version cannot resume the run folder's layout (search.results.check_layout), or None."""
    from search.results import RunLayoutError, check_layout

    run_json = run_dir / "run.json"
    try:
        check_layout(run_dir, json.loads(run_json.read_text()) if run_json.exists() else None)
    except RunLayoutError as e:
        return str(e)
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        space = load_space(args.space)
    except (SpaceError, C.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.dry_run:
        print(dry_run_text(space))
        return 0
    from search import trackers

    try:
        compat.check()  # a Ray or Optuna this project does not fit fails here, not mid-search
        args.trackers = trackers.parse(args.log)  # a tracker that is not installed is refused now
    except (compat.IncompatibleVersion, trackers.TrackerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.replay_curves:
        problem = replay_problem(space, args.replay_curves, args.time_scale)
        if problem:
            print(f"error: --replay-curves {args.replay_curves}: {problem}", file=sys.stderr)
            return 2
    if args.resume and not args.name:
        print("error: --resume needs --name: the run to continue (STORAGE/NAME)", file=sys.stderr)
        return 2
    name = args.name or f"{space.name}-{datetime.now():%Y%m%d-%H%M%S}"
    loc = RunLocation(args.storage, name, args.local_dir)
    if args.address and not args.shared_storage and loc.uri is None:
        # Trials on other nodes write their checkpoints and results into --storage: a path that only
        # this machine has would lose them (and break resumes). Refused before anything starts.
        print(f"error: --storage {args.storage}: on a cluster (--address) the run folder must be shared by "
              f"every node: use object storage (--storage s3://bucket/prefix), or mount a folder at the same "
              f"path on all nodes and pass --shared-storage", file=sys.stderr)
        return 2
    run_dir = loc.local
    if args.resume:
        if loc.uri is not None:
            if not loc.exists():
                print(f"error: --resume: {loc} does not exist: nothing to resume", file=sys.stderr)
                return 2
            print(f"fetching {loc} (all but checkpoints) into {run_dir}")
            loc.pull()
            loc.best_journal()
        problem = compat.experiment_state_problem(run_dir) or layout_problem(run_dir)
        if problem:
            print(f"error: --resume: {problem}; the run folder is left as it is, and a new search will not be "
                  f"started over it", file=sys.stderr)
            return 2
        problem = space_change_problem(space, run_dir)
        if problem:
            print(f"error: --resume: {problem}", file=sys.stderr)
            return 2
    else:
        for where in (loc, run_dir):  # the run folder, and (with object storage) this machine's copy
            if where.exists():
                print(f"error: {where} already exists: pass --resume to continue it, or another --name",
                      file=sys.stderr)
                return 2
    data_arg = args.data or space.data
    try:  # before the run folder exists: bad data leaves nothing behind
        splits = space.load_splits(data_arg, val_data=args.val_data, test_data=args.test_data, images=args.images)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _start_log(run_dir)
    try:
        return _run(args, space, loc, name, data_arg, splits)
    finally:
        _stop_log(handler)


def _run(args, space: Space, loc: RunLocation, name: str, data_arg, splits) -> int:
    """search.run after its checks: the run folder exists and logs to run.log."""
    run_dir = loc.local
    if not args.resume or resume_changes(load_space(run_dir / "space.yaml"), space)[0]:
        shutil.copy(args.space, run_dir / "space.yaml")  # a resume's allowed changes are kept too
    train, val, test = splits
    for kind, pr in train.report.as_dict().items():
        print(f"data: {kind}: {pr['count']} ({pr['meaning']})")
    fingerprint = splits.fingerprint()
    split = space.split()
    info = {"space": str(Path(args.space).resolve()), "name": name, "storage": loc.uri,  # None: the folder itself
            "data": data_arg or "(embedded synthetic)",
            "val_data": args.val_data or space.val_data, "test_data": args.test_data or space.test_data,
            "data_fingerprint": fingerprint, "split_seed": split.split_seed, "val_fraction": split.val_fraction,
            "test_fraction": split.test_fraction, "metric": space.metric, "max_epochs": space.max_epochs,
            "strategy": space.strategy, "arms": [a.name for a in space.arms], "stages": ["search", *space.eval_stages()],
            "stages_share_queue": True,  # search.stages: later-stage runs join the search's queue
            "versions": _versions(), "trackers": [t.name for t in args.trackers],  # names only: no URI, no key
            "train_images": len(train), "val_images": len(val),
            "test_images": len(test) if test is not None else 0}
    run_json = run_dir / "run.json"
    replay = {"curves_dir": str(Path(args.replay_curves).resolve()), "time_scale": args.time_scale} \
        if args.replay_curves else None
    if args.resume and run_json.exists():
        old = json.loads(run_json.read_text())
        if old.get("data_fingerprint") != fingerprint:
            print(f"error: --resume: the data differs from the run's (fingerprint {old.get('data_fingerprint')} "
                  f"vs {fingerprint})", file=sys.stderr)
            return 2
        replay = replay or old.get("replay")  # a replayed run resumes replaying, with its own curves
    info.update(replay=replay, ray_loggers="json")  # Ray's own loggers off, its JSON one added (driver.py)
    compat.quiet_ray_loggers()
    run_json.write_text(json.dumps(info, indent=1))
    loc.push(["space.yaml", "run.json"])
    print(f"run folder {loc}\n{len(space.arms)} arm(s), {space.total_trials()} trials, "
          f"{len(train)} train / {len(val)} val / {len(test) if test is not None else 0} test images")
    log.info("starting %s (resume=%s)", run_dir, args.resume)

    records, elapsed = driver.drive(args, space, loc, splits, replay)
    print(driver.summary_text(records, space, elapsed, run_dir))
    return 0


if __name__ == "__main__":
    compat.classic_progress_output()
    sys.exit(main())
