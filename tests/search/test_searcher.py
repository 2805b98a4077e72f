"""The searcher's studies after a resume from files of different ages (no Ray processes: the searcher
is driven as Ray's controller drives it)."""
from __future__ import annotations

import json
import pickle
import shutil

from optuna.trial import TrialState
from ray.tune.search import Searcher

from search.results import collect
from search.searcher import ArmSearcher, reconcile_studies
from search.space import load_space

from searchutil import confirming_searcher, write_experiment_state

STUDY = "resnet18-v1-none-t5"


def _space(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("arms: {backbone: [resnet18]}\n"
                 "params:\n  lr: {type: float, low: 0.001, high: 0.01}\n"
                 "  anchor_sizes: {type: categorical, choices: [[8, 16, 32, 64, 128], [16, 32, 64, 128, 256]]}\n"
                 "budget: {max_epochs: 3, grace_period: 1, reduction_factor: 2, trials_per_arm: 3}\n")
    return load_space(p)


def _store(run_dir, tid, config, values):
    """A trial folder as Ray leaves it: params.json and one result.json line per epoch reported."""
    d = run_dir / "trials" / f"{config['arm']}_{tid}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "params.json").write_text(json.dumps(config))
    (d / "result.json").write_text("".join(json.dumps({"trial_id": tid, "epoch": float(e), "map50": v}) + "\n"
                                           for e, v in enumerate(values, start=1)))


def _resumable(tmp_path, max_concurrent: int):
    """(space, run folder, journal, a searcher, the searcher as Ray's Tuner pickled it before any ask)."""
    space = _space(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "trials").mkdir(parents=True)
    journal = run_dir / "optuna.journal"
    searcher = ArmSearcher(space, journal, max_concurrent=max_concurrent)
    return space, run_dir, journal, searcher, pickle.dumps(searcher)


def test_a_journal_older_than_rays_state_is_brought_in_line_with_the_stored_results(tmp_path):
    """The head node dies while Ray uploads an experiment checkpoint: the bucket gets Ray's new state
    and this searcher's new state, but the journal snapshot of the checkpoint before. Seen once in CI
    (a resumed trial's Optuna values had a gap at the epoch the journal lacked). On resume:
    `a` continues from its epoch-2 checkpoint, `b` (stopped by ASHA at epoch 2) is not run again,
    `c` (asked after the old journal) runs. Every trial must end in the study as it ended in Ray,
    with every epoch it reported, and no configuration may be handed out twice."""
    space = _space(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "trials").mkdir(parents=True)
    journal = run_dir / "optuna.journal"
    searcher = ArmSearcher(space, journal)
    blank = pickle.dumps(searcher)  # as the Tuner pickles it
    configs = {tid: searcher.suggest(tid) for tid in ("a", "b")}
    for tid, v in (("a", 0.3), ("b", 0.2)):
        searcher.on_trial_result(tid, {"epoch": 1, "map50": v})
    shutil.copy(journal, tmp_path / "older.journal")  # the journal of the previous checkpoint
    searcher.on_trial_result("a", {"epoch": 2, "map50": 0.4})
    searcher.on_trial_complete("b", {"epoch": 2, "map50": 0.1})  # ASHA stopped it
    configs["c"] = searcher.suggest("c")
    searcher.save(str(tmp_path / "searcher-state.json"))
    write_experiment_state(run_dir / "trials", {"a": "RUNNING", "b": "TERMINATED", "c": "PENDING"})
    _store(run_dir, "a", configs["a"], [0.3, 0.4])
    _store(run_dir, "b", configs["b"], [0.2, 0.1])
    _store(run_dir, "c", configs["c"], [])
    shutil.copy(tmp_path / "older.journal", journal)  # the torn upload: an older journal came back

    resumed = pickle.loads(blank)
    resumed.restore(str(tmp_path / "searcher-state.json"))
    # c, which the older journal lacks, joins its study at once with its own parameters: a study
    # without it would propose them again (its sampler is seeded).
    (held_c,) = [t for t in resumed.studies[STUDY].get_trials() if t.user_attrs.get("ray_trial_id") == "c"]
    assert held_c.state == TrialState.RUNNING and held_c.params["lr"] == configs["c"]["params"]["lr"]
    # Three started, a and c running (b ended at the restore): no fourth trial, and not FINISHED
    # either (a running trial that fails gets a replacement, and Ray asks no more after FINISHED).
    assert resumed.suggest("extra") is None
    resumed.on_trial_result("a", {"epoch": 3, "map50": 0.5})
    resumed.on_trial_complete("a", {"epoch": 3, "map50": 0.5})
    for e, v in enumerate((0.6, 0.7, 0.65), start=1):
        resumed.on_trial_result("c", {"epoch": e, "map50": v})
    resumed.on_trial_complete("c", {"epoch": 3, "map50": 0.65})
    # b, which Ray's state holds as ended (and sends no event for), was ended at the restore from its
    # stored results: once a and c have ended, the search has (a live b waited forever for it).
    assert resumed.suggest("after") is resumed.FINISHED
    _store(run_dir, "a", configs["a"], [0.3, 0.4, 0.5])
    _store(run_dir, "c", configs["c"], [0.6, 0.7, 0.65])
    write_experiment_state(run_dir / "trials", {t: "TERMINATED" for t in "abc"})

    records = collect(run_dir, "map50", 3)
    assert reconcile_studies(space, journal, records) == {"ended": 0, "added": 0}  # b ended and c joined on resume
    study = ArmSearcher(space, journal).studies[STUDY]
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.get_trials()}
    assert sorted(by_ray_id) == ["a", "b", "c"] and len(study.get_trials()) == 3
    assert by_ray_id["a"].state == TrialState.COMPLETE and by_ray_id["a"].intermediate_values == {1: 0.3, 2: 0.4, 3: 0.5}
    assert by_ray_id["a"].value == 0.5
    assert by_ray_id["b"].state == TrialState.PRUNED and by_ray_id["b"].intermediate_values == {1: 0.2, 2: 0.1}
    assert by_ray_id["c"].state == TrialState.COMPLETE and by_ray_id["c"].intermediate_values == {1: 0.6, 2: 0.7, 3: 0.65}
    assert by_ray_id["c"].value == 0.7
    # c, added from its stored results, holds the parameters it trained with.
    assert by_ray_id["c"].params["lr"] == configs["c"]["params"]["lr"]
    assert by_ray_id["c"].params["anchor_sizes"] == str(configs["c"]["params"]["anchor_sizes"])


