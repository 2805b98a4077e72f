"""The command line of `python -m search.replay` (what it does: search/replay/__init__.py)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from search.replay.clock import replay
from search.replay.recording import ReplayError, load_recording
from search.replay.render import decisions_text, write_report
from search.replay.strategies import BASE_STRATEGIES, default_strategies


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m search.replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run folder, or a folder holding curves.json and space.yaml")
    ap.add_argument("--out", required=True, help="folder for replay.md, replay.json and regret.png")
    ap.add_argument("--strategies", nargs="+", help="default: asha-tpe over grace periods 1, 2 and reduction "
                    "factors 2, 3, 4, and " + ", ".join(BASE_STRATEGIES))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--workers", type=int, help="simulated workers (default: the space's max_concurrent, else 1)")
    ap.add_argument("--budget", type=float, default=1.0, help="GPU-time per strategy, a fraction of the grid's")
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--jobs", type=int, default=1, help="processes for the repeats")
    args = ap.parse_args(argv)
    for k in ("repeats", "jobs"):
        if getattr(args, k) < 1:
            ap.error(f"--{k} must be >= 1")
    if args.workers is not None and args.workers < 1:
        ap.error("--workers must be >= 1")
    if not args.budget > 0:
        ap.error("--budget must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        rec = load_recording(args.run_dir)
        strategies = args.strategies or default_strategies(rec.space)
        workers = args.workers or rec.space.max_concurrent or 1
        results = replay(rec, strategies, args.repeats, workers, args.budget, args.jobs)
    except ReplayError as e:
        print(f"search.replay: {e}", file=sys.stderr)
        return 2
    text = "python -m search.replay " + " ".join(argv if argv is not None else sys.argv[1:])
    md = write_report(rec, results, Path(args.out), args.tol, text, time.perf_counter() - t0, decisions_text(rec))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
