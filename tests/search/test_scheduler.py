"""ASHA per arm: a slow arm is never stopped because a fast arm looks better at the same rung."""
from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from search.scheduler import PerArmASHA
from search.space import load_space


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
