"""Replay search strategies on recorded learning curves: seconds of arithmetic instead of GPU-hours.

    python -m search.replay RUN_DIR --out DIR [--strategies S ...] [--repeats N] [--workers W]
                                      [--budget F] [--tol T] [--jobs J]

RUN_DIR is a run folder (`search.run`; best recorded with `budget: {stopping: none}`, every trial
its full budget) or a folder holding a compact recording, `curves.json` beside its `space.yaml`
(`Recording.save`; bench/curves/ is one). No Ray cluster and no training: a simulated clock
advances by each epoch's recorded cost (`epoch_time_s + eval_time_s`) and W simulated workers take
trials as real slots do. The decisions come from the project's own parts, not from copies of them:
per-arm ASHA is `search.scheduler.PerArmASHA` (Ray's AsyncHyperBandScheduler per study), proposals
come from `search.searcher.ArmSearcher` with its Optuna studies in memory. A proposal is answered
with the recorded configuration nearest to it (`Matcher`: parameters scaled to [0, 1], on a log
scale where the space says `log`; categorical values must match), as Syne Tune does for tabulated
benchmarks; the median distance of those matches is reported, so a sparse recording shows.

Strategies (`--strategies`, names as below; G = grace period, R = reduction factor):
  asha-tpe:G:R      per-arm ASHA + TPE (what search.run does)
  asha-random:G:R   per-arm ASHA + random proposals
  joint-asha-tpe:G:R  one ASHA and one TPE study over every arm (`strategy: joint`)
  tpe-full          TPE, no early stopping
  grid              every recorded configuration, full budget, in random order
  one-epoch-topK    every recorded configuration for one epoch, then the K best of each arm to
                    the full budget (Egele et al. 2023, arXiv 2307.15422)

Every strategy gets the same GPU-time (`--budget`, a fraction of the grid's: every recorded
configuration of every arm trained fully). A strategy's pick in an arm follows `results.ranked`:
the best trial that ran the full budget, else the best one stopped early. Regret = the arm's
recorded best (best epoch of any recorded configuration) minus the best value the strategy
observed for its pick.

The package: `recording` (reading and checking recordings, the `Matcher`), `strategies` (what each
strategy decides), `clock` (the simulated workers, the repeats, a recorded run's decisions again),
`render` (the table, the recommendation, the figure and replay.md), `__main__` (the command line).
"""
from search.replay.clock import (SimulatedRun, ranking_kept, recorded_order_decisions, replay, simulate,
                                 within_tol_epochs)
from search.replay.recording import CURVES, FORMAT, Curve, Matcher, Recording, ReplayError, curve_of, load_recording
from search.replay.render import recommend, summarise, write_report
from search.replay.strategies import BASE_STRATEGIES, default_strategies, make_strategy

__all__ = ["BASE_STRATEGIES", "CURVES", "FORMAT", "Curve", "Matcher", "Recording", "ReplayError", "SimulatedRun",
           "curve_of", "default_strategies", "load_recording", "make_strategy", "ranking_kept", "recommend",
           "recorded_order_decisions", "replay", "simulate", "summarise", "within_tol_epochs", "write_report", "main"]


def main(argv=None) -> int:
    """`python -m search.replay` (search/replay/__main__.py)."""
    from search.replay.__main__ import main as _main

    return _main(argv)