def test_a_failed_trial_missing_from_the_journal_is_added_as_failed(tmp_path):
    """The third way a trial ends: Ray's record says failed, the journal never heard of it."""
    space = _space(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "trials").mkdir(parents=True)
    journal = run_dir / "optuna.journal"
    config = ArmSearcher(space, tmp_path / "elsewhere.journal").suggest("f")
    _store(run_dir, "f", config, [0.1])
    with open(run_dir / "trials" / f"{config['arm']}_f" / "result.json", "a") as f:
        f.write(json.dumps({"trial_id": "f", "epoch": 1.0, "map50": float("nan"),
                            "fail_reason": "NonFiniteLossError: loss is nan"}) + "\n")
    write_experiment_state(run_dir / "trials", {"f": "TERMINATED"})
    assert reconcile_studies(space, journal, collect(run_dir, "map50", 3)) == {"ended": 0, "added": 1}
    (t,) = ArmSearcher(space, journal).studies[STUDY].get_trials()
    assert t.state == TrialState.PRUNED and t.constraints == {"failed": 1.0} and t.user_attrs["ray_trial_id"] == "f"
    assert "NonFiniteLossError" in t.user_attrs["fail_reason"]


def test_a_trial_that_ended_after_the_last_snapshot_still_gets_its_confirmation_run(tmp_path):
    """The trial ends (the journal says COMPLETE) after Ray's last experiment checkpoint, and the
    driver is killed: the searcher's saved state and Ray's both hold it as running. On resume the
    searcher must still count it as its arm's ended trial, or the arm's search ends with nothing
    to confirm (seen in the full-space kill test: one arm of 38 without its confirmation run)."""
    _, run_dir, searcher = confirming_searcher(tmp_path, trials_per_arm=1)
    blank = pickle.dumps(searcher)
    config = searcher.suggest("a")
    searcher.on_trial_result("a", {"epoch": 1, "map50": 0.3})
    searcher.save(str(tmp_path / "searcher-state.json"))  # Ray's last experiment checkpoint
    write_experiment_state(run_dir / "trials", {"a": "RUNNING"})
    _store(run_dir, "a", config, [0.3, 0.4])
    searcher.on_trial_complete("a", {"epoch": 2, "map50": 0.4})  # then the kill

    resumed = pickle.loads(blank)
    resumed.restore(str(tmp_path / "searcher-state.json"))
    confirm = resumed.suggest("c")
    assert isinstance(confirm, dict) and confirm["stage"] == "confirm" and confirm["source_trial"] == "a", confirm
    assert resumed.suggest("d") is resumed.FINISHED


