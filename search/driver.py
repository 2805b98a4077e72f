"""The driver of a search: Ray, one Tuner over every arm, and the steps after it.

search/run.py is the command line: it parses the arguments, refuses what cannot run (bad space or
data, a run folder that exists or cannot be resumed), writes run.json and calls `drive`. Here:
Ray is started (or joined), the data goes into its object store once, and `run_search` builds the
Tuner from the project's parts: the trainable (search/trainable.py, or search/curve_trainable.py
when replaying), the per-arm searcher (search/searcher.py, Optuna), the per-arm ASHA
(search/scheduler.py), the progress table, the checkpoint pruner and the trackers. After the
search: the studies are reconciled with Ray's trials, each arm's best model is timed
(search/latency.py) and drawn (search/detections.py), and results.csv / trials.json are written
(search/results.py), also when the search failed.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from search import compat
from search.space import Space
from search.storage import JOURNAL, RunLocation, resuming_in

log = logging.getLogger("search")


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at `address` ('auto': the running one), or start a local Ray of `num_cpus`.

    Without `address` the Ray is this search's own even where a cluster runs on the same machine
    (`ray start`, or another tool's): `ray.init`'s own default would join the newest one it finds
    there and then refuse `num_cpus`. Only RAY_ADDRESS, which Ray's job submission sets for its
    entry point, still decides where a search without --address runs."""
    import ray

    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(address=None if os.environ.get("RAY_ADDRESS") else "local", num_cpus=num_cpus,
                 include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)


def _trainable(space: Space, data, replay: dict | None = None):
    """The trial function with the data's object-store reference and the space's resources; with
    `replay` ({"curves_dir", "time_scale"}: --replay-curves), the curve-replaying one."""
    from ray import tune

    if replay:
        from search.curve_trainable import replay_trial

        fn = tune.with_parameters(replay_trial, data=data, **replay)
    else:
        from search.trainable import train_trial

        fn = tune.with_parameters(train_trial, data=data, checkpoint_epochs=space.checkpoint_epochs(),
                                  gpu_share=space.gpu)
    return tune.with_resources(fn, {"cpu": space.cpu, "gpu": space.gpu})


def _tracker_callbacks(trackers, loc: RunLocation) -> list:
    """Ray's result logger and the --log trackers' callbacks (search/trackers.py), for a run named
    after its folder.

    Of the loggers Ray adds by default (JSON, CSV, TensorBoard) only the JSON one is read here
    (every trial's result.json); the other two cost the driver a file write per result for each
    trial (the TensorBoard one, a flush: the largest share of Ray's result handling in bench/scale.py's
    profile) and Ray copies their files with every experiment checkpoint. So search.run turns Ray's
    defaults off (`compat.quiet_ray_loggers`) and adds the JSON
    logger itself; `--log tensorboard` brings the TensorBoard one back."""
    from search import trackers as T

    return [T.ResultLogger(), *T.callbacks(trackers or [], loc.local.name)]


