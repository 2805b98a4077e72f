"""Optuna TPE studies behind Ray Tune's Searcher interface: one study per arm, honest about pruning.

Ray's own `OptunaSearch` tells Optuna every trial that ended as COMPLETE with its last value, also
the ones ASHA stopped at an early rung; TPE then learns that an epoch-2 score is a final one.
Here, a trial that ended before `max_epochs` without an error reaches Optuna as PRUNED with its
per-epoch intermediate values, and only a trial that ran its full budget as COMPLETE (with the best
value of its metric over its epochs: search.results.TrialHistory's, the best results.csv, the
report and the export name too). Optuna keeps the first report of an epoch as its intermediate
value and ignores a second; a trial retried from a checkpoint reports the epochs after it again, and
the history counts the later ones, so a trial's COMPLETE value can differ from the largest of its
intermediate values: the value is the one that agrees with the trial's kept weights.

A failed trial must teach too: TPE samples from COMPLETE and PRUNED trials only, so a FAIL is never
seen, and a region that runs out of memory or diverges would be proposed again and again (the arm
with the largest backbone, which fails most, would end with the fewest usable trials). A trial that
failed for its configuration (results.outcome's `infeasible`: a non-finite loss, out of memory, a
combination training refuses) ends as PRUNED with the constraint FAILED_CONSTRAINT = 1
(`Trial.set_constraint`): TPE ranks an infeasible trial below every feasible one; and it is replaced
by a new trial, up to `budget.max_failed_per_arm` per study (then the study ends short). A trial Ray
gave up on after errors ends as FAIL: it says nothing about its configuration, and Ray itself
retries it when the run is resumed. (A configuration that asks of this node's device what it lacks,
bf16 on a GPU without it, is infeasible here too: on these nodes it is.)

Studies live in an Optuna journal file (`optuna-dashboard RUN_DIR/optuna.journal` opens it).
"""
from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher

from detector import config as C
from search import compat
from search import stages as S
from search.results import (STATUS_FAILED, STATUS_FINISHED, STATUS_RUNNING, STATUS_STOPPED, TrialHistory,
                            counted_trials, outcome, ranked, read_history, read_params, read_trial)
from search.space import Space
from search.storage import relocated

JOINT = "joint"  # study name in the joint strategy
FAILED_CONSTRAINT = "failed"  # the constraint a trial that failed for its configuration violates (> 0)
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _failed_for_config(trial) -> bool:
    """Whether an Optuna trial ended as failed for its configuration (`ArmSearcher._tell_failed`)."""
    return trial.state == TrialState.PRUNED and trial.constraints.get(FAILED_CONSTRAINT, 0.0) > 0


def study_names(space: Space) -> list[str]:
    return [a.name for a in space.arms] if space.strategy == "per-architecture" else [JOINT]


def _storage(journal: Path | None):
    """The journal file's storage; None: in memory (search.replay's simulated searches)."""
    return optuna.storages.InMemoryStorage() if journal is None else JournalStorage(JournalFileBackend(str(journal)))


def ended_in_studies(space: Space, journal: Path) -> dict[str, int]:
    """{Ray trial id: the last epoch its study holds} of the trials whose Optuna trial has ended
    (COMPLETE, PRUNED or FAIL) in the run's studies; 0 for FAIL (what Ray gave up on is stopped at
    its first result after a resume)."""
    storage = _storage(journal)
    held = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    ended = {}
    for name in study_names(space):
        if name not in held:
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=ENDED):
            if "ray_trial_id" in t.user_attrs:
                last = max(t.intermediate_values, default=0) if t.state != TrialState.FAIL else 0
                ended[t.user_attrs["ray_trial_id"]] = last
    return ended


def make_sampler(space: Space, seed: int) -> optuna.samplers.BaseSampler:
    """The space's sampler (budget.sampler): TPE as a search uses it, or random proposals."""
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # multivariate/group TPE is marked experimental; conditional spaces need it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=min(10, max(2, space.trials_per_arm // 3)))


