"""Record the replay benchmark (issue 16): full learning curves on the embedded synthetic dataset.

    .venv/bin/python bench/record_curves.py [--storage /tmp/smallobj-curves] [--out bench/curves]

Runs `search.run --space bench/curves/space.yaml` (2 arms x 24 random configurations x 8 epochs,
`budget: {stopping: none}`: no trial is stopped early), then keeps what `search.replay` needs in
`bench/curves/curves.json`: each trial's configuration, metric per epoch, epoch cost and report
time. Prints one JSON line: the wall time and the recording's size.

Disk: every trial keeps its last checkpoints until the run ends (Ray's); this recording's 48 trials
held 19 GB, and the first recording filled this machine's disk at its 48th trial. The run folder's
checkpoints are removed once the curves are saved. A trial that did not run every epoch (a crash)
is left out of curves.json and named in the JSON line (`dropped`); `--save-only` saves the curves
of a run folder that is already there.

`--complete` fills such a gap afterwards without a new search: the space's sampler is seeded (per
arm, search.searcher.open_studies), so asking each arm's study `trials_per_arm` times again gives
the configurations the recording run was given, in order. Those without a curve in curves.json are
trained here, one at a time, with search.run's data split, `detector.engine.fit` (the trainable's
engine) and one torch thread (a one-CPU Ray trial's), and their curves are appended (trial id
`completed-<arm>-<n>`, n the proposal's position) with the command in the file's `command`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search import replay, run, searcher  # noqa: E402
from search.space import Arm  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default="/tmp/smallobj-curves")
    ap.add_argument("--out", default=str(ROOT / "bench" / "curves"))
    ap.add_argument("--space", default=str(ROOT / "bench" / "curves" / "space.yaml"))
    ap.add_argument("--save-only", action="store_true", help="save the curves of the run folder already there")
    ap.add_argument("--complete", action="store_true",
                    help="train the configurations the recording run was given but has no curve of, and add them")
    args = ap.parse_args(argv)
    if args.complete:
        return complete(Path(args.out), argv)
    run_dir = Path(args.storage) / "curves"
    wall = None
    if not args.save_only:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        rc = run.main(["--space", args.space, "--storage", args.storage, "--name", "curves"])
        wall = round(time.perf_counter() - t0, 1)
        if rc != 0:
            return rc
    rec = replay.load_recording(run_dir)
    full = [c for c in rec.curves if len(c.values) == rec.space.max_epochs]
    dropped = [f"{c.trial_id} ({c.arm}: {len(c.values)} epochs, {c.status})" for c in rec.curves if c not in full]
    rec = replay.Recording(rec.space, full, rec.source)
    command = "python bench/record_curves.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    out = rec.save(Path(args.out), command=command)
    for d in run_dir.glob("trials/*/checkpoint_*"):
        shutil.rmtree(d, ignore_errors=True)
    print(json.dumps({"wall_s": wall, "trials": len(rec.curves), "dropped": dropped, "arms": rec.arms(),
                      "epochs": sum(len(c.values) for c in rec.curves), "short": len(rec.short()),
                      "gpu_hours": round(rec.grid_cost() / 3600, 3), "best": {a: rec.best(a) for a in rec.arms()},
                      "out": str(out), "bytes": out.stat().st_size}))
    return 0


def missing_proposals(rec: replay.Recording) -> list[tuple[int, Arm, dict]]:
    """(position, arm, params) of each configuration the space's seeded sampler proposes, arm by
    arm, for which the recording holds no curve."""
    studies = searcher.open_studies(rec.space, None)  # in memory, seeded as the recording run's were
    missing = []
    for arm in rec.space.arms:
        held = [c.params for c in rec.of(arm.name)]
        for n in range(rec.space.trials_per_arm):
            params = searcher._suggest(studies[arm.name].ask(), rec.space)
            if params not in held:
                missing.append((n, arm, params))
    return missing


def complete(folder: Path, argv) -> int:
    import torch

    from detector.engine import fit

    rec = replay.load_recording(folder)
    todo = missing_proposals(rec)
    if not todo:
        print(json.dumps({"added": [], "trials": len(rec.curves), "out": str(folder / replay.CURVES)}))
        return 0
    splits = rec.space.load_splits()
    torch.set_num_threads(1)
    added, t0 = [], time.perf_counter()
    for n, arm, params in todo:
        rows = []
        with tempfile.TemporaryDirectory(prefix="smallobj-complete-") as work:
            fit(rec.space.trial_config(arm, params), splits.train, splits.val, work,
                on_epoch=lambda m, _: rows.append({**m, "reported_at": time.time()}))
        added.append(replay.curve_of(f"completed-{arm.name}-{n}", arm.name, params, "finished", rows,
                                     rec.space.metric))
    before = json.loads((folder / replay.CURVES).read_text()).get("command", "")
    command = f"{before} && python bench/record_curves.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    out = replay.Recording(rec.space, rec.curves + added, rec.source).save(folder, command=command)
    print(json.dumps({"wall_s": round(time.perf_counter() - t0, 1), "added": [c.trial_id for c in added],
                      "params": [c.params for c in added], "best": [c.best() for c in added],
                      "trials": len(rec.curves) + len(added), "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
