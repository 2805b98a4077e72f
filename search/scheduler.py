"""ASHA per arm: a trial is only ever compared with trials of its own arm.

Ray's `AsyncHyperBandScheduler` keeps one set of rungs for every trial it sees; with several
architectures in one run, a slowly converging arm (the study's v1 needed 75 epochs where v2 needed
30) would be stopped because a faster one looks better at epoch 5. `PerArmASHA` keeps one ASHA per
study (per arm, or one in the joint strategy) and routes each trial to its own.
"""
from __future__ import annotations

import json
from pathlib import Path

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

from search.results import read_history
from search.searcher import study_names
from search.space import Space
from search.storage import relocated

TIME_ATTR = "epoch"  # our own per-epoch counter: continues correctly across checkpoint restores


class PerArmASHA(FIFOScheduler):
    """One AsyncHyperBandScheduler per study.

    Ray saves no scheduler state (ray-project/ray#30838): a search resumed after its driver died
    would start with empty rungs and stop trials an uninterrupted search would have stopped, or
    keep ones it would have stopped. After unpickling (which is how `Tuner.restore` brings the
    scheduler back), the rungs are rebuilt from the per-epoch results stored in `run_dir` before
    the first decision.
    """

    def __init__(self, space: Space, run_dir: str | Path | None = None):
        super().__init__()
        self.space, self.run_dir = space, None if run_dir is None else str(run_dir)
        self._needs_rebuild = False
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

    def _asha(self, trial) -> AsyncHyperBandScheduler:
        if self._needs_rebuild:
            self._needs_rebuild = False
            self.rebuild_rungs()
        return self.ashas[trial.config["study"]]

    def rebuild_rungs(self) -> int:
        """Replay every stored per-epoch result into its study's rungs, as ASHA recorded them the
        first time (a trial enters a rung when it first reports that epoch). Returns the results replayed."""
        replayed = 0
        trials_dir = Path(self.run_dir) / "trials"
        for d in sorted(p for p in trials_dir.iterdir() if p.is_dir()) if trials_dir.is_dir() else []:
            params = d / "params.json"
            if not params.exists():
                continue
            study = json.loads(params.read_text()).get("study")
            if study not in self.ashas:
                continue
            asha = self.ashas[study]
            bracket = asha._brackets[0]
            seen = set()
            for r in read_history(d):  # stops at a line cut by the crash
                value, epoch = r.get(self.space.metric), r.get(TIME_ATTR)
                if value is None or epoch is None or epoch in seen or "fail_reason" in r:
                    continue
                seen.add(epoch)
                bracket.on_result(_Stub(r["trial_id"]), epoch, asha._metric_op * value)
                replayed += 1
        return replayed

    def on_trial_add(self, tune_controller, trial):
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        asha = self._asha(trial)
        if trial.trial_id not in asha._trial_info:  # a restored trial
            asha.on_trial_add(tune_controller, trial)
        return asha.on_trial_result(tune_controller, trial, result)

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


class _Stub:
    """What ASHA's bracket reads of a trial: its id."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id
