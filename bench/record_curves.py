"""Record the replay benchmark (issue 16): full learning curves on the embedded synthetic dataset.

    .venv/bin/python bench/record_curves.py [--storage /tmp/smallobj-curves] [--out bench/curves]

Runs `search.run --space bench/curves/space.yaml` (2 arms x 24 random configurations x 8 epochs,
`budget: {stopping: none}`: no trial is stopped early), then keeps what `search.replay` needs in
`bench/curves/curves.json`: each trial's configuration, metric per epoch, epoch cost and report
time (no checkpoints; the run folder stays under --storage). Prints one JSON line: the wall time
and the recording's size.
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
    args = ap.parse_args(argv)
    run_dir = Path(args.storage) / "curves"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    rc = run.main(["--space", args.space, "--storage", args.storage, "--name", "curves"])
    wall = time.perf_counter() - t0
    if rc != 0:
        return rc
    rec = replay.load_recording(run_dir)
    command = "python bench/record_curves.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    out = rec.save(Path(args.out), command=command)
    print(json.dumps({"wall_s": round(wall, 1), "trials": len(rec.curves), "arms": rec.arms(),
                      "epochs": sum(len(c.values) for c in rec.curves), "short": len(rec.short()),
                      "gpu_hours": round(rec.grid_cost() / 3600, 3), "best": {a: rec.best(a) for a in rec.arms()},
                      "out": str(out), "bytes": out.stat().st_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
