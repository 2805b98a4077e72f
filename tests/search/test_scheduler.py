"""ASHA per arm: a slow arm is never stopped because a fast arm looks better at the same rung."""
from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from search.scheduler import PerArmASHA
from search.space import load_space

from searchutil import write_experiment_state


def _trial(study: str, tid: str) -> Trial:
    return Trial("fake_trainable", config={"study": study, "arm": study}, trial_id=tid, stub=True)


def test_trials_are_compared_only_within_their_arm(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("arms: {backbone: [resnet18], version: [v1, v2]}\n"
                 "budget: {max_epochs: 8, grace_period: 1, reduction_factor: 2, trials_per_arm: 4}\n")
    space = load_space(p)
    fast, slow = "resnet18-v2-none-t5", "resnet18-v1-none-t5"
    sched = PerArmASHA(space)
    plain = AsyncHyperBandScheduler(time_attr="epoch", metric="map50", mode="max", max_t=8, grace_period=1,
                                    reduction_factor=2, brackets=1)
    trials = [_trial(fast, f"f{i}") for i in range(3)] + [_trial(slow, "s0"), _trial(slow, "s1")]
    for t in trials:
        sched.on_trial_add(None, t)
        plain.on_trial_add(None, t)
    scores = {"f0": 0.80, "f1": 0.90, "f2": 0.85, "s0": 0.10, "s1": 0.05}
    decisions = {t.trial_id: sched.on_trial_result(None, t, {"epoch": 1, "map50": scores[t.trial_id]}) for t in trials}
    global_ = {t.trial_id: plain.on_trial_result(None, t, {"epoch": 1, "map50": scores[t.trial_id]}) for t in trials}
    # One ASHA for everything stops the slow arm's first trial (0.10 is below the fast arm's median)...
    assert global_["s0"] == TrialScheduler.STOP
    # ...per arm it is the first of its rung and goes on; only the slow arm's worse trial is stopped.
    assert decisions["s0"] == TrialScheduler.CONTINUE and decisions["s1"] == TrialScheduler.STOP
    assert decisions["f0"] == TrialScheduler.CONTINUE and decisions["f1"] == TrialScheduler.CONTINUE
    rungs = sched.rung_records()
    assert rungs[slow][1] == {"s0": 0.10, "s1": 0.05} and set(rungs[fast][1]) == {"f0", "f1", "f2"}


def test_rungs_are_rebuilt_from_stored_results_after_a_restore(tmp_path):
    """Ray saves no scheduler state; the unpickled scheduler (what Tuner.restore gives back) rebuilds
    its rungs from the run folder and then decides exactly as the uninterrupted one does."""
    import json
    import pickle

    p = tmp_path / "s.yaml"
    p.write_text("arms: {backbone: [resnet18], version: [v1, v2]}\n"
                 "budget: {max_epochs: 8, grace_period: 1, reduction_factor: 2, trials_per_arm: 4}\n")
    space = load_space(p)
    run_dir = tmp_path / "run"
    live = PerArmASHA(space, run_dir)
    blank = pickle.dumps(live)  # as Tuner pickles it, before any result
    study = "resnet18-v1-none-t5"
    histories = {"a": [0.1, 0.3, 0.35, 0.5], "b": [0.2, 0.25], "c": [0.05]}
    for tid, values in histories.items():
        t = _trial(study, tid)
        live.on_trial_add(None, t)
        d = run_dir / "trials" / f"{study}_{tid}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"arm": study, "study": study}))
        lines = []
        for e, v in enumerate(values, start=1):
            live.on_trial_result(None, t, {"epoch": e, "map50": v})
            lines.append(json.dumps({"trial_id": tid, "epoch": float(e), "map50": v}))
        (d / "result.json").write_text("\n".join(lines) + "\n")
    restored = pickle.loads(blank)
    newcomer = _trial(study, "d")
    restored.on_trial_add(None, newcomer)  # the first call after the restore rebuilds the rungs
    assert restored.rung_records()[study] == live.rung_records()[study]
    assert restored.rung_records()[study][2] == {"a": 0.3, "b": 0.25}
    twin = _trial(study, "d")
    live.on_trial_add(None, twin)
    for e, v in enumerate([0.15, 0.26], start=1):
        assert (restored.on_trial_result(None, newcomer, {"epoch": e, "map50": v})
                == live.on_trial_result(None, twin, {"epoch": e, "map50": v}))


def _space(tmp_path, trials_per_arm=4):
    p = tmp_path / "s.yaml"
    p.write_text("arms: {backbone: [resnet18]}\nparams: {lr: {type: float, low: 0.001, high: 0.01}}\n"
                 f"budget: {{max_epochs: 4, grace_period: 1, reduction_factor: 2, trials_per_arm: {trials_per_arm}}}\n")
    return load_space(p)


def _store(run_dir, study, tid, values, config=None):
    """A trial folder as Ray leaves it: params.json and one result.json line per epoch."""
    import json

    d = run_dir / "trials" / f"{study}_{tid}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(config or {"arm": study, "study": study, "cfg": {}, "params": {}}))
    (d / "result.json").write_text("".join(json.dumps({"trial_id": tid, "epoch": float(e), "map50": v}) + "\n"
                                           for e, v in enumerate(values, start=1)))


def test_the_rung_rebuild_counts_exactly_the_trials_results_count(tmp_path):
    """A trial folder left by a driver that died before Ray's next experiment checkpoint is not a
    trial (results.csv skips it; its Optuna trial is handed to a new trial): it must not sit in a rung."""
    import pickle

    from search.results import collect

    space = _space(tmp_path)
    study = "resnet18-v1-none-t5"
    run_dir = tmp_path / "run"
    blank = pickle.dumps(PerArmASHA(space, run_dir))
    _store(run_dir, study, "a", [0.3, 0.4])
    _store(run_dir, study, "lost", [0.9, 0.95])
    write_experiment_state(run_dir / "trials", {"a": "RUNNING"})
    restored = pickle.loads(blank)
    restored.on_trial_add(None, _trial(study, "b"))  # the first call rebuilds
    counted = {r.trial_id for r in collect(run_dir, "map50", 4)}
    assert counted == {"a"}
    assert {tid for rung in restored.rung_records()[study].values() for tid in rung} == counted


def _before_a_kill(tmp_path, trials_per_arm: int):
    """(run folder, searcher, scheduler, and both pickled as the Tuner pickles them at the start) of
    a one-arm run, for the resume tests below."""
    import pickle

    from search.searcher import ArmSearcher

    space = _space(tmp_path, trials_per_arm=trials_per_arm)
    run_dir = tmp_path / "run"
    (run_dir / "trials").mkdir(parents=True)
    searcher = ArmSearcher(space, run_dir / "optuna.journal")
    scheduler = PerArmASHA(space, run_dir)
    return run_dir, searcher, scheduler, pickle.dumps(searcher), pickle.dumps(scheduler)


def test_a_trial_stopped_after_the_last_experiment_checkpoint_stays_stopped_on_resume(tmp_path):
    """ASHA stops t2 and Optuna marks it PRUNED; the driver dies before Ray's next experiment
    checkpoint, so Ray restores t2 as running from its checkpoint and it reports epoch 1 again.
    Read in the code, not seen in a run: without a rule, the searcher reports to a finished Optuna
    trial (Optuna raises UpdateFinishedTrialError in the driver) and ASHA, which already holds t2 in
    its rung, lets it continue. The earlier decision wins: t2 is stopped again and Optuna hears
    nothing more of it."""
    import pickle

    from optuna.trial import TrialState

    study = "resnet18-v1-none-t5"
    run_dir, searcher, scheduler, blank_searcher, blank_scheduler = _before_a_kill(tmp_path, trials_per_arm=3)
    trials = {}
    for tid in ("t0", "t1", "t2"):
        config = searcher.suggest(tid)
        trials[tid] = Trial("fake_trainable", config=config, trial_id=tid, stub=True)
        scheduler.on_trial_add(None, trials[tid])
    searcher.save(str(tmp_path / "searcher-state.json"))  # Ray's last experiment checkpoint: all three live
    write_experiment_state(run_dir / "trials", {tid: "RUNNING" for tid in trials})
    decisions = {}
    for tid, v in (("t0", 0.5), ("t1", 0.6), ("t2", 0.1)):
        _store(run_dir, study, tid, [v], config=trials[tid].config)
        result = {"epoch": 1, "map50": v}
        searcher.on_trial_result(tid, result)
        decisions[tid] = scheduler.on_trial_result(None, trials[tid], result)
    assert decisions == {"t0": TrialScheduler.CONTINUE, "t1": TrialScheduler.CONTINUE, "t2": TrialScheduler.STOP}
    searcher.on_trial_complete("t2", {"epoch": 1, "map50": 0.1})
    # The driver dies here. Resume: the Tuner's pickles, the searcher's last saved state.
    searcher2, scheduler2 = pickle.loads(blank_searcher), pickle.loads(blank_scheduler)
    searcher2.restore(str(tmp_path / "searcher-state.json"))
    again = {"epoch": 1, "map50": 0.1}  # t2, restored as running, trained epoch 1 again
    searcher2.on_trial_result("t2", again)  # a step already reported: Optuna ignores it either way
    assert scheduler2.on_trial_result(None, trials["t2"], again) == TrialScheduler.STOP  # was CONTINUE
    # Had it continued, its next epoch would have reached a finished Optuna trial (this raised
    # UpdateFinishedTrialError before); a result Ray sends before the stop takes effect is ignored.
    searcher2.on_trial_result("t2", {"epoch": 2, "map50": 0.2})
    searcher2.on_trial_complete("t2", {"epoch": 2, "map50": 0.2})
    assert scheduler2.on_trial_result(None, trials["t0"], {"epoch": 2, "map50": 0.55}) == TrialScheduler.CONTINUE
    searcher2.on_trial_result("t0", {"epoch": 2, "map50": 0.55})
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in searcher2.studies[study].get_trials()}
    assert by_ray_id["t2"].state == TrialState.PRUNED and by_ray_id["t2"].intermediate_values == {1: 0.1}
    assert by_ray_id["t0"].state == TrialState.RUNNING and by_ray_id["t0"].intermediate_values == {1: 0.5, 2: 0.55}