def test_runs_asked_after_rays_last_state_do_not_hold_slots_after_a_resume(tmp_path):
    """budget.max_concurrent 2. The head node is lost just after the searcher handed out two trials
    that Ray's last experiment state never recorded (its state holds a and b, which had finished; the
    searcher's newer state also remembers c and d). On resume Ray runs no c or d: they must not take
    the two slots (Ray's ConcurrencyLimiter restored its own list of them and the resumed search
    waited forever, seen in test_storage's resume), and the third trial is asked for at once."""
    space = _space(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "trials").mkdir(parents=True)
    searcher = ArmSearcher(space, run_dir / "optuna.journal", max_concurrent=2)
    blank = pickle.dumps(searcher)
    configs = {tid: searcher.suggest(tid) for tid in ("a", "b")}
    assert searcher.suggest("x") is None  # both slots taken
    for tid in ("a", "b"):
        searcher.on_trial_result(tid, {"epoch": 1, "map50": 0.2})
        searcher.on_trial_complete(tid, {"epoch": 3, "map50": 0.2})
        _store(run_dir, tid, configs[tid], [0.2, 0.2, 0.2])
    write_experiment_state(run_dir / "trials", {"a": "TERMINATED", "b": "TERMINATED"})  # Ray's last state
    configs_c = searcher.suggest("c")
    assert isinstance(configs_c, dict)
    searcher.save(str(tmp_path / "searcher-state.json"))  # the searcher's, newer: c is live in it

    resumed = pickle.loads(blank)
    resumed.restore(str(tmp_path / "searcher-state.json"))
    assert resumed.running == set()
    third = resumed.suggest("e")  # c's Optuna trial, which no Ray trial holds, handed out again
    assert isinstance(third, dict) and third["stage"] == "search" and third["params"] == configs_c["params"]
    assert resumed.suggest("f") is None  # a, b and e: the arm's three trials (not FINISHED: one may yet fail)
    # Ray's state is what counts: with two runs in it unfinished, a third waits for a slot.
    write_experiment_state(run_dir / "trials", {"a": "TERMINATED", "b": "RUNNING", "e": "PENDING"})
    again = pickle.loads(blank)
    again.restore(str(tmp_path / "searcher-state.json"))
    assert again.running == {"b", "e"} and again.suggest("g") is None


