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
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search import replay, run  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default="/tmp/smallobj-curves")
    ap.add_argument("--out", default=str(ROOT / "bench" / "curves"))
    ap.add_argument("--space", default=str(ROOT / "bench" / "curves" / "space.yaml"))
    ap.add_argument("--save-only", action="store_true", help="save the curves of the run folder already there")
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
