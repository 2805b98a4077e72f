"""What TPE learns from failed trials (issue 26, item 1): a two-arm search driven as Ray drives it
(search.searcher.ArmSearcher, no Ray processes, no training), where every resnet34 trial with lr
above 1e-2 (the top third of its log range, 1e-4..1e-1) fails for its configuration, as a diverging
loss or an out-of-memory does. The metric elsewhere is a function of lr: `peak` (highest at lr
1e-3, far from the failing region) or `edge` (rising with lr up to the failing region, where the
best configurations sit next to it).

    python bench/failed_trials.py [--seeds 0 1 2 3 4] [--trials 30]

Told as FAIL (how failed trials reached Optuna before), TPE never sees them; told as infeasible
(PRUNED, constraint `failed` = 1: search.searcher now), it does. For each way, objective and seed:
how many of resnet34's first 10 trials (TPE's random start-up) and of its last 10 failed, and its
usable trials at the end (replacements allowed up to --trials). One JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from search.searcher import ArmSearcher  # noqa: E402
from search.space import load_space  # noqa: E402

ARM = "resnet34-v1-none-t5"
OBJECTIVES = {"peak": lambda lr: 0.5 - 0.1 * (math.log10(lr) + 3) ** 2, "edge": lambda lr: 0.2 + 0.1 * (math.log10(lr) + 4)}


def search(seed: int, trials: int, objective, told_as_fail: bool) -> list[bool]:
    folder = Path(tempfile.mkdtemp())
    (folder / "s.yaml").write_text("arms: {backbone: [resnet18, resnet34]}\n"
                                   "params:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
                                   f"budget: {{max_epochs: 2, trials_per_arm: {trials}, max_failed_per_arm: {trials}}}\n"
                                   f"seed: {seed}\n")
    searcher = ArmSearcher(load_space(folder / "s.yaml"), folder / "optuna.journal")
    if told_as_fail:
        def tell_fail(name, trial, reason, infeasible):
            searcher.failed[name] += 1
            searcher.studies[name].tell(trial, state=TrialState.FAIL)
        searcher._tell_failed = tell_fail
    failed = []
    for i in range(10 * trials):
        config = searcher.suggest(f"t{i}")
        if not isinstance(config, dict):
            break
        lr = config["params"]["lr"]
        fails = config["arm"] == ARM and lr > 1e-2
        if config["arm"] == ARM:
            failed.append(fails)
        if fails:
            searcher.on_trial_complete(f"t{i}", {"epoch": 1.0, "map50": math.nan, "fail_reason": "OutOfMemoryError"})
        else:
            searcher.on_trial_result(f"t{i}", {"epoch": 1.0, "map50": objective(lr)})
            searcher.on_trial_complete(f"t{i}", {"epoch": 2.0, "map50": objective(lr)})
    return failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--trials", type=int, default=30)
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = {}
    for how in ("told_as_fail", "told_as_infeasible"):
        for name, objective in OBJECTIVES.items():
            rows = [search(seed, args.trials, objective, how == "told_as_fail") for seed in args.seeds]
            out[f"{how}/{name}"] = {"first_10_failed": [sum(r[:10]) for r in rows],
                                    "last_10_failed": [sum(r[-10:]) for r in rows],
                                    "usable": [len(r) - sum(r) for r in rows]}
    print(json.dumps({"bench": "failed_trials", "trials_per_arm": args.trials, "seeds": args.seeds, **out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