def open_studies(space: Space, journal: Path | None) -> dict[str, optuna.Study]:
    """The run's studies (created on first use, loaded on resume), each with its own seeded TPE.

    A sampler's random state is not saved: reseeded as on the first start, a resumed study would
    propose its first configurations again. The seed therefore also counts the trials the study
    already holds, which keeps a run reproducible and a resumed one from repeating itself."""
    storage = _storage(journal)
    studies = {name: optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
               for name in study_names(space)}
    reseed(studies, space)
    return studies


def reseed(studies: dict[str, optuna.Study], space: Space) -> None:
    """Give each study a sampler seeded by the run's seed, its place and the trials it holds now (see
    `open_studies`); also after trials were added to a study other than by asking it."""
    for i, (name, study) in enumerate(studies.items()):
        study.sampler = make_sampler(space, seed=space.seed + i + 10007 * len(study.get_trials(deepcopy=False)))


def _suggest(trial: optuna.Trial, space: Space) -> dict:
    """Sample the space's parameters define-by-run, so conditional ones appear only when active."""
    values: dict = {}
    for p in space.params:
        if not p.active(values):
            continue
        if p.type == "categorical":
            if all(c is None or isinstance(c, (bool, int, float, str)) for c in p.choices):
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            else:  # lists (e.g. anchor sizes) are not Optuna choices: pick by their text
                text = trial.suggest_categorical(p.name, [str(list(c)) for c in p.choices])
                values[p.name] = list(p.choices[[str(list(c)) for c in p.choices].index(text)])
        elif p.type == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
    return values


@dataclass
class _Ended:
    """What `results.ranked` reads of an ended search trial, kept by the searcher to pick an arm's
    confirmation runs the moment its search ends (search.stages)."""
    trial_id: str
    arm: str
    status: str
    best: float
    params: dict
    trial_number: int | None = None  # results.ranked's tie-break: the order its study asked for it
    config: dict | None = None  # the whole TrainConfig, filled in for the runs a stage retrains
    stage: str = "search"


