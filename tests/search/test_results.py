"""Results read back from a run folder: one rule for each derived fact (outcome, best epoch, which
trials count), the same columns in results.csv and trials.json, and damage that hides nothing."""
from __future__ import annotations

import csv
import json
import math

import pytest
from optuna.trial import TrialState
from ray.tune.experiment import Trial

from search import results as R
from search.progress import ArmTable
from search.searcher import ArmSearcher
from search.space import load_space

from searchutil import confirming_searcher, write_experiment_state

ARM = "resnet18-v1-none-t5"


def _trial_dir(stage_dir, tid, lines, arm=ARM, raw_tail=""):
    d = stage_dir / f"{arm}_{tid}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({"arm": arm, "study": arm, "cfg": {"epochs": 4}, "params": {}}))
    (d / "result.json").write_text("".join(json.dumps({"trial_id": tid, **x}) + "\n" for x in lines) + raw_tail)
    return d


def test_ties_keep_the_earliest_epoch(tmp_path):
    """detector.fit keeps the first of tied epochs as model.pt; results.csv names the same epoch."""
    d = _trial_dir(tmp_path / "trials", "a", [{"epoch": 1.0, "map50": 0.2}, {"epoch": 2.0, "map50": 0.5},
                                              {"epoch": 3.0, "map50": 0.5}, {"epoch": 4.0, "map50": 0.4}])
    rec = R.read_trial(d, "map50", 4)
    assert (rec.best, rec.best_epoch, rec.last) == (0.5, 2, 0.4)


def test_a_line_cut_by_a_crash_hides_no_later_epoch(tmp_path):
    """Ray appends to result.json after a resume: epochs after a cut line still count, the line is counted."""
    d = _trial_dir(tmp_path / "trials", "a", [{"epoch": 1.0, "map50": 0.2}],
                   raw_tail='{"trial_id": "a", "epoch": 2.0, "ma\n'
                            + json.dumps({"trial_id": "a", "epoch": 2.0, "map50": 0.3}) + "\n"
                            + json.dumps({"trial_id": "a", "epoch": 3.0, "map50": 0.6}) + "\n")
    rec = R.read_trial(d, "map50", 4)
    assert [h["epoch"] for h in rec.history] == [1.0, 2.0, 3.0]
    assert (rec.epochs, rec.best, rec.best_epoch, rec.unreadable_lines) == (3, 0.6, 3, 1)
    assert R.read_history(d)[-1]["epoch"] == 3.0


def test_trials_missing_from_the_experiment_state_do_not_count(tmp_path):
    stage = tmp_path / "trials"
    _trial_dir(stage, "a", [{"epoch": 1.0, "map50": 0.2}])
    _trial_dir(stage, "lost", [{"epoch": 1.0, "map50": 0.9}])  # started after Ray's last checkpoint
    write_experiment_state(stage, {"a": "TERMINATED"})
    assert [tid for _, tid, _ in R.counted_trials(stage)] == ["a"]
    assert [r.trial_id for r in R.collect(tmp_path, "map50", 4)] == ["a"]


@pytest.mark.parametrize("lines, error, finished, expected", [
    ([{"epoch": 1.0, "map50": 0.1}, {"epoch": 2.0, "map50": 0.2}], False, False, "stopped"),
    ([{"epoch": float(e), "map50": 0.1 * e} for e in (1, 2, 3, 4)], False, True, "finished"),
    ([{"epoch": 1.0, "map50": 0.1}, {"epoch": 1.0, "map50": math.nan, "fail_reason": "NonFiniteLossError: x"}],
     False, False, "failed"),
    ([{"epoch": 1.0, "map50": 0.1}], True, False, "failed"),
])
def test_searcher_progress_table_and_results_agree_on_a_trial_s_outcome(tmp_path, lines, error, finished, expected):
    """The same trial end, seen by the three readers: Optuna's state, the terminal table, results.csv."""
    space_file = tmp_path / "s.yaml"
    space_file.write_text("arms: {backbone: [resnet18]}\nparams: {lr: {type: float, low: 0.001, high: 0.01}}\n"
                          "budget: {max_epochs: 4, trials_per_arm: 1}\n")
    space = load_space(space_file)
    searcher = ArmSearcher(space, tmp_path / "optuna.journal")
    config = searcher.suggest("t")
    last = lines[-1]
    searcher.on_trial_complete("t", last, error=error)
    (stored,) = searcher.studies[ARM].get_trials()

    table = ArmTable("map50", [ARM], max_epochs=4)
    trial = Trial("fake_trainable", config=config, trial_id="t", stub=True)
    trial.run_metadata.last_result = last
    (table.on_trial_error if error else table.on_trial_complete)(0, [], trial)

    d = _trial_dir(tmp_path / "trials", "t", lines)
    write_experiment_state(tmp_path / "trials", {"t": "ERROR" if error else "TERMINATED"})
    rec = R.read_trial(d, "map50", 4, R.ray_statuses(tmp_path / "trials")["t"])

    assert rec.status == table.status["t"] == expected
    # A trial that reported its failure failed for its configuration: PRUNED with its constraint
    # violated, which TPE learns from; one Ray gave up on after errors is FAIL (search.searcher).
    state = {"finished": TrialState.COMPLETE, "stopped": TrialState.PRUNED,
             "failed": TrialState.FAIL if error else TrialState.PRUNED}[expected]
    assert stored.state == state and rec.infeasible == (expected == "failed" and not error)
    assert stored.constraints == ({"failed": 1.0} if rec.infeasible else {})