def test_a_pending_trial_of_rays_state_keeps_its_optuna_trial_after_a_resume(tmp_path):
    """Ray's last state holds trial b as PENDING (asked for, not started: no folder yet), and this
    searcher's saved state is the older file, without b. On resume Ray runs b with the parameters it
    was given, so b's Optuna trial is b's: handing it out again ran one configuration twice and the
    arm four trials instead of three (seen in CI, test_storage's resume from the bucket)."""
    space = _space(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "trials").mkdir(parents=True)
    searcher = ArmSearcher(space, run_dir / "optuna.journal", max_concurrent=2)
    blank = pickle.dumps(searcher)
    config_a = searcher.suggest("a")
    searcher.on_trial_result("a", {"epoch": 1, "map50": 0.2})
    _store(run_dir, "a", config_a, [0.2])
    searcher.save(str(tmp_path / "searcher-state.json"))  # the older file: b not yet asked for
    config_b = searcher.suggest("b")
    write_experiment_state(run_dir / "trials", {"a": "RUNNING", "b": "PENDING"})  # Ray's newer state

    resumed = pickle.loads(blank)
    resumed.restore(str(tmp_path / "searcher-state.json"))
    assert resumed.running == {"a", "b"}
    assert resumed.orphans[STUDY] == [] and set(resumed.live) == {"a", "b"}
    assert resumed.suggest("c") is None  # both slots are Ray's a and b
    resumed.on_trial_complete("b", {"epoch": 3, "map50": 0.3})
    third = resumed.suggest("c")
    assert isinstance(third, dict) and third["params"] != config_b["params"] and third["params"] != config_a["params"]
    assert resumed.suggest("d") is None  # a is still running; the arm has its three trials


def test_trials_rays_state_ended_but_whose_results_never_reached_storage_are_run_again(tmp_path):
    """The head node dies while Ray uploads: its state says b and c TERMINATED, but their results never
    reached the bucket (b's folder holds only params.json, c has no folder), the journal still has b
    RUNNING and never heard of c. Their work is lost: they must not count as trials of the arm (the
    arm ended one trial short, and with b's configuration in the results twice, seen in CI,
    test_storage's resume from the bucket), and the arm gets its three trials: a, b's configuration
    again, and one more."""
    space, run_dir, journal, searcher, blank = _resumable(tmp_path, max_concurrent=3)
    configs = {tid: searcher.suggest(tid) for tid in ("a", "b")}
    shutil.copy(journal, tmp_path / "older.journal")  # the journal of the last checkpoint: no c in it
    configs["c"] = searcher.suggest("c")
    searcher.on_trial_result("a", {"epoch": 1, "map50": 0.2})
    searcher.on_trial_complete("a", {"epoch": 3, "map50": 0.2})
    searcher.save(str(tmp_path / "searcher-state.json"))
    _store(run_dir, "a", configs["a"], [0.2, 0.2, 0.2])
    _store(run_dir, "b", configs["b"], [])  # params.json, an empty result.json
    write_experiment_state(run_dir / "trials", {"a": "TERMINATED", "b": "TERMINATED", "c": "TERMINATED"})
    shutil.copy(tmp_path / "older.journal", journal)

    assert [r.trial_id for r in collect(run_dir, "map50", 3)] == ["a"]  # b and c are not results
    resumed = pickle.loads(blank)
    resumed.restore(str(tmp_path / "searcher-state.json"))
    again = resumed.suggest("d")
    assert isinstance(again, dict) and again["params"] == configs["b"]["params"]  # b's Optuna trial, run again
    assert isinstance(resumed.suggest("e"), dict)  # in place of c
    assert resumed.suggest("f") is None  # a, d and e: the arm's three trials (not FINISHED: one may yet fail)