def test_a_trial_that_finished_after_the_last_experiment_checkpoint_finishes_again_on_resume(tmp_path):
    """A trial finishes its 4 epochs and Optuna marks it COMPLETE, but the driver dies before Ray's
    next experiment checkpoint and the run folder kept its results up to epoch 2 only: Ray restores
    it as running from its epoch-2 checkpoint. It trains epochs 3 and 4 again and then ends, so
    results.csv calls it finished, as its study does (seen in the full-space kill test: stopped at
    its first result, it ended as `stopped` after 11 of 12 epochs, its study COMPLETE)."""
    import pickle

    from optuna.trial import TrialState

    study = "resnet18-v1-none-t5"
    run_dir, searcher, scheduler, blank_searcher, blank_scheduler = _before_a_kill(tmp_path, trials_per_arm=1)
    t0 = Trial("fake_trainable", config=searcher.suggest("t0"), trial_id="t0", stub=True)
    scheduler.on_trial_add(None, t0)
    values = {1: 0.3, 2: 0.4, 3: 0.5, 4: 0.6}
    for epoch in (1, 2):
        searcher.on_trial_result("t0", {"epoch": epoch, "map50": values[epoch]})
        assert scheduler.on_trial_result(None, t0, {"epoch": epoch, "map50": values[epoch]}) == TrialScheduler.CONTINUE
    _store(run_dir, study, "t0", [values[1], values[2]], config=t0.config)  # what the run folder kept
    searcher.save(str(tmp_path / "searcher-state.json"))  # Ray's last experiment checkpoint: t0 live
    write_experiment_state(run_dir / "trials", {"t0": "RUNNING"})
    for epoch in (3, 4):
        searcher.on_trial_result("t0", {"epoch": epoch, "map50": values[epoch]})
        scheduler.on_trial_result(None, t0, {"epoch": epoch, "map50": values[epoch]})
    searcher.on_trial_complete("t0", {"epoch": 4, "map50": 0.6})
    # The driver dies here. Resume: the Tuner's pickles, the searcher's last saved state.
    searcher2, scheduler2 = pickle.loads(blank_searcher), pickle.loads(blank_scheduler)
    searcher2.restore(str(tmp_path / "searcher-state.json"))
    decisions = []
    for epoch in (3, 4):  # trained again from the epoch-2 checkpoint
        searcher2.on_trial_result("t0", {"epoch": epoch, "map50": values[epoch]})
        decisions.append(scheduler2.on_trial_result(None, t0, {"epoch": epoch, "map50": values[epoch]}))
    assert decisions == [TrialScheduler.CONTINUE, TrialScheduler.STOP]  # was STOP at epoch 3 already
    searcher2.on_trial_complete("t0", {"epoch": 4, "map50": 0.6})
    (t,) = searcher2.studies[study].get_trials()
    assert t.state == TrialState.COMPLETE and t.value == 0.6 and sorted(t.intermediate_values) == [1, 2, 3, 4]
