"""ASHA per arm: a trial is only ever compared with trials of its own arm.

Ray's `AsyncHyperBandScheduler` keeps one set of rungs for every trial it sees; with several
architectures in one run, a slowly converging arm (the study's v1 needed 75 epochs where v2 needed
30) would be stopped because a faster one looks better at epoch 5. `PerArmASHA` keeps one ASHA per
study (per arm, or one in the joint strategy) and routes each trial to its own.
"""
from __future__ import annotations

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

from search.searcher import study_names
from search.space import Space

TIME_ATTR = "epoch"  # our own per-epoch counter: continues correctly across checkpoint restores


class PerArmASHA(FIFOScheduler):
    def __init__(self, space: Space):
        super().__init__()
        self.space = space
        self.ashas = {name: AsyncHyperBandScheduler(time_attr=TIME_ATTR, metric=space.metric, mode="max",
                                                    max_t=space.max_epochs, grace_period=space.grace_period,
                                                    reduction_factor=space.reduction_factor, brackets=1)
                      for name in study_names(space)}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # each ASHA already knows the space's metric

    def _asha(self, trial) -> AsyncHyperBandScheduler:
        return self.ashas[trial.config["study"]]

    def on_trial_add(self, tune_controller, trial):
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if trial.trial_id in self._asha(trial)._trial_info:
            self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._asha(trial)._trial_info.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller, trial):
        self._asha(trial)._trial_info.pop(trial.trial_id, None)

    def rung_records(self) -> dict[str, dict[int, dict[str, float]]]:
        """{study: {rung epoch: {trial id: metric}}} as ASHA recorded them (for reports and tests)."""
        out = {}
        for name, asha in self.ashas.items():
            bracket = asha._brackets[0]
            out[name] = {int(milestone): {tid: float(v) for tid, v in recorded.items()}
                         for milestone, recorded in bracket._rungs}
        return out

    def debug_string(self) -> str:
        return "PerArmASHA: " + ", ".join(f"{n}: stopped {a._num_stopped}" for n, a in self.ashas.items())