class ArmSearcher(Searcher):
    """Suggests trials arm by arm with equal budgets; each arm has its own Optuna study.

    Trial configs carry `arm`, `study` (the study name), `stage`, `cfg` (the full TrainConfig as a
    dict) and `params` (the sampled values).

    With `stages` (the space's `eval_stages()`), the runs after the search come from here too, in
    the same queue: once a study's search has ended (its trials all started and ended), its arms'
    confirmation and baseline runs (search.stages) are suggested before any further search trial,
    while other arms still search. No slot waits for the slowest arm's search.
    """

    def __init__(self, space: Space, journal: Path, snapshot_journal: bool = False, stages: tuple = (),
                 max_concurrent: int | None = None):
        super().__init__(metric=space.metric, mode="max")
        # At most this many runs (search trials and later-stage runs) at once; None: no limit. Kept
        # here, not in Ray's ConcurrencyLimiter: the limiter restores its own list of live trials, which
        # after a lost head node can hold trials Ray's (older) experiment state never had; they never
        # end, and a resume with as many of them as slots waited forever (seen: test_storage's resume).
        # Restoring, this searcher counts the runs Ray itself holds (`restore`).
        self.max_concurrent = max_concurrent
        self.running: set[str] = set()  # Ray trial ids suggested and not yet ended
        self.space, self.journal = space, None if journal is None else Path(journal)  # None: studies in memory
        self.snapshot_journal = snapshot_journal  # copy the journal into each experiment checkpoint
        self.stages = tuple(stages)
        self.started = {name: 0 for name in study_names(space)}
        # Of those started, how many failed for their configuration: each is replaced (`_open`). A
        # trial Ray gave up on after errors is not: Ray retries it (FailureConfig, and on --resume).
        self.failed = {name: 0 for name in study_names(space)}
        self.ended: dict[str, dict] = {}  # Ray trial id -> _Ended's fields, of ended search trials (not failed)
        self.issued: set[str] = set()     # search.stages.run_key of every later-stage run suggested
        self._stage_runs: dict[str, list[dict]] = {}  # study -> its later-stage runs, once its search has ended
        self.trials_per_arm: int | None = space.trials_per_arm  # None: no limit (search.replay's budget ends it)
        self.live: dict[str, tuple[str, int]] = {}  # Ray trial id -> (study name, Optuna trial id)
        self.orphans: dict[str, list[int]] = {}     # study -> Optuna trial ids to hand out again
        self._studies: dict[str, optuna.Study] | None = None
        # Ray trial id -> its live optuna.Trial: re-creating one reads the trial back from the storage
        # (a copy of it, after re-reading the journal), which every epoch's report would otherwise pay.
        self._handles: dict[str, optuna.Trial] = {}
        # Ray trial id -> the epochs it reported (search.results.TrialHistory), for the live trials:
        # what its end tells Optuna and what `ended` ranks by. Rebuilt from stored results on restore.
        self._histories: dict[str, TrialHistory] = {}

    # The studies are reopened from the journal, never pickled with the searcher (nor the handles on them).
    def __getstate__(self):
        skip = ("_studies", "_handles", "_stage_runs", "_histories")
        return {k: v for k, v in self.__dict__.items() if k not in skip} | \
            {"_studies": None, "_handles": {}, "_stage_runs": {}, "_histories": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.journal is not None:
            self.journal = relocated(self.journal.parent) / self.journal.name

    @property
    def studies(self) -> dict[str, optuna.Study]:
        if self._studies is None:
            self._studies = open_studies(self.space, self.journal)
        return self._studies

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the metric is the space's; the searcher needs no param_space

    def _open(self, name: str) -> bool:
        """Whether the study may start another trial: `trials_per_arm`, plus one for each trial that
        failed for its configuration, up to `max_failed_per_arm` (such a trial is replaced; past
        that the study ends short)."""
        if self.trials_per_arm is None:
            return True
        return self.started[name] < self.trials_per_arm + min(self.failed[name], self.space.max_failed_per_arm)

    def _next_study(self) -> str | None:
        open_ = [n for n in self.started if self._open(n)]
        # Round-robin: the study with the fewest trials started that have not failed goes first.
        return min(open_, key=lambda n: self.started[n] - self.failed[n]) if open_ else None

    def _search_ended(self, name: str) -> bool:
        return (self.trials_per_arm is not None and not self._open(name)
                and not self.orphans.get(name) and all(n != name for n, _ in self.live.values()))

    def _later_runs(self, name: str) -> list[dict]:
        """The study's later-stage runs (search.stages), built once its search has ended."""
        if name not in self._stage_runs:
            arms = [a for a in self.space.arms if name in (JOINT, a.name)]
            seeds = S.eval_seeds(self.space)
            # `ranked` breaks ties by trial number and id, as search.export and search.report do.
            ended = [_Ended(tid, **e) for tid, e in self.ended.items()]
            best = {}
            for arm in arms:
                best[arm.name] = ranked(ended, arm.name)[:self.space.confirm_top_k]
                for r in best[arm.name]:
                    r.config = C.to_dict(self.space.trial_config(arm, r.params))
            self._stage_runs[name] = [c for stage in self.stages for arm in arms
                                      for c in S.arm_stage_configs(self.space, arm, stage, best[arm.name], seeds)]
        return self._stage_runs[name]

    def _next_later_run(self) -> dict | None | str:
        """The next later-stage run to suggest; None: none now (a search still runs);
        FINISHED: every one has been suggested, and every search has ended."""
        waiting = False
        for name in study_names(self.space):
            if not self._search_ended(name):
                waiting = True
                continue
            for c in self._later_runs(name):
                if S.run_key(c) not in self.issued:
                    return c
        return None if waiting else Searcher.FINISHED

    def suggest(self, trial_id: str):
        if self.max_concurrent and len(self.running) >= self.max_concurrent:
            return None  # every slot taken: Ray asks again when a run ends
        config = self._suggest_run(trial_id)
        if isinstance(config, dict):
            self.running.add(trial_id)
        return config

    def _suggest_run(self, trial_id: str):
        t0 = time.perf_counter()
        if self.stages:
            # Later-stage runs first: each trains the full budget, the longest work there is.
            later = self._next_later_run()
            if isinstance(later, dict):
                self.issued.add(S.run_key(later))
                return later
        name = self._next_study()
        if name is None:
            if self.stages:
                return later  # None: waits for a search to end
            # Not FINISHED while a trial runs: Ray asks no more after FINISHED, and a running trial
            # that fails reopens its study for a replacement (`_open`).
            return Searcher.FINISHED if all(map(self._search_ended, self.started)) else None
        study = self.studies[name]
        orphan = self.orphans.get(name, [])
        # A trial asked for just before a driver crash, which Ray never recorded, is handed out again
        # rather than left RUNNING in the study forever.
        trial = compat.attach_trial(study, orphan.pop(0)) if orphan else study.ask()
        if name == JOINT:
            arm_names = [a.name for a in self.space.arms]
            arm = self.space.arms[arm_names.index(trial.suggest_categorical("arm", arm_names))]
        else:
            arm = next(a for a in self.space.arms if a.name == name)
        params = _suggest(trial, self.space)  # for a re-issued trial, Optuna returns the values it holds
        try:
            cfg = self.space.trial_config(arm, params)
        except C.ConfigError as e:  # a combination the ranges allow but training does not
            self.started[name] += 1
            self._tell_failed(name, trial, f"ConfigError: {e}", infeasible=True)
            return self._suggest_run(trial_id)
        trial.set_user_attr("ray_trial_id", trial_id)
        trial.set_user_attr("arm", arm.name)
        trial.set_user_attr("suggest_s", round(time.perf_counter() - t0, 6))  # the searcher's cost (bench/scale.py)
        self.started[name] += 1
        self.live[trial_id] = (name, compat.optuna_trial_id(trial))
        self._handles[trial_id] = trial
        return {"arm": arm.name, "study": name, "stage": "search", "trial_number": trial.number, "cfg": C.to_dict(cfg),
                "params": params}

    def _trial(self, trial_id: str) -> optuna.Trial | None:
        if trial_id not in self.live:
            return None
        if trial_id not in self._handles:
            name, otid = self.live[trial_id]
            self._handles[trial_id] = compat.attach_trial(self.studies[name], otid)
        return self._handles[trial_id]

    def _history(self, trial_id: str, trial: optuna.Trial) -> TrialHistory:
        """The live trial's history; one this searcher has not seen report starts from what its Optuna
        trial holds (nothing, unless a resume found no stored results for it)."""
        if trial_id not in self._histories:
            name, otid = self.live[trial_id]
            self._histories[trial_id] = self._held_history(compat.frozen_trial(self.studies[name], otid))
        return self._histories[trial_id]

    def _held_history(self, frozen) -> TrialHistory:
        """The history of what an Optuna trial holds: its intermediate values, one per epoch."""
        metric = self.space.metric
        return TrialHistory(metric, [{"epoch": e, metric: v} for e, v in sorted(frozen.intermediate_values.items())])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self._trial(trial_id)
        if trial is not None:
            self._history(trial_id, trial).add(result)
            self._report(trial, result)

    def _report_missing(self, trial: optuna.Trial, held: dict, history: list[dict]) -> None:
        """Report the epochs of a stored `history` that the trial's intermediate values (`held`) lack."""
        for r in history:
            if "epoch" in r and int(r["epoch"]) not in held and "fail_reason" not in r:
                self._report(trial, r)

    def _report(self, trial: optuna.Trial, result: dict | None) -> None:
        value = (result or {}).get(self.space.metric)
        if value is not None and math.isfinite(value) and "epoch" in result:
            with warnings.catch_warnings():  # a step reported twice is ignored by Optuna; no need to warn
                warnings.simplefilter("ignore")
                trial.report(float(value), step=int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.running.discard(trial_id)
        trial = self._trial(trial_id)
        if trial is None:
            return
        result = result or {}
        history = self._history(trial_id, trial)
        history.add(result)
        name, _ = self.live.pop(trial_id)
        self._handles.pop(trial_id, None)
        self._histories.pop(trial_id, None)
        study = self.studies[name]
        end = outcome(epochs=int(result.get("epoch", 0)), max_epochs=self.space.max_epochs,
                      fail_reason=result.get("fail_reason"), errored=error)
        if end.status == STATUS_FAILED:
            self._tell_failed(name, trial, end.reason, end.infeasible)
            return
        # Ray does not pass the result that triggered a stop (ASHA's, or the last epoch's) to
        # on_trial_result, only here: record it as the trial's last intermediate value first.
        self._report(trial, result)
        self._keep_end(trial_id, name, trial, end.status, history.best)
        if end.status == STATUS_FINISHED:
            study.tell(trial, history.best, skip_if_finished=True)  # nan (no finite epoch): Optuna makes it FAIL
        else:  # stopped: ASHA ended it before the budget; an early score is not a final one
            trial.set_user_attr("stopped_at_epoch", end.epochs)
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)

    def _tell_failed(self, name: str, trial: optuna.Trial, reason: str, infeasible: bool) -> None:
        """End a failed trial (module docstring): infeasible, PRUNED with its constraint violated so
        that TPE learns from it, and counted in `failed`, which opens its study to a replacement
        (`_open`); otherwise (Ray gave up after errors) FAIL, which Ray itself retries on --resume."""
        study = self.studies[name]
        if compat.frozen_trial(study, compat.optuna_trial_id(trial)).state != TrialState.RUNNING:
            return  # already ended in the journal, and counted there (`restore`)
        trial.set_user_attr("fail_reason", reason)
        if infeasible:
            trial.set_constraint(FAILED_CONSTRAINT, 1.0)
            study.tell(trial, state=TrialState.PRUNED)
            self.failed[name] += 1
        else:
            study.tell(trial, state=TrialState.FAIL)

    def _keep_end(self, trial_id: str, name: str, trial: optuna.Trial, status: str, best: float) -> None:
        """Keep what `ranked` reads of an ended search trial (with later stages only), to pick its
        arm's confirmation runs once the arm's search has ended. `best`: its TrialHistory's."""
        if math.isfinite(best) and self.stages:
            params = _suggest(trial, self.space)  # the values the trial holds (nothing is sampled)
            arm = trial.params["arm"] if name == JOINT else name
            self.ended[trial_id] = {"arm": arm, "status": status, "best": best, "params": params,
                                    "trial_number": trial.number}

    # --- Ray's experiment checkpoint: counts and live trials; the studies are in the journal ----
    def save(self, checkpoint_path: str) -> None:
        # JSON, not pickle, although Ray names the file .pkl: a run's state is read back from
        # storage on resume, and reading it must not run code.
        # Written to a temporary file and renamed: a driver killed mid-write leaves the previous state.
        tmp = Path(checkpoint_path).with_name(Path(checkpoint_path).name + ".tmp")
        tmp.write_text(json.dumps({"started": self.started, "live": self.live, "ended": self.ended,
                                   "issued": sorted(self.issued)}))
        tmp.replace(checkpoint_path)
        if self.snapshot_journal and self.journal.exists():
            # Beside the searcher state in Ray's experiment folder, which Ray uploads to object
            # storage with it: the studies as they were when this state was saved.
            snap = Path(checkpoint_path).parent / self.journal.name
            tmp = snap.with_suffix(".tmp")
            shutil.copy(self.journal, tmp)
            tmp.replace(snap)

    def restore(self, checkpoint_path: str) -> None:
        """Back from Ray's last experiment checkpoint. That checkpoint, this searcher's state and the
        journal are separate files which Ray uploads to object storage together but not atomically
        (and reads from its staging folder while the driver may already be writing the next ones), so
        after a head node is lost any of them may be one checkpoint older than the others. The
        studies are made to agree with the trials Ray has, read from their stored results."""
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.started = {k: int(v) for k, v in state["started"].items()}
        self.live = {k: (name, int(otid)) for k, (name, otid) in state["live"].items()}
        # Ray resumes the trials of its own state only. The runs taking a slot are those of them that
        # have not ended (an errored one is retried), whatever this searcher's (possibly newer) state
        # remembers; a trial it handed out that Ray's state lacks will not run (see below).
        rays = compat.ray_trials(self.journal.parent / "trials") if self.journal is not None else None
        statuses = None if rays is None else {k: t["status"] for k, t in rays.items()}
        self.running = {t for t, status in (statuses or {}).items() if status != "TERMINATED"}
        known = self._stored_trials()  # Ray trial id -> its folder, for the trials Ray's state holds
        # Ended in Ray's state with no result stored (search.results.counted_trials): lost, run again.
        lost = {t for t, status in (statuses or {}).items() if status == "TERMINATED" and t not in known}
        self.ended, self.issued = state.get("ended", {}), set(state.get("issued", []))
        self._handles, self._stage_runs = {}, {}
        # A live trial whose Optuna trial has already ended was stopped (or finished) after Ray's last
        # experiment checkpoint: Ray brings it back as running, the scheduler stops it again at its
        # first result (search.scheduler), and Optuna hears nothing more of it (a report to an
        # ended trial would raise UpdateFinishedTrialError).
        running = {name: {compat.optuna_trial_id(t): t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
                   for name, study in self.studies.items()}
        # A live trial Ray's state lacks was handed out after Ray's last checkpoint: Ray will not run
        # it, so its Optuna trial (still RUNNING) becomes an orphan below and is handed out again; so
        # does a lost one's.
        in_rays_state = set(statuses or {}) - lost
        saved_live, self.live = self.live, {k: (name, otid) for k, (name, otid) in self.live.items()
                                            if otid in running.get(name, {}) and (statuses is None or k in in_rays_state)}
        if self.stages:
            # A trial dropped just above ended in this searcher's memory but not in its saved state,
            # and Ray's state still holds it as running, so no one else records its end: without it,
            # its arm's search would end with no trial to confirm (seen in the full-space kill test).
            for ray_id, (name, otid) in saved_live.items():
                if ray_id not in self.live and ray_id not in self.ended:
                    self._keep_stored_end(ray_id, name, otid, known.get(ray_id))
            self._add_stored_ends(known, statuses or {})
        owned = set(self.live.values())
        in_rays_state |= set(known)
        for name, trials in running.items():
            for otid, t in trials.items():
                ray_id = t.user_attrs.get("ray_trial_id")
                if (name, otid) not in owned and ray_id in in_rays_state:
                    # Asked for after this searcher's saved state but held by Ray's (the newer file):
                    # Ray resumes it, so its results must reach its Optuna trial. A PENDING one has no
                    # folder yet, so Ray's state is asked, not the trial folders (handing its Optuna
                    # trial out again ran one configuration twice: seen in test_storage's resume).
                    self.live[ray_id] = (name, otid)
        self._adopt_missing(in_rays_state, known, rays or {})
        # Optuna trials still RUNNING that no restored Ray trial owns were asked for after Ray's last
        # experiment checkpoint; they are not counted in `started`, so they are reused first.
        owned = set(self.live.values())
        self.orphans = {name: sorted(otid for otid in ids if (name, otid) not in owned) for name, ids in running.items()}
        # A live trial that Ray's state holds as ended, its results stored, while the (older) journal
        # still has it running: Ray sends no event for it, so it ends here, from its stored record;
        # else its study's search would never end, and the run would wait for it forever.
        for ray_id in [k for k in self.live if (statuses or {}).get(k) == "TERMINATED" and k in known]:
            rec = read_trial(known[ray_id], self.space.metric, self.space.max_epochs, "TERMINATED")
            if rec is not None:
                name, otid = self.live[ray_id]
                self._end_from_record(ray_id, compat.attach_trial(self.studies[name], otid),
                                      compat.frozen_trial(self.studies[name], otid).intermediate_values, rec)
        for name, study in self.studies.items():
            trials = study.get_trials(deepcopy=False)
            # A configuration training refused when it was asked for never became a Ray trial.
            refused = [t for t in trials if "ray_trial_id" not in t.user_attrs and _failed_for_config(t)]
            if statuses:
                # Every search trial of Ray's state that is not lost is now in its study (above), and
                # only those count: whichever of the three files is older, a trial Ray will not run
                # and whose work is not stored is run again (an orphan) or replaced by a new ask.
                counted = [t for t in trials if t.user_attrs.get("ray_trial_id") in in_rays_state] + refused
                self.started[name] = len(counted)
            else:  # no experiment state to go by: every ask is in the journal at once
                orphans = set(self.orphans.get(name, []))
                counted = [t for t in trials if compat.optuna_trial_id(t) not in orphans]
                self.started[name] = max(self.started.get(name, 0), len(counted))
            self.failed[name] = sum(map(_failed_for_config, counted))
        # A journal older than Ray's state lacks the epochs a resumed trial will not train again
        # (it continues from a later checkpoint): they are taken from the trial's stored results.
        for ray_id, (name, otid) in self.live.items():
            if ray_id in known:
                frozen = running.get(name, {}).get(otid)  # None: adopted just now (_adopt_missing), no values yet
                stored = read_history(known[ray_id])
                self._report_missing(compat.attach_trial(self.studies[name], otid),
                                     frozen.intermediate_values if frozen else {}, stored)
                self._histories[ray_id] = TrialHistory(self.space.metric, stored)

    def _adopt_missing(self, in_rays_state: set, known: dict[str, Path], rays: dict[str, dict]) -> None:
        """Search trials Ray's state holds that no study has (the journal is the older file) join
        their study now, with their own parameters: a study that lacks them would propose them
        again (the sampler is seeded, so its next ask repeats the lost one: seen in test_storage's
        resume, one configuration trained twice). One that has ended gets its stored epochs and its
        end; one that Ray will run goes on as a live trial. `rays`: Ray's saved state of each of its
        trials (compat.ray_trials, read once by `restore`)."""
        held = {t.user_attrs["ray_trial_id"] for study in self.studies.values()
                for t in study.get_trials(deepcopy=False) if "ray_trial_id" in t.user_attrs}
        adopted = False
        for ray_id in sorted(in_rays_state - held):
            config = rays.get(ray_id, {}).get("config") or (read_params(known[ray_id]) if ray_id in known else None)
            if not isinstance(config, dict) or S.is_later_stage(config) or config.get("study") not in self.studies:
                continue
            trial = self._adopt(config["study"], ray_id, config["arm"], config.get("params", {}))
            if rays.get(ray_id, {}).get("status") == "TERMINATED":
                rec = read_trial(known[ray_id], self.space.metric, self.space.max_epochs, "TERMINATED")
                self._end_from_record(ray_id, trial, {}, rec)
            adopted = True
        if adopted:
            reseed(self.studies, self.space)  # seeded by the trials they now hold, not those the journal had

    def _adopt(self, name: str, ray_id: str, arm: str, params: dict) -> optuna.Trial:
        """A Ray trial the study `name` lacks, added with its own parameters and made live."""
        study = self.studies[name]
        fixed = {k: (str(list(v)) if isinstance(v, (list, tuple)) else v) for k, v in params.items()}
        if name == JOINT:
            fixed["arm"] = arm
        study.enqueue_trial(fixed, skip_if_exists=False)
        trial = study.ask()
        if name == JOINT:
            trial.suggest_categorical("arm", [a.name for a in self.space.arms])
        _suggest(trial, self.space)
        trial.set_user_attr("ray_trial_id", ray_id)
        trial.set_user_attr("arm", arm)
        self.live[ray_id] = (name, compat.optuna_trial_id(trial))
        return trial

    def _end_from_record(self, ray_id: str, trial: optuna.Trial, held: dict, rec) -> None:
        """End a live trial's Optuna trial as its stored record (search.results.read_trial) ended."""
        self._report_missing(trial, held, rec.history)
        self._histories[ray_id] = TrialHistory(self.space.metric, rec.history)
        last = rec.history[-1] if rec.history else {}
        fail = rec.reason if rec.status == STATUS_FAILED and rec.infeasible else None
        self.on_trial_complete(ray_id, {**last, "epoch": rec.epochs, **({"fail_reason": fail} if fail else {})},
                               error=rec.status == STATUS_FAILED and not rec.infeasible)

    def _keep_stored_end(self, ray_id: str, name: str, otid: int, folder: Path | None) -> None:
        """`_keep_end` for a trial whose end is in the journal: finished = COMPLETE, stopped = PRUNED;
        its best from its stored results (`folder`), or, with none stored, Optuna's values of it."""
        frozen = compat.frozen_trial(self.studies[name], otid)
        status = {TrialState.COMPLETE: STATUS_FINISHED, TrialState.PRUNED: STATUS_STOPPED}.get(frozen.state)
        if _failed_for_config(frozen):  # PRUNED as infeasible (`_tell_failed`): never ranked
            status = None
        if status is not None:
            history = TrialHistory(self.space.metric, read_history(folder)) if folder is not None else \
                self._held_history(frozen)
            best = history.best
            self._keep_end(ray_id, name, compat.attach_trial(self.studies[name], otid), status, best)

    def _add_stored_ends(self, known: dict[str, Path], statuses: dict[str, str]) -> None:
        """What Ray's state holds and this searcher's (possibly older) saved state lacks: later-stage
        runs already issued (never issued twice), and search trials already ended (for the ranking).
        `statuses`: Ray's status of each trial of that state (search.results.ray_statuses)."""
        for ray_id, d in known.items():
            config = read_params(d) or {}
            if S.is_later_stage(config):
                self.issued.add(S.run_key(config))
            elif ray_id not in self.ended and ray_id not in self.live and statuses.get(ray_id) == "TERMINATED":
                rec = read_trial(d, self.space.metric, self.space.max_epochs, "TERMINATED")
                if rec is not None and rec.status != STATUS_FAILED and math.isfinite(rec.best):
                    self.ended[ray_id] = {"arm": rec.arm, "status": rec.status, "best": rec.best, "params": rec.params,
                                          "trial_number": rec.trial_number}

    def _stored_trials(self) -> dict[str, Path]:
        """{Ray trial id: folder} of the search trials in Ray's newest experiment state (none in memory)."""
        if self.journal is None:
            return {}
        return {trial_id: d for d, trial_id, _ in counted_trials(self.journal.parent / "trials")}


def reconcile_studies(space: Space, journal: Path, records) -> dict[str, int]:
    """After the search: every ended search trial in `records` (search.results.collect, the run's one
    account of its trials) ends in its study as it ended in Ray, with its per-epoch values.

    A driver lost while Ray was uploading its experiment checkpoint can leave a journal older than
    Ray's state: a trial Ray saw end may still be RUNNING in its study, or missing from it. Such a
    trial gets its stored epochs and its end here; one missing is added with its own parameters.
    Returns {"ended": n, "added": n}."""
    searcher = ArmSearcher(space, journal)
    counts = {"ended": 0, "added": 0}
    by_ray_id = {}
    for name, study in searcher.studies.items():
        for t in study.get_trials(deepcopy=False):
            if "ray_trial_id" in t.user_attrs:
                by_ray_id[t.user_attrs["ray_trial_id"]] = (name, t)
    for r in records:
        if r.stage != "search" or r.status == STATUS_RUNNING or r.study not in searcher.studies:
            continue
        name, frozen = by_ray_id.get(r.trial_id, (r.study, None))
        if frozen is None:
            trial = searcher._adopt(name, r.trial_id, r.arm, r.params)
            counts["added"] += 1
        elif frozen.state == TrialState.RUNNING:
            trial = compat.attach_trial(searcher.studies[name], compat.optuna_trial_id(frozen))
            searcher.live[r.trial_id] = (name, compat.optuna_trial_id(trial))
            counts["ended"] += 1
        else:
            continue
        searcher._end_from_record(r.trial_id, trial, frozen.intermediate_values if frozen else {}, r)
    return counts
