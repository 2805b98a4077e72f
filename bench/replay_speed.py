"""Speed of search.replay (issue 16's goal: 1,000 trials x 60 epochs x 100 repeats of one strategy in
at most 60 s on a 2-core CPU).

    .venv/bin/python bench/replay_speed.py [--repeats 100] [--jobs 2] [--strategy asha-tpe:5:3]
                                           [--budget 0.2] [--configs-per-arm 27]

The recording is synthetic (a replay's cost does not depend on what the numbers are): the space of
spaces/full.yaml (38 arms, 60 epochs, its 7 parameters, conditional ones included) with
--configs-per-arm random configurations per arm (27: 1,026 trials of 60 epochs), saturating curves
whose height depends on lr and the arm, and 20-40 s epochs. The budget, a fraction of the grid's
GPU-time, sets how many trials a repeat simulates: 0.2 is about what spaces/full.yaml's own search
spends with ASHA 5/3 (912 trials; its setting before the replay evidence). Prints one JSON line: wall and CPU time, simulated trials and epochs
per repeat, and the CPU time per simulated trial.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.synthetic import synthetic_recording  # noqa: E402
from search import replay as R  # noqa: E402


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the --jobs processes): unlike the wall
    time, it does not grow when other work shares the cores."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--strategy", default="asha-tpe:5:3")
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--configs-per-arm", type=int, default=27)
    ap.add_argument("--workers", type=int, default=16)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        rec = R.load_recording(synthetic_recording(ROOT / "spaces" / "full.yaml", Path(d), args.configs_per_arm,
                                                        command="bench/replay_speed.py (synthetic)"))
        t0, c0 = time.perf_counter(), _cpu_s()
        outs = R.replay(rec, [args.strategy], args.repeats, args.workers, args.budget, jobs=args.jobs)[args.strategy]
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    trials = [o.trials for o in outs]
    epochs = [o.epochs for o in outs]
    print(json.dumps({"strategy": args.strategy, "recording": f"{len(rec.curves)} trials x {rec.space.max_epochs} epochs, "
                      f"{len(rec.arms())} arms", "repeats": args.repeats, "jobs": args.jobs, "budget": args.budget,
                      "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "trials_per_repeat": float(np.median(trials)),
                      "epochs_per_repeat": float(np.median(epochs)),
                      "cpu_ms_per_trial": round(1000 * cpu / max(1, sum(trials)), 3),
                      "goal_s": 60, "met": wall <= 60}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
