"""What the search machinery costs on top of the trials themselves.

    .venv/bin/python bench/search_overhead.py [--space spaces/demo.yaml] [--out bench/out]

Runs the search as a user would and reads Ray's per-trial results afterwards:
- overhead ratio = command wall time / (sum of the trials' busy time / concurrency), where a trial's
  busy time is Ray's `time_total_s` of its last result and concurrency is the space's
  `max_concurrent` (goal: <= 1.15; Ray's own bar for its bookkeeping is about 1.2);
- start-up: command start to the first trial's first step (first result's timestamp minus its
  `time_this_iter_s`);
- shut-down: the last result's timestamp to the command's exit.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.space import load_space  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--space", default=str(ROOT / "spaces" / "demo.yaml"))
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    a = p.parse_args()
    space = load_space(a.space)
    name = f"bench-overhead-{int(time.time())}"
    t_start = time.time()
    proc = subprocess.run([sys.executable, "-m", "search.run", "--space", a.space, "--storage", a.out, "--name", name],
                          cwd=ROOT, capture_output=True, text=True)
    t_end = time.time()
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        return 1
    busy, first_start, last_end = 0.0, float("inf"), 0.0
    for f in (Path(a.out) / name / "trials").glob("*/result.json"):
        results = [json.loads(x) for x in f.read_text().splitlines()]
        busy += results[-1]["time_total_s"]
        first_start = min(first_start, results[0]["timestamp"] - results[0]["time_this_iter_s"])
        last_end = max(last_end, results[-1]["timestamp"])
    concurrency = space.max_concurrent or 1
    ideal = busy / concurrency
    print(json.dumps({"benchmark": "search_overhead", "space": a.space, "wall_s": round(t_end - t_start, 1),
                      "trial_busy_s": round(busy, 1), "concurrency": concurrency,
                      "overhead_ratio": round((t_end - t_start) / ideal, 3), "goal_ratio": 1.15,
                      "startup_s": round(first_start - t_start, 1), "shutdown_s": round(t_end - last_end, 1),
                      "run": str(Path(a.out) / name)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
