"""ASHA per arm: a trial is only ever compared with trials of its own arm.

Ray's `AsyncHyperBandScheduler` keeps one set of rungs for every trial it sees; with several
architectures in one run, a slowly converging arm (the study's v1 needed 75 epochs where v2 needed
30) would be stopped because a faster one looks better at epoch 5. `PerArmASHA` keeps one ASHA per
study (per arm, or one in the joint strategy) and routes each trial to its own. The runs after an
arm's search (confirmation, baseline: search.stages), which share the search's queue, are never
stopped: they train the full budget.
"""
from __future__ import annotations

from pathlib import Path

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from search import compat
from search.results import counted_trials, read_history, read_params
from search.searcher import ended_in_studies, study_names
from search.space import Space
from search.stages import is_later_stage
from search.storage import JOURNAL, relocated

TIME_ATTR = "epoch"  # our own per-epoch counter: continues correctly across checkpoint restores


class PerArmASHA(FIFOScheduler):
    """One AsyncHyperBandScheduler per study.

    Ray saves no scheduler state (ray-project/ray#30838): a search resumed after its driver died
    would start with empty rungs and stop trials an uninterrupted search would have stopped, or
    keep ones it would have stopped. After unpickling (which is how `Tuner.restore` brings the
    scheduler back), before the first decision, the rungs are rebuilt from the per-epoch results
    stored in `run_dir`, and the trials whose end the Optuna studies already hold are noted: a trial
    ASHA stopped (or that finished) after Ray's last experiment checkpoint comes back from Ray as
    running from its last checkpoint in that snapshot, and trains again up to the epoch at which
    its study ended it (the epochs since that checkpoint, whose reports the run folder lost with the
    snapshot), then is stopped there. The earlier decision wins, so Ray's trials, the rungs and
    the studies keep telling the same story. (Stopped at its first result instead, a trial that
    had finished all 12 epochs came back as stopped after 11 while its study said COMPLETE.)
    """

    def __init__(self, space: Space, run_dir: str | Path | None = None):
        super().__init__()
        self.space, self.run_dir = space, None if run_dir is None else str(run_dir)
        self._needs_rebuild = False
        self.ended: dict[str, int] = {}  # Ray trial id -> its study's last epoch, of trials ended before a resume
        self.ashas = {name: AsyncHyperBandScheduler(time_attr=TIME_ATTR, metric=space.metric, mode="max",
                                                    max_t=space.max_epochs, grace_period=space.grace_period,
                                                    reduction_factor=space.reduction_factor, brackets=1)
                      for name in study_names(space)}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._needs_rebuild = self.run_dir is not None
        if self.run_dir is not None:
            self.run_dir = str(relocated(self.run_dir))

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # each ASHA already knows the space's metric

    def _asha(self, trial) -> AsyncHyperBandScheduler | None:
        """The trial's study's ASHA; None for a later-stage run."""
        if is_later_stage(trial.config):
            return None
        if self._needs_rebuild:
            self._needs_rebuild = False
            self.rebuild_rungs()
            journal = Path(self.run_dir) / JOURNAL
            self.ended = ended_in_studies(self.space, journal) if journal.exists() else {}
        return self.ashas[trial.config["study"]]

    def rebuild_rungs(self) -> int:
        """Replay the stored per-epoch results of every trial that counts (`results.counted_trials`:
        the same trials results.csv and the searcher count) into its study's rungs, as ASHA recorded
        them the first time (a trial enters a rung when it first reports that epoch). Returns the
        results replayed."""
        replayed = 0
        for d, trial_id, _ in counted_trials(Path(self.run_dir) / "trials"):
            config = read_params(d) or {}
            study = config.get("study")
            if study not in self.ashas or is_later_stage(config):
                continue
            seen = set()
            for r in read_history(d):
                value, epoch = r.get(self.space.metric), r.get(TIME_ATTR)
                if value is None or epoch is None or epoch in seen or "fail_reason" in r:
                    continue
                seen.add(epoch)
                compat.asha_record(self.ashas[study], r.get("trial_id", trial_id), epoch, value)
                replayed += 1
        return replayed

    def on_trial_add(self, tune_controller, trial):
        if (asha := self._asha(trial)) is not None:
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        asha = self._asha(trial)
        if asha is None:
            return TrialScheduler.CONTINUE
        if trial.trial_id in self.ended:  # ended before the resume (see the class docstring)
            return TrialScheduler.CONTINUE if result[TIME_ATTR] < self.ended[trial.trial_id] else TrialScheduler.STOP
        if not compat.asha_knows(asha, trial.trial_id):  # a restored trial
            asha.on_trial_add(tune_controller, trial)
        return asha.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        asha = self._asha(trial)
        if asha is not None and compat.asha_knows(asha, trial.trial_id):
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        if (asha := self._asha(trial)) is not None:
            compat.asha_forget(asha, trial.trial_id)

    def on_trial_error(self, tune_controller, trial):
        if (asha := self._asha(trial)) is not None:
            compat.asha_forget(asha, trial.trial_id)

    def rung_records(self) -> dict[str, dict[int, dict[str, float]]]:
        """{study: {rung epoch: {trial id: metric}}} as ASHA recorded them (for reports and tests)."""
        return {name: compat.asha_rungs(asha) for name, asha in self.ashas.items()}

    def debug_string(self) -> str:
        return "PerArmASHA: " + ", ".join(f"{n}: stopped {compat.asha_num_stopped(a)}" for n, a in self.ashas.items())
