"""Kills and resumes of replayed searches (search.curve_trainable: trials that sleep instead of
training) on a real local Ray: a driver killed mid-search after ended trials' checkpoints were
pruned, and one killed while an arm's confirmation runs beside another arm's search. (The full
space at scale: test_scale.py.)"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from search import replay as R
from search.results import collect, rank_key, ranked

from searchutil import (SearchProcess, assert_every_trial_once, checkpoints_in_folder, kill_between_snapshots,
                        live_config, replay_setup, replayed_search, reported_epochs, wait_until)

pytestmark = pytest.mark.slow  # whole searches (of sleeping trials)


def _has_checkpoint(record) -> bool:
    return bool(checkpoints_in_folder(record))


def test_a_replayed_search_killed_mid_way_resumes_with_nothing_lost(tmp_path):
    """The fault test of the issue at a size CI affords (20 trials over 2 arms, killed after 12 have
    started); `--resume` needs no --replay-curves: the run remembers what its trials replay. Epochs of
    1-2 s leave quiet moments between Ray's folder copies to kill in (see
    searchutil.kill_between_snapshots: a kill inside a copy, which 0.2-0.4 s epochs made likely,
    truncated trial files)."""
    space, curves = replay_setup(tmp_path, trials_per_arm=10)
    # Ended trials' checkpoints are deleted every 2 s (search.checkpoints), so the kill comes after some
    # were: a resume must not need any of them.
    env = {**os.environ, "SEARCH_PRUNE_EVERY_S": "2"}
    with replayed_search(tmp_path, space, curves, time_scale=0.05, env=env) as search:
        trials = tmp_path / "runs" / "r" / "trials"
        wait_until(lambda: len(list(trials.glob("resnet18-*/result.json"))) >= 12, 300, "twelve trials started",
                   search.proc)
        wait_until(lambda: any(not list(f.parent.glob("checkpoint_*")) for f in trials.glob("resnet18-*/result.json")),
                   300, "an ended trial's checkpoints deleted", search.proc)
        kill_between_snapshots(search, tmp_path / "runs" / "r" / "trials")
        killed_at = time.time()
    with SearchProcess("--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "r", "--num-cpus", "4",
                       "--resume", log_dir=tmp_path, env=env) as resumed:
        assert resumed.wait(900) == 0, resumed.output
    run = tmp_path / "runs" / "r"
    assert_every_trial_once(run, n_trials=20, max_epochs=6, repeats=True)
    records = collect(run, "map50", 6)
    assert sum(r.stage == "confirm" for r in records) == 4
    # Each arm's best keeps its checkpoints, and so does every confirmation run. Of the other search
    # trials, those the resumed driver saw end (they reported after the kill) hold none; those that
    # ended before the kill may keep theirs (the resumed driver prunes only trials it saw end).
    for arm in {r.arm for r in records}:
        order = ranked(records, arm)
        assert _has_checkpoint(order[0])
        best = rank_key(order[0].status, order[0].best)
        seen_end = [r for r in order if r.history[-1]["reported_at"] > killed_at and rank_key(r.status, r.best) != best]
        assert seen_end and not any(_has_checkpoint(r) for r in seen_end), [checkpoints_in_folder(r) for r in seen_end]
    assert all(_has_checkpoint(r) for r in records if r.stage == "confirm")


def _slow_down(curves: Path, arm_index: int, factor: float) -> None:
    """Make one arm's recorded epochs `factor` times longer (bench/synthetic.py names
    its trials aNN-III by arm)."""
    doc = json.loads((curves / R.CURVES).read_text())
    for t in doc["trials"]:
        if t["trial_id"].startswith(f"a{arm_index:02d}-"):
            t["costs"] = [c * factor for c in t["costs"]]
    (curves / R.CURVES).write_text(json.dumps(doc))


def _stage_of(trial_dir: Path) -> tuple[str, str] | None:
    config = live_config(trial_dir)
    return None if config is None else (config["arm"], config.get("stage", "search"))


def test_an_arm_s_confirmation_runs_while_another_arm_searches_and_resumes_exactly(tmp_path):
    """search.stages: an arm's confirmation runs join the queue as soon as its search has ended.
    Arm v2's epochs take 3x longer and no trial is stopped early (the searcher issues the arms' trials
    in turn, so v2's last trials start about when v1's do and run three times as long): v1's
    confirmation starts while v2 still searches; the driver is killed then (both stages under way)
    and --resume finishes the run: every search trial once, and each arm's confirmation exactly
    once per seed, retraining its best (`results.ranked`)."""
    space, curves = replay_setup(tmp_path, trials_per_arm=4, stopping="none")
    _slow_down(curves, arm_index=1, factor=3.0)
    run = tmp_path / "runs" / "r"
    fast, slow = "resnet18-v1-none-t5", "resnet18-v2-none-t5"

    def confirming(arm: str) -> bool:
        return any(_stage_of(f.parent) == (arm, "confirm") for f in (run / "trials").glob("*/result.json")
                   if f.stat().st_size)

    with replayed_search(tmp_path, space, curves, time_scale=0.05) as search:
        wait_until(lambda: confirming(fast), 300, f"a confirmation run of {fast} reported", search.proc)
        kill_between_snapshots(search, run / "trials")
        killed_at = time.time()
    assert not confirming(slow)
    with SearchProcess("--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "r", "--num-cpus", "4",
                       "--resume", log_dir=tmp_path) as resumed:
        assert resumed.wait(600) == 0, resumed.output
    assert_every_trial_once(run, n_trials=8, max_epochs=6, repeats=True)
    records = collect(run, "map50", 6)
    # v2 was still searching at the kill: its search went on after the resume.
    assert max(h["reported_at"] for r in records if r.arm == slow and r.stage == "search" for h in r.history) > killed_at
    for arm in (fast, slow):
        runs = [r for r in records if r.arm == arm and r.stage == "confirm"]
        assert sorted(int(r.config["seed"]) for r in runs) == [1000, 1001], [r.trial_id for r in runs]
        assert {r.source_trial for r in runs} == {ranked(records, arm)[0].trial_id}
        assert all(r.status == "finished" and r.epochs == 6 for r in runs)
        # The pruner never empties a confirmation run (search.checkpoints): the detection figures' model.
        assert all(checkpoints_in_folder(r) == ["checkpoint_000005"] for r in runs), [checkpoints_in_folder(r) for r in runs]
        assert _has_checkpoint(ranked(records, arm)[0])



# (Ray's n-th upload of its staging folder by this driver, the share of its files copied before the kill)
KILLS_IN_COPY = ((10, 0.5), (8, 0.3), (12, 0.8), (4, 0.0))


def test_a_driver_killed_inside_rays_copy_into_the_run_folder_resumes_each_time_with_nothing_lost(tmp_path):
    """Ray copies its staging folder into the run folder at every experiment snapshot; a kill inside
    that copy used to leave cut files no resume could read (issue 26, item 5). The driver is killed
    four times, each time inside a copy, with a file half copied (tests/search/kill_in_copy.py: half
    way through the first driver's 10th upload, 30% through the next one's 8th, 80% through the
    third's 12th and at the first file of the fourth's 4th: with a snapshot a second, after 6, 11,
    28 and 28 stored epochs in one run here; the files go in name order, the experiment state
    first and the searcher's state near the end, so each kill leaves another mixture of new and old
    files), and resumed after
    each: the run ends with every trial once, its epochs continuous, its studies agreeing with Ray's
    trials, every arm's confirmation once per seed, and no half-copied file left. (Before whole-file
    uploads, the last of these kills, made inside Ray's in-place copy of the experiment state, left
    a run that --resume refused: "experiment_state-... is truncated or corrupt".)"""
    space, curves = replay_setup(tmp_path, trials_per_arm=6)
    run = tmp_path / "runs" / "r"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}  # a snapshot every second: several copies per driver
    launcher = str(Path(__file__).parent / "kill_in_copy.py")
    killed = []
    for i, (sync, files) in enumerate(KILLS_IN_COPY):
        args = ["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "r", "--num-cpus", "4"]
        args += ["--resume"] if i else ["--replay-curves", str(curves), "--time-scale", "0.05"]
        with SearchProcess(*args, log_dir=tmp_path, env=env, launcher=(launcher, str(sync), str(files))) as search:
            rc = search.wait(300)
        marker = tmp_path / "runs" / "killed-in-copy.json"
        assert rc == -9 and marker.exists(), f"driver {i} was not killed inside a copy (exit {rc}):\n{search.output[-2000:]}"
        killed.append({**json.loads(marker.read_text()), "epochs": sum(map(len, reported_epochs(run / "trials").values()))})
        marker.unlink()
    assert all(k["copied"] < k["of"] for k in killed), killed  # each inside its copy, not after it
    with SearchProcess("--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "r", "--num-cpus", "4",
                       "--resume", log_dir=tmp_path, env=env) as resumed:
        assert resumed.wait(600) == 0, resumed.output[-3000:]
    assert_every_trial_once(run, n_trials=12, max_epochs=6, repeats=True)
    records = collect(run, "map50", 6)
    for arm in {r.arm for r in records}:
        runs = [r for r in records if r.arm == arm and r.stage == "confirm"]
        assert sorted(int(r.config["seed"]) for r in runs) == [1000, 1001], [r.trial_id for r in runs]
        assert {r.source_trial for r in runs} == {ranked(records, arm)[0].trial_id}
    assert not list(run.rglob(".partial-*"))  # no half-copied file left where a reader would look