def test_a_trial_only_this_searchers_state_remembers_is_replaced(tmp_path):
    """The searcher's saved state is the newest file: it handed out b after Ray's last state (which
    holds a, still PENDING) and after the journal's last upload (which holds only a's ask). Ray will
    not run b and no study knows it: b must not count, or the arm ends a trial short (seen in CI,
    test_storage's resume from the bucket: three trials of six)."""
    space, run_dir, journal, searcher, blank = _resumable(tmp_path, max_concurrent=4)  # slots are not what this is about
    searcher.suggest("a")
    shutil.copy(journal, tmp_path / "older.journal")
    searcher.suggest("b")
    searcher.save(str(tmp_path / "searcher-state.json"))
    write_experiment_state(run_dir / "trials", {"a": "PENDING"})
    shutil.copy(tmp_path / "older.journal", journal)

    resumed = pickle.loads(blank)
    resumed.restore(str(tmp_path / "searcher-state.json"))
    assert set(resumed.live) == {"a"} and resumed.running == {"a"}
    assert isinstance(resumed.suggest("c"), dict) and isinstance(resumed.suggest("d"), dict)  # in place of b, and the third
    assert resumed.suggest("e") is None  # not FINISHED: a live trial may yet fail


def test_a_trial_that_ended_in_rays_state_but_not_in_the_journal_is_not_proposed_again(tmp_path):
    """Ray's state holds a finished with its results stored; the journal came back from before a was
    even asked. The study must learn a at once, ended, or the seeded sampler's next ask repeats a's
    configuration (seen in CI, test_storage's resume: one configuration trained twice)."""
    space, run_dir, journal, searcher, blank = _resumable(tmp_path, max_concurrent=4)
    config_a = searcher.suggest("a")
    searcher.on_trial_complete("a", {"epoch": 3, "map50": 0.4})
    searcher.save(str(tmp_path / "searcher-state.json"))
    _store(run_dir, "a", config_a, [0.2, 0.3, 0.4])
    write_experiment_state(run_dir / "trials", {"a": "TERMINATED"})
    journal.unlink()  # the journal came back from before the first ask: there was none

    resumed = pickle.loads(blank)
    resumed.restore(str(tmp_path / "searcher-state.json"))
    (held,) = resumed.studies[STUDY].get_trials()
    assert held.state == TrialState.COMPLETE and held.intermediate_values == {1: 0.2, 2: 0.3, 3: 0.4}
    assert held.user_attrs["ray_trial_id"] == "a"
    proposals = [resumed.suggest(t) for t in ("b", "c")]
    assert all(p["params"] != config_a["params"] for p in proposals)
    assert resumed.suggest("d") is None  # not FINISHED: a live trial may yet fail


def test_a_lost_trial_that_had_ended_before_the_searchers_state_was_saved_is_replaced(tmp_path):
    """b ended before this searcher's state was saved (so that state counts it, not as live), Ray's
    state says TERMINATED, but its results never reached storage and the journal lacks it: the arm
    still gets three trials with results (seen in test_storage's resume: five trials of six)."""
    space, run_dir, journal, searcher, blank = _resumable(tmp_path, max_concurrent=4)
    config_a = searcher.suggest("a")
    shutil.copy(journal, tmp_path / "older.journal")
    searcher.suggest("b")
    searcher.on_trial_complete("b", {"epoch": 1, "map50": 0.1})
    searcher.save(str(tmp_path / "searcher-state.json"))
    _store(run_dir, "a", config_a, [0.2])
    write_experiment_state(run_dir / "trials", {"a": "RUNNING", "b": "TERMINATED"})
    shutil.copy(tmp_path / "older.journal", journal)

    resumed = pickle.loads(blank)
    resumed.restore(str(tmp_path / "searcher-state.json"))
    assert resumed.started[STUDY] == 1 and set(resumed.live) == {"a"}
    assert isinstance(resumed.suggest("c"), dict) and isinstance(resumed.suggest("d"), dict)
    assert resumed.suggest("e") is None  # not FINISHED: a live trial may yet fail


# --- failed trials: infeasible for TPE, and replaced (issue 26, item 1) ------------------------------