def run_search(space: Space, loc: RunLocation, data, resume: bool, stream=None, trackers=None,
               replay: dict | None = None) -> None:
    """The search and the runs after it: one Tuner over every arm. Each arm's confirmation and
    baseline runs (search.stages) join the same queue as soon as that arm's search has ended
    (search.searcher), so no slot waits for the slowest arm. On --resume Ray restores the run's own
    callbacks (the progress table, the trackers it was started with)."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from search.checkpoints import PruneEndedCheckpoints, checkpoint_config
    from search.progress import ArmTable
    from search.scheduler import PerArmASHA
    from search.searcher import ArmSearcher

    compat.lean_checkpoint_records()
    compat.atomic_local_uploads()  # a kill inside Ray's copy into the run folder leaves whole files
    trainable = _trainable(space, data, replay)
    table = ArmTable(space.metric, [a.name for a in space.arms], space.max_epochs, stream=stream)
    run_dir = loc.local
    if resume:
        compat.remove_partial_uploads(run_dir / "trials")
        recover_last_results(loc)
        with resuming_in(run_dir):
            tuner = tune.Tuner.restore(f"{loc.ray_storage}/trials", trainable, resume_unfinished=True,
                                       resume_errored=True)
    else:
        # With object storage the searcher copies the journal into every experiment checkpoint,
        # which Ray uploads: the studies are never behind Ray's trials in the bucket.
        searcher = ArmSearcher(space, run_dir / JOURNAL, snapshot_journal=loc.uri is not None,
                               stages=space.eval_stages(), max_concurrent=space.max_concurrent)
        # budget.stopping: none records full learning curves (the input of search.replay).
        scheduler = PerArmASHA(space, run_dir) if space.stopping == "asha" else FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        # No count: the searcher ends the run when every stage is done
                                        # (ArmSearcher.FINISHED). A count would include the trials a
                                        # killed driver lost before their results were stored, which
                                        # the searcher runs again on resume (seen in test_storage:
                                        # Ray stopped asking with an arm a trial short).
                                        num_samples=-1,
                                        # (budget.max_concurrent: the searcher's, not Ray's ConcurrencyLimiter)
                                        # A new trial reuses a finished trial's worker process (torch and
                                        # the dataset already loaded) instead of starting one.
                                        reuse_actors=True,
                                        trial_dirname_creator=lambda t: f"{t.config['arm']}_{t.trial_id}"),
            run_config=tune.RunConfig(
                name="trials", storage_path=loc.ray_storage, verbose=0,
                callbacks=[table, PruneEndedCheckpoints(space.metric, space.max_epochs),
                           *_tracker_callbacks(trackers, loc)],
                checkpoint_config=checkpoint_config(),  # search.checkpoints prunes
                failure_config=tune.FailureConfig(max_failures=2)),
        )
    tuner.fit()


def recover_last_results(loc: RunLocation) -> int:
    """Before a resume: the last report Ray's state holds of each trial, appended to the trial's
    result.json in the run's storage where that file lacks its epoch. Ray uploads its state, the
    trials' checkpoints (from the workers) and the driver's result.json files separately; a driver
    killed between them can leave a trial whose checkpoint and state are newer than its stored
    results (seen in test_storage's resume: a trial resumed from its epoch-1 checkpoint had no
    result.json in the bucket, and its history started at epoch 2). Ray's restored trial copies that
    file and appends to it. A trial Ray's state holds as ended is not run again, so its last report
    is recovered the same way (seen in test_replayed_kills' kills inside a copy: the new state went
    in, the trial's result.json did not, and the trial ended an epoch short in results.csv while
    Optuna held that epoch), if its file holds results at all: one with none is a lost trial, run
    again (search.results.counted_trials). Returns how many lines were appended. (An earlier missing
    epoch, when more than one report was lost, cannot be recovered: Ray's state keeps the last one
    only.)"""
    from search.storage import append_missing_result

    n = 0
    for status, folder, last in compat.last_results(loc.local / "trials").values():
        if "epoch" in last:
            rel, ended = f"trials/{folder}", status == "TERMINATED"
            n += append_missing_result(loc.ray_storage, rel, last, only_after_results=ended)
            if loc.uri is not None:  # the working copy too (read before the run's end pulls it again)
                append_missing_result(str(loc.local), rel, last, only_after_results=ended)
    if n:
        log.info("resume: %d trial(s) got their last report from Ray's state back into result.json", n)
    return n


def drive(args, space: Space, loc: RunLocation, splits, replay: dict | None) -> tuple[list, float]:
    """Everything that needs Ray, for a run whose folder and run.json search.run has written: start
    Ray, put the data in its object store, run the search and its later stages (`run_search`), then
    reconcile the studies, time each arm's best model and draw its detections, and write results.csv
    and trials.json whatever happened. Returns (the run's records, seconds since Ray started)."""
    import ray

    from search import detections, latency
    from search.results import collect, write_results
    from search.searcher import reconcile_studies
    from search.trainable import ray_tag, remove_orphaned_work_dirs

    run_dir = loc.local
    _init_ray(args.address, args.num_cpus)
    mine = ray_tag()
    t0 = time.time()
    failed = True
    try:
        # The decoded data goes into Ray's object store once, for every stage, and the trials read
        # that copy (search.trainable.resolve). (This process's own copy lives on in search.run's
        # frames until the command ends: a second copy on the head node.) Search trials never
        # resolve the test images' (search.stages.scores_test).
        refs = tuple(None if d is None else ray.put(d) for d in splits)  # (no test images: None)
        run_search(space, loc, refs, args.resume, trackers=args.trackers, replay=replay)
        loc.pull()
        records = collect(run_dir, space.metric, space.max_epochs)
        fixed = reconcile_studies(space, run_dir / JOURNAL, records)
        if any(fixed.values()):
            log.warning("studies brought in line with the trials' stored results: %s", fixed)
        if replay is None:  # replayed trials leave no model to time or to draw detections with
            t1 = time.time()
            latency.measure(space, loc, refs, records)
            t2 = time.time()
            detections.draw(space, loc, refs, records)
            log.info("after the search: latency measured in %.1f s, detections drawn in %.1f s",
                     t2 - t1, time.time() - t2)
        failed = False
    finally:
        # Ray first: whatever happens below, no Ray is left running behind this command.
        ray.shutdown()
        remove_orphaned_work_dirs(wait_s=10, wait_for=mine)  # of trials Ray's shutdown cut short
        try:
            if failed:  # otherwise `records` were collected after the last trial ended (2 s at 1,000 trials)
                loc.pull()
                records = collect(run_dir, space.metric, space.max_epochs)
            write_results(run_dir, records, space.metric)
            loc.push()
        except Exception as e:
            if not failed:
                raise
            # The search's own error is the one to see; this one is only reported beside it.
            log.exception("could not save the results after the search failed")
            print(f"error: could not save the results after the search failed: {type(e).__name__}: {e} "
                  f"(the search's own error follows)", file=sys.stderr)
    return records, time.time() - t0


def summary_text(records, space: Space, elapsed: float, run_dir: Path) -> str:
    from search.results import ranked

    lines = [f"search finished in {elapsed:.0f} s; results in {run_dir / 'results.csv'}"]
    for arm in space.arms:
        mine = [r for r in records if r.arm == arm.name and r.stage == "search"]
        order = ranked(records, arm.name)
        best = order[0].best if order else float("nan")
        n = {s: sum(r.status == s for r in mine) for s in ("finished", "stopped", "failed")}
        lines.append(f"  {arm.name}: best {space.metric} {best:.4f}  ({n['finished']} finished, "
                     f"{n['stopped']} stopped, {n['failed']} failed)")
    lines.append(f"export the best configurations: python -m search.export {run_dir} --out {run_dir / 'export'}")
    return "\n".join(lines)
