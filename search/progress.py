"""A compact terminal table instead of Ray's wall of text: per arm, trials running, finished,
stopped and failed, the best metric so far; a totals line; the elapsed time.

Arms are sorted by their best metric (arms with no result yet last, in the space's order), so with
the full space's 38 arms the leaders stay on top. On a terminal too short for every arm, the rows
that fit are shown and one line sums up the rest. The arm rows count search trials; the runs after
an arm's search (confirmation, baseline), which share its queue, get one line of their own, and
their metric never enters `best` (the search's best is what a row ranks arms by). In a log (not a terminal) the whole table is
appended at most every `LOG_EVERY_S` seconds, so a 1,000-trial search does not write a table per trial.

On --resume Ray restores the table as the run pickled it at its start (empty), and reports nothing
of the trials that ended before the restart: the table takes those from Ray's restored trials at
its first step, so its counts and bests cover the whole run."""
from __future__ import annotations

import math
import shutil
import sys
import time
from collections import defaultdict

from ray.tune import Callback

from search import compat
from search.results import STATUS_RUNNING, TrialHistory, outcome
from search.stages import is_later_stage

LOG_EVERY_S = 30.0  # the shortest interval between two tables appended to a log (not a terminal)


class ArmTable(Callback):
    """Prints the table when something changed, at most every `every_s` seconds (and at the end).

    On a terminal the table is redrawn in place; in a log it is appended.
    `max_rows`: arm rows shown at most (default: what the terminal's height leaves room for).
    """

    max_rows: int | None = None  # also for a table pickled (with a run's tuner) before the field existed
    _adopted: bool = False       # this driver process has counted the trials Ray restored (`_adopt`)
    resumed: bool = False        # some trial had ended before this driver started: a resumed run

    def __init__(self, metric: str, arms: list[str], max_epochs: int, every_s: float = 5.0, stream=None,
                 max_rows: int | None = None):
        self.metric, self.arms, self.max_epochs, self.every_s = metric, arms, max_epochs, every_s
        self.max_rows = max_rows
        self._stream = stream  # None: sys.stdout at print time (a stream object cannot be pickled with the tuner)
        self.t0 = time.monotonic()
        self.status: dict[str, str] = {}
        self.arm_of: dict[str, str] = {}
        self.later: set[str] = set()  # trial ids of later-stage runs
        self.best: dict[str, float] = defaultdict(lambda: -math.inf)  # per arm: the best of its trials' bests
        self.trial_best: dict[str, float] = {}  # search trials' bests (their TrialHistory's; Ray's: `_adopt`)
        self._histories: dict[str, TrialHistory] = {}  # of the trials that report to this driver
        self._last_print, self._dirty, self._lines = 0.0, True, 0

    def _arm(self, trial) -> str:
        if trial.trial_id not in self.arm_of:
            config = trial.config
            self.arm_of[trial.trial_id] = config.get("arm", "?")
            if is_later_stage(config):
                self.later.add(trial.trial_id)
        return self.arm_of[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.status[trial.trial_id] = STATUS_RUNNING
        self._arm(trial)
        self._dirty = True

    def on_trial_result(self, iteration, trials, trial, result, **info):
        arm = self._arm(trial)
        tid = trial.trial_id
        if tid in self.later:
            return
        if tid not in self._histories:
            self._histories[tid] = TrialHistory(self.metric, compat.stored_reports(trial, result))
        history = self._histories[tid]
        history.add(result)
        if math.isfinite(history.best) and self.trial_best.get(tid) != history.best:
            self._trial_best(arm, tid, history.best)

    def _trial_best(self, arm: str, tid: str, best: float) -> None:
        """A search trial's best changed: so may its arm's, the best of its trials' bests. A rise is
        one comparison; a fall (a re-run epoch replaced the report it repeats,
        search.results.TrialHistory) looks at the arm's trials again."""
        fell = best < self.trial_best.get(tid, -math.inf)
        self.trial_best[tid] = best
        if fell:
            new = max((b for t, b in self.trial_best.items() if self.arm_of.get(t) == arm), default=-math.inf)
        else:
            new = max(self.best[arm], best)
        if new != self.best[arm]:
            self.best[arm], self._dirty = new, True

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, errored=True)

    def _ended(self, trial, errored: bool) -> str:
        """Record a trial's end (results.outcome of its last result); returns its arm."""
        last = trial.last_result or {}
        self.status[trial.trial_id] = outcome(epochs=int(last.get("epoch", 0)), max_epochs=self.max_epochs,
                                              fail_reason=last.get("fail_reason"), errored=errored).status
        self._dirty = True
        return self._arm(trial)

    def on_step_begin(self, iteration, trials, **info):
        if not self._adopted:
            self._adopt(trials)

    def _adopt(self, trials) -> None:
        """Count the trials that had ended before this driver started (Ray restored them on
        --resume and sends no event for them), with the best result Ray kept of each (its running
        max per metric, saved in its experiment state: reading every ended trial's stored results
        would cost a resume one read per trial, for a display; a trial retried before the restart
        may show an epoch its retry replaced, which results.csv does not count). Once per driver
        process: the flag is pickled with the run's tuner as False."""
        self._adopted = True
        for trial in trials:
            if trial.trial_id in self.status or trial.status not in (trial.TERMINATED, trial.ERROR):
                continue
            arm = self._ended(trial, errored=trial.status == trial.ERROR)
            best = compat.metric_max(trial, self.metric)
            if trial.trial_id not in self.later and best is not None and math.isfinite(best):
                self._trial_best(arm, trial.trial_id, best)
            self.resumed = True
        if self.resumed:
            self.t0 = time.monotonic()  # the pickled start belongs to the first driver (maybe another machine)

    def on_step_end(self, iteration, trials, **info):
        self.print()

    def on_experiment_end(self, trials, **info):
        self.print(force=True)

    def render(self, max_rows: int | None = None) -> list[str]:
        counts: dict[str, dict[str, int]] = {a: defaultdict(int) for a in self.arms}
        later: dict[str, int] = defaultdict(int)
        for tid, st in self.status.items():
            if tid in self.later:
                later[st] += 1
            else:
                counts.setdefault(self.arm_of.get(tid, "?"), defaultdict(int))[st] += 1
        order = sorted(counts, key=lambda a: -self.best.get(a, -math.inf))  # stable: no result yet keeps space order
        width = max([len(a) for a in counts] + [len("all arms")])

        def row(name: str, c, best: float) -> str:
            return (f"{name:<{width}}  {c['running']:>7}  {c['finished']:>8}  {c['stopped']:>7}  {c['failed']:>6}  "
                    f"{'-' if best == -math.inf else f'{best:.4f}':>10}")

        lines = [f"{'arm':<{width}}  running  finished  stopped  failed  best {self.metric}", "-" * (width + 48)]
        shown = order if max_rows is None or len(order) <= max_rows else order[:max(1, max_rows - 1)]
        lines += [row(arm, counts[arm], self.best.get(arm, -math.inf)) for arm in shown]
        rest = order[len(shown):]
        if rest:
            c = {k: sum(counts[a][k] for a in rest) for k in ("running", "finished", "stopped", "failed")}
            lines.append(row(f"{len(rest)} more", c, max(self.best.get(a, -math.inf) for a in rest)))
        total = {k: sum(counts[a][k] for a in order) for k in ("running", "finished", "stopped", "failed")}
        lines += ["-" * (width + 48), row("all arms", total, max([self.best.get(a, -math.inf) for a in order] + [-math.inf]))]
        if later:
            lines.append(f"confirmation/baseline runs: {later['running']} running, {later['finished']} finished, "
                         f"{later['failed']} failed")
        lines.append(f"elapsed {time.monotonic() - self.t0:6.0f} s" + (" since --resume" if self.resumed else ""))
        return lines

    def print(self, force: bool = False) -> None:
        now = time.monotonic()
        stream = self._stream or sys.stdout
        tty = getattr(stream, "isatty", lambda: False)()
        every = self.every_s if tty else max(self.every_s, LOG_EVERY_S)
        if not force and (not self._dirty or now - self._last_print < every):
            return
        rows = self.max_rows
        if rows is None and tty:
            rows = max(3, shutil.get_terminal_size().lines - 7)  # header, rules, totals, later stages, elapsed, prompt
        lines = self.render(rows)
        if tty and self._lines:
            stream.write(f"\x1b[{self._lines}F\x1b[J")  # move up and clear: redraw in place
        stream.write("\n".join(lines) + "\n")
        stream.flush()
        self._lines, self._last_print, self._dirty = len(lines), now, False