def _failing_search(tmp_path, seed: int, tpa: int, max_failed: int, told_as_fail: bool = False, above: float = 1e-2):
    """Drive a two-arm search sequentially as Ray would, no Ray processes: every resnet34 trial with lr
    above `above` (by default the top third of the log range) fails for its configuration, as a
    diverging loss or an out-of-memory does; elsewhere the metric peaks at lr 1e-3. Returns ({arm:
    [failed?, ...] in the order asked}, the searcher). `told_as_fail`: tell Optuna FAIL as before the
    fix (TPE never sees it)."""
    import math

    d = tmp_path / f"s{seed}-{told_as_fail}"
    d.mkdir()
    p = d / "s.yaml"
    p.write_text("arms: {backbone: [resnet18, resnet34]}\n"
                 "params:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
                 f"budget: {{max_epochs: 2, trials_per_arm: {tpa}, max_failed_per_arm: {max_failed}}}\nseed: {seed}\n")
    searcher = ArmSearcher(load_space(p), d / "optuna.journal")
    if told_as_fail:
        def tell_fail(name, trial, reason, infeasible):
            searcher.failed[name] += 1
            searcher.studies[name].tell(trial, state=TrialState.FAIL)
        searcher._tell_failed = tell_fail
    failed: dict[str, list[bool]] = {}
    for i in range(10 * tpa):
        config = searcher.suggest(f"t{i}")
        if not isinstance(config, dict):
            break
        lr = config["params"]["lr"]
        fails = config["arm"].startswith("resnet34") and lr > above
        failed.setdefault(config["arm"], []).append(fails)
        if fails:
            searcher.on_trial_complete(f"t{i}", {"epoch": 1.0, "map50": math.nan,
                                                 "fail_reason": "OutOfMemoryError: CUDA out of memory"})
        else:
            value = 0.5 - 0.1 * (math.log10(lr) + 3) ** 2
            searcher.on_trial_result(f"t{i}", {"epoch": 1.0, "map50": value})
            searcher.on_trial_complete(f"t{i}", {"epoch": 2.0, "map50": value})
    return failed, searcher


def test_tpe_learns_from_failed_trials_and_every_arm_gets_its_usable_trials(tmp_path):
    """TPE samples from COMPLETE and PRUNED trials only: a failed trial told FAIL teaches it nothing, so
    it kept proposing the failing region (measured with the old telling: the last 10 of 30 resnet34
    trials all failed, and the arm used up its replacements with 10 usable trials). Told as infeasible
    (PRUNED, constraint `failed` = 1), later proposals fall in the failing region less often than the
    random first ones, and both arms end with trials_per_arm usable trials."""
    first = later = 0
    for seed in (0, 1, 2):
        failed, searcher = _failing_search(tmp_path, seed, tpa=30, max_failed=30)
        arm = failed["resnet34-v1-none-t5"]
        first, later = first + sum(arm[:10]), later + sum(arm[-10:])  # the first 10: TPE's random start-up
        assert [len(f) - sum(f) for f in failed.values()] == [30, 30]  # usable trials per arm
        study = searcher.studies["resnet34-v1-none-t5"]
        bad = [t for t in study.get_trials() if "fail_reason" in t.user_attrs]
        assert len(bad) == sum(arm) and all(t.state == TrialState.PRUNED and t.constraints == {"failed": 1.0}
                                            for t in bad)
    assert later < first / 2, (first, later)
    failed, _ = _failing_search(tmp_path, 0, tpa=30, max_failed=30, told_as_fail=True)
    assert sum(failed["resnet34-v1-none-t5"][-10:]) > sum(failed["resnet34-v1-none-t5"][:10])  # the defect shown