def test_results_csv_and_trials_json_use_the_same_named_columns(tmp_path):
    _trial_dir(tmp_path / "trials", "a", [{"epoch": 1.0, "map": 0.2}, {"epoch": 2.0, "map": 0.3}])
    records = R.collect(tmp_path, "map", 4)
    R.write_results(tmp_path, records, "map")
    with open(tmp_path / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    (js,) = json.loads((tmp_path / "trials.json").read_text())
    for key in R.TrialRecord.columns("map"):
        assert str(js[key]) == row[key], key
    assert row["status"] == "stopped" and row["epochs_run"] == "2" and row["best_map"] == "0.3"
    assert "best" not in row and "best_map50" not in row


def test_results_csv_has_its_header_with_no_trial(tmp_path):
    R.write_results(tmp_path, [], "map50")
    assert (tmp_path / "results.csv").read_text().startswith("trial_id,arm,study,stage,status,epochs_run,best_map50,")


def _record(tid, arm, seed, best, stage="search", status=R.STATUS_FINISHED, source=""):
    cfg = {"backbone": "resnet18", "version": "v1", "weights": "none", "trainable_layers": 5, "epochs": 4,
           "seed": seed, "lr": 0.01}
    return R.TrialRecord(trial_id=tid, arm=arm, study=arm, stage=stage, metric="map50", status=status, epochs=4,
                         best=best, last=best, best_epoch=4, reason="", unreadable_lines=0, path="", config=cfg,
                         params={"lr": 0.01}, source_trial=source)


def test_confirmation_and_baseline_seeds_never_repeat_a_search_trial_s(tmp_path):
    """The later stages' seeds are fixed before the search runs (an arm's confirmation starts while
    other arms still search), so they avoid every seed a search trial *can* use: a searched `seed`'s
    whole range, or the fixed one."""
    from search.stages import eval_seeds, stage_configs

    body = ("arms: {backbone: [resnet18], version: [v1], weights: [none]}\n"
            "params:\n  lr: {type: float, low: 0.001, high: 0.1, log: true}\nSEED"
            "budget: {max_epochs: 4, grace_period: 1, reduction_factor: 2, trials_per_arm: 3}\n"
            "confirm: {top_k: 2, seeds: 2}\nbaseline: {lr: 0.02}\nFIXED")
    space_file = tmp_path / "s.yaml"
    space_file.write_text(body.replace("SEED", "").replace("FIXED", ""))
    space = load_space(space_file)
    # Search trials that used the seeds a naive rule would give the confirmation (1000, 1001).
    records = [_record("t1", ARM, 0, 0.5), _record("t2", ARM, 0, 0.7), _record("t3", ARM, 0, 0.6)]
    confirm, baseline = stage_configs(space, "confirm", records), stage_configs(space, "baseline", records)
    seeds = {c["cfg"]["seed"] for c in confirm + baseline}
    assert seeds == {1000, 1001}  # the search trials' seed is the default, 0
    assert [(c["source_trial"], c["cfg"]["seed"]) for c in confirm] == [("t2", 1000), ("t2", 1001), ("t3", 1000),
                                                                         ("t3", 1001)]
    assert all(c["cfg"]["lr"] == 0.02 and c["cfg"]["epochs"] == 4 for c in baseline) and len(baseline) == 2
    # A fixed seed that a naive rule would repeat; a searched seed (no baseline: it would need one).
    space_file.write_text(body.replace("SEED", "").replace("FIXED", "fixed: {seed: 1000}\n"))
    assert eval_seeds(load_space(space_file)) == [1001, 1002]
    space_file.write_text(body.replace("SEED", "  seed: {type: int, low: 999, high: 1001}\n").replace("FIXED", "")
                          .replace("baseline: {lr: 0.02}\n", ""))
    assert eval_seeds(load_space(space_file)) == [1002, 1003]


def test_an_arm_s_tuned_configuration_is_chosen_on_validation_only():
    """Confirmed configurations are ordered by their mean validation metric over seeds; the test
    scores (which would order them the other way here) choose nothing."""
    records = [_record("t1", ARM, 0, 0.8), _record("t2", ARM, 0, 0.7)]
    for tid, src, val, test in (("c1", "t1", 0.60, 0.9), ("c2", "t1", 0.62, 0.9), ("c3", "t2", 0.70, 0.1),
                                ("c4", "t2", 0.66, 0.1)):
        r = _record(tid, ARM, 1000, val, stage="confirm", source=src)
        r.test = {"map50": test}
        records.append(r)
    [first, second] = R.confirmed(records, ARM)
    assert first.source.trial_id == "t2" and first.values() == [0.70, 0.66] and first.values(test=True) == [0.1, 0.1]
    assert second.source.trial_id == "t1"


def test_tied_trials_rank_in_the_order_their_study_asked_for_them_not_by_folder_name():
    """Folder names follow Ray's random trial ids: of two trials tied on status and metric, `ranked`
    puts first the one its study asked for first (Optuna's trial number, in params.json), wherever
    its folder sorts; a run from before the number was recorded falls back to the trial id."""
    late, early, better = _record("0aaa", ARM, 0, 0.5), _record("ffff", ARM, 0, 0.5), _record("zzzz", ARM, 0, 0.6)
    late.trial_number, early.trial_number, better.trial_number = 7, 2, 9
    assert [r.trial_id for r in R.ranked([late, early, better], ARM)] == ["zzzz", "ffff", "0aaa"]
    assert [r.trial_id for r in R.ranked([early, late], ARM)] == ["ffff", "0aaa"]
    late.trial_number = early.trial_number = None
    assert [r.trial_id for r in R.ranked([early, late], ARM)] == ["0aaa", "ffff"]


def test_the_searcher_and_results_pick_the_same_of_tied_trials(tmp_path):
    """The searcher picks an arm's confirmation run the moment its search ends, from what it kept of
    the ended trials; results.ranked picks from the trial folders afterwards (search.export, the
    report). Three trials with the same score, asked as c, a, b (folder order: a, b, c): both pick
    c, the first asked."""
    _, run_dir, searcher = confirming_searcher(tmp_path, trials_per_arm=3)
    for tid in ("c", "a", "b"):
        config = searcher.suggest(tid)
        d = run_dir / "trials" / f"{config['arm']}_{tid}"
        d.mkdir()
        (d / "params.json").write_text(json.dumps(config))
        (d / "result.json").write_text("".join(json.dumps({"trial_id": tid, "epoch": float(e), "map50": 0.5}) + "\n"
                                               for e in (1, 2)))
    for tid in ("c", "a", "b"):
        searcher.on_trial_complete(tid, {"epoch": 2, "map50": 0.5})
    confirm = searcher.suggest("confirm-1")
    assert confirm["stage"] == "confirm" and confirm["source_trial"] == "c", confirm
    records = R.collect(run_dir, "map50", 2)
    assert [r.trial_id for r in records] == ["a", "b", "c"]  # folder order
    assert R.ranked(records)[0].trial_id == "c"


@pytest.mark.parametrize("module", ["report", "export", "watch"])
def test_a_folder_without_run_json_is_refused_by_every_command_with_its_name(module, tmp_path, capsys):
    import importlib

    mod = importlib.import_module(f"search.{module}")
    args = [str(tmp_path)] + (["--out", str(tmp_path / "o")] if module == "export" else [])
    assert mod.main(args) == 2
    assert f"{tmp_path}: not a run folder (no run.json)" in capsys.readouterr().err


def test_an_empty_params_json_is_read_from_rays_experiment_state(tmp_path):
    """A driver killed while Ray copied its staging folder over the run folder left empty params.json
    files (seen in tests/search/test_scale.py): the trial still counts, with the config Ray saved."""
    import json

    from search.results import collect, read_params

    stage = tmp_path / "trials"
    config = {"arm": "resnet18-v1-none-t5", "study": "resnet18-v1-none-t5", "cfg": {"seed": 3}, "params": {"lr": 0.01}}
    d = stage / "resnet18-v1-none-t5_abc"
    d.mkdir(parents=True)
    (d / "params.json").write_text("")
    (d / "result.json").write_text(json.dumps({"trial_id": "abc", "epoch": 1.0, "map50": 0.25}) + "\n")
    state = {"trial_data": [[json.dumps({"trial_id": "abc", "status": "TERMINATED", "config": config}), "{}"]]}
    (stage / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    assert read_params(d) == config
    (rec,) = collect(tmp_path, "map50", 4)
    assert rec.trial_id == "abc" and rec.params == {"lr": 0.01} and rec.best == 0.25
    (stage / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    with pytest.raises(ValueError, match="params.json: not readable JSON"):
        read_params(d)


def test_the_progress_table_sorts_arms_by_best_and_sums_up_what_does_not_fit():
    import io

    arms = [f"arm{i}" for i in range(6)]
    table = ArmTable("map50", arms, max_epochs=4, stream=io.StringIO(), max_rows=3)
    for i, arm in enumerate(arms[:5]):
        trial = Trial("fake_trainable", config={"arm": arm}, trial_id=f"t{i}", stub=True)
        table.on_trial_start(0, [], trial)
        table.on_trial_result(0, [], trial, {"epoch": 1.0, "map50": [0.3, 0.9, 0.1, 0.5, 0.7][i]})
        if i < 2:
            trial.run_metadata.last_result = {"epoch": 4.0, "map50": 0.5}
            table.on_trial_complete(0, [], trial)
    lines = table.render(max_rows=3)
    names = [ln.split()[0] for ln in lines[2:5]]
    assert names == ["arm1", "arm4", "4"]  # the two best, then "4 more" for the rest
    assert lines[4].split()[:6] == ["4", "more", "2", "1", "0", "0"] and lines[4].endswith("0.5000")
    assert lines[6].split()[:6] == ["all", "arms", "3", "2", "0", "0"] and lines[6].endswith("0.9000")
    assert [ln.split()[0] for ln in table.render()[2:8]] == ["arm1", "arm4", "arm3", "arm0", "arm2", "arm5"]


def test_the_progress_table_counts_a_re_run_epoch_not_the_report_it_replaces():
    """A trial retried from its epoch-1 checkpoint reports epoch 2 again, lower: the arm's best is
    the re-run history's (search.results.TrialHistory), not the lost epoch's 0.9 (a running max)."""
    import io

    table = ArmTable("map50", [ARM], max_epochs=3, stream=io.StringIO())
    trial = Trial("fake_trainable", config={"arm": ARM}, trial_id="t", stub=True)
    table.on_trial_start(0, [], trial)
    for epoch, v in ((1, 0.3), (2, 0.9), (2, 0.4), (3, 0.6)):
        table.on_trial_result(0, [], trial, {"epoch": float(epoch), "map50": v})
    assert table.best[ARM] == 0.6 and table.render()[2].endswith("0.6000")


def test_a_resumed_run_s_progress_table_counts_the_trials_that_ended_before_the_restart():
    """On --resume Ray restores the table as pickled at the run's start and sends no event for the
    trials that had ended: the table takes them from Ray's restored trials at its first step (seen
    in a 1,000-trial resume: 483 trials had ended before the kill; the resumed table started at 0)."""
    from ray import cloudpickle

    blank = cloudpickle.dumps(ArmTable("map50", [ARM], max_epochs=4))  # as the Tuner pickles it
    trials = []
    for tid, values, status, stage in (("done", [0.5, 0.7, 0.6, 0.65], Trial.TERMINATED, "search"),
                                       ("cut", [0.2, 0.4], Trial.TERMINATED, "search"),
                                       ("crash", [0.3], Trial.ERROR, "search"),
                                       ("conf", [0.8, 0.9, 0.9, 0.9], Trial.TERMINATED, "confirm"),
                                       ("next", [0.1], Trial.PENDING, "search")):
        trial = Trial("fake_trainable", config={"arm": ARM, "stage": stage}, trial_id=tid, stub=True)
        for e, v in enumerate(values, start=1):
            trial.update_last_result({"epoch": float(e), "map50": v, "training_iteration": e})
        trial.set_status(status)
        trials.append(trial)
    table = cloudpickle.loads(blank)
    table.on_step_begin(0, trials)
    table.on_trial_start(0, trials, trials[-1])  # Ray restarts the unfinished one
    table.on_step_begin(1, trials)  # counted once
    lines = table.render()
    assert lines[2].split() == [ARM, "1", "1", "1", "1", "0.7000"]  # running, finished, stopped, failed, best
    assert "confirmation/baseline runs: 0 running, 1 finished, 0 failed" in lines
    assert lines[-1].endswith("s since --resume")

    fresh = cloudpickle.loads(blank)
    fresh.on_step_begin(0, [])
    assert not fresh.render()[-1].endswith("since --resume")


def test_a_resume_gets_back_the_last_report_rays_state_holds_and_result_json_lacks(tmp_path):
    """Ray's state (uploaded) holds trial r RUNNING with its last report at epoch 2, but r's stored
    result.json stops at epoch 1 (the driver died before uploading it), and s has none at all: the
    resume appends each one's last report, once. An ended trial is not run again: u's last report
    (its final epoch, which Ray's new state got and its result.json did not) is appended too; t,
    with no stored result at all, is a lost trial that the resume runs again: left alone."""
    from search import driver
    from search.storage import RunLocation

    loc = RunLocation(str(tmp_path), "run")
    stage = loc.local / "trials"
    last = {"r": {"epoch": 2.0, "map50": 0.3, "trial_id": "r"}, "s": {"epoch": 1.0, "map50": 0.1, "trial_id": "s"},
            "t": {"epoch": 3.0, "map50": 0.5, "trial_id": "t"}, "u": {"epoch": 4.0, "map50": 0.6, "trial_id": "u"}}
    data = [[json.dumps({"trial_id": k, "status": st, "relative_logdir": f"arm_{k}"}),
             json.dumps({"last_result": last[k]})]
            for k, st in (("r", "RUNNING"), ("s", "PENDING"), ("t", "TERMINATED"), ("u", "TERMINATED"))]
    stage.mkdir(parents=True)
    (stage / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": data}))
    for k, epochs in (("r", 1), ("u", 3)):
        (stage / f"arm_{k}").mkdir()
        (stage / f"arm_{k}" / "result.json").write_text("".join(json.dumps({"epoch": float(e), "map50": 0.2}) + "\n"
                                                                for e in range(1, epochs + 1)))
    assert driver.recover_last_results(loc) == 3
    assert driver.recover_last_results(loc) == 0  # nothing twice
    assert [json.loads(x)["epoch"] for x in (stage / "arm_r" / "result.json").read_text().splitlines()] == [1.0, 2.0]
    assert [json.loads(x)["epoch"] for x in (stage / "arm_u" / "result.json").read_text().splitlines()] == [1, 2, 3, 4]
    assert json.loads((stage / "arm_s" / "result.json").read_text()) == last["s"]
    assert not (stage / "arm_t").exists()


def test_trial_history_a_re_run_epoch_replaces_it_and_every_later_one():
    """The one rule for a trial's epochs: a report of epoch e replaces the earlier reports of e and
    later (a retry from epoch 1's checkpoint re-runs 2 and 3: the old 3 belongs to weights that are
    gone, even before the new 3 arrives); a failure report is no epoch; ties go to the earliest."""
    h = R.TrialHistory("map50", [{"epoch": 1.0, "map50": 0.3}, {"epoch": 2.0, "map50": 0.9},
                                 {"epoch": 3.0, "map50": 0.8}, {"epoch": 2.0, "map50": 0.4}])
    assert [r["map50"] for r in h.epochs] == [0.3, 0.4] and (h.best, h.best_epoch) == (0.4, 2)
    h.add({"epoch": 3.0, "map50": 0.4})
    h.add({"epoch": 3.0, "map50": math.nan, "fail_reason": "NonFiniteLossError: nan"})
    assert [r["epoch"] for r in h.epochs] == [1.0, 2.0, 3.0] and (h.best, h.best_epoch) == (0.4, 2)
    assert math.isnan(R.TrialHistory("map50").best) and R.TrialHistory("map50").best_epoch == 0