def test_an_arm_whose_failures_exceed_max_failed_per_arm_ends_short_and_the_report_says_why(tmp_path):
    """Replacements are bounded: a resnet34 that fails at every lr, with trials_per_arm 4 and
    max_failed_per_arm 2, runs 4 trials and 2 replacements and ends with none usable; the search then
    ends (resnet18 has its 4), and the report names the arm and why it is short."""
    failed, searcher = _failing_search(tmp_path, 0, tpa=4, max_failed=2, above=0.0)
    assert failed == {"resnet18-v1-none-t5": [False] * 4, "resnet34-v1-none-t5": [True] * 6}
    assert searcher.suggest("more") is Searcher.FINISHED
    from search.report import short_arms

    rows = [{"arm": "resnet34-v1-none-t5", "usable": 0, "failed": 6, "infeasible": 6},
            {"arm": "resnet18-v1-none-t5", "usable": 4, "failed": 0, "infeasible": 0}]
    (line, blank) = short_arms(rows, searcher.space, done=True)
    assert line.startswith("**resnet34-v1-none-t5 has 0 usable trials of the 4 every arm gets**: 6 of its trials "
                           "failed for their configuration, more than the 2 `budget.max_failed_per_arm`") and blank == ""
    assert short_arms(rows, searcher.space, done=False) == []  # a run still going may yet get them


def test_a_resumed_searcher_still_replaces_a_trial_that_failed_before_the_kill(tmp_path):
    """The replacement budget survives a resume: it is counted again from the studies (a failed trial
    holds its fail_reason), not trusted to a saved counter."""
    space = _space(tmp_path)  # trials_per_arm 3: max_failed_per_arm 1 (half, rounded down)
    run_dir = tmp_path / "run"
    (run_dir / "trials").mkdir(parents=True)
    searcher = ArmSearcher(space, run_dir / "optuna.journal")
    blank = pickle.dumps(searcher)
    configs = {tid: searcher.suggest(tid) for tid in ("a", "b", "c")}
    assert searcher.suggest("x") is None  # the budget is spent; c's arm is still running
    searcher.on_trial_complete("a", {"epoch": 3.0, "map50": 0.3})
    searcher.on_trial_complete("b", {"epoch": 1.0, "map50": float("nan"), "fail_reason": "NonFiniteLossError: nan"})
    searcher.save(str(tmp_path / "searcher-state.json"))
    write_experiment_state(run_dir / "trials", {"a": "TERMINATED", "b": "TERMINATED", "c": "RUNNING"})
    _store(run_dir, "a", configs["a"], [0.1, 0.2, 0.3])
    _store(run_dir, "b", configs["b"], [])
    with open(run_dir / "trials" / f"{configs['b']['arm']}_b" / "result.json", "a") as f:
        f.write(json.dumps({"trial_id": "b", "epoch": 1.0, "map50": float("nan"), "fail_reason": "NonFiniteLossError: nan"})
                + "\n")
    _store(run_dir, "c", configs["c"], [0.2])

    resumed = pickle.loads(blank)
    resumed.restore(str(tmp_path / "searcher-state.json"))
    assert (resumed.started[STUDY], resumed.failed[STUDY]) == (3, 1)
    assert isinstance(resumed.suggest("d"), dict)  # b's replacement
    assert resumed.suggest("e") is None            # and no more: 1 failure may be replaced


def test_a_trial_ray_gave_up_on_is_fail_and_not_replaced(tmp_path):
    """An error (a crash, a lost node, after Ray's own retries) says nothing about the configuration:
    Optuna FAIL, no constraint, and no replacement, since Ray retries it on --resume (a replacement
    as well would give the arm one trial more than the others)."""
    space = _space(tmp_path)  # trials_per_arm 3, max_failed_per_arm 1
    searcher = ArmSearcher(space, tmp_path / "optuna.journal")
    for tid in ("a", "b", "c"):
        searcher.suggest(tid)
    searcher.on_trial_complete("a", {"epoch": 1.0, "map50": 0.1}, error=True)
    (a,) = [t for t in searcher.studies[STUDY].get_trials() if t.user_attrs["ray_trial_id"] == "a"]
    assert a.state == TrialState.FAIL and a.constraints == {} and searcher.failed[STUDY] == 0
    assert searcher.suggest("d") is None  # b and c still run; no replacement for a
