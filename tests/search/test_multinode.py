"""The search on a multi-node Ray cluster, simulated on this machine: nodes that die, a driver that
dies, and an autoscaler that starts GPU nodes taken from cluster.yaml.

`ray.cluster_utils.Cluster` runs a head and worker nodes as separate raylets on this machine; the
search runs as its own process (`python -m search.run --address ...`), as it does on a real cluster.
The run folder is a local folder, which every simulated node shares (`--shared-storage`). The
trials replay synthetic curves (`--replay-curves`) instead of training: nodes, retries and resumes
are Ray's and the search's business, and a replayed trial checkpoints and restores every epoch.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psutil
import pytest
import ray
import yaml
from ray.cluster_utils import AutoscalingCluster, Cluster

from searchutil import (ROOT, SearchProcess, assert_every_trial_once, kill_between_snapshots, replay_flags,
                        reported_epochs, result_rows, wait_until, write_space)


# Whole searches. A simulated cluster is what ray.init's default would join (cluster_utils writes
# its address where `ray start` does); a search without --address starts its own Ray instead
# (search.driver._init_ray, tested below), so these run beside the rest of the suite, except the
# autoscaler's (marked `alone`).
pytestmark = pytest.mark.slow

@pytest.fixture
def cluster():
    """A head with no CPU for trials (as in cluster.yaml) and two 1-CPU worker nodes."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    try:
        yield c, workers
    finally:
        c.shutdown()


def _start_search(space: Path, address: str, *extra: str, time_scale: float = 0.05) -> SearchProcess:
    """search.run on the cluster, its trials replaying curves recorded for the space (search.curve_trainable:
    epochs of 1-2 s at the default time scale, a checkpoint each); a resumed run replays the same ones."""
    return SearchProcess("--space", str(space), "--storage", str(space.parent / "runs"), "--name", "c",
                         "--address", address, "--shared-storage", *extra, *replay_flags(space, extra, time_scale),
                         log_dir=space.parent)


def _node_of(pid: int, nodes) -> object:
    """The simulated node whose raylet started worker process `pid`."""
    ancestors = {p.pid for p in psutil.Process(pid).parents()}
    (node,) = [n for n in nodes if n.all_processes["raylet"][0].process.pid in ancestors]
    return node


def test_a_search_without_address_starts_its_own_ray_beside_a_running_cluster(cluster, monkeypatch):
    """search.driver._init_ray without --address, while a cluster runs on this machine (whose
    address ray.init's default would find and join): a local Ray of --num-cpus of its own; with
    RAY_ADDRESS set (Ray's job submission sets it), the cluster it names."""
    from search.driver import _init_ray

    c, _ = cluster
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _init_ray(None, 1)
    try:
        assert ray.get_runtime_context().gcs_address != c.address
        assert ray.cluster_resources().get("CPU") == 1  # not the cluster's 2
    finally:
        ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", c.address)
    _init_ray(None, None)
    try:
        assert ray.get_runtime_context().gcs_address == c.address and ray.cluster_resources().get("CPU") == 2
    finally:
        ray.shutdown()


def test_trials_of_a_removed_node_continue_from_their_checkpoint_elsewhere(cluster, tiny_data, tmp_path):
    c, workers = cluster
    space = write_space(tmp_path, tiny_data, """
arms: {backbone: [resnet18]}
params:
  lr: {type: float, low: 0.005, high: 0.01}
budget: {max_epochs: 10, grace_period: 10, reduction_factor: 2, trials_per_arm: 2, max_concurrent: 2}
resources: {cpu: 1}
""")
    # 10 epochs: the run folder shows a trial's results only at Ray's next snapshot, and with 4 epochs
    # of the tiny data (about 2 s each) CI once saw the chosen trial's 4th epoch before the node was removed.
    trials = tmp_path / "runs" / "c" / "trials"
    # Replayed epochs of 2-4 s: a busy machine once saw both trials end before their first epochs
    # reached the run folder at 1-2 s.
    with _start_search(space, c.address, time_scale=0.1) as search:
        wait_until(lambda: len([e for e in reported_epochs(trials).values() if e]) == 2, 240,
                   "both trials reported an epoch", search.proc)
        last = {p.parent.name: json.loads(p.read_text().splitlines()[-1]) for p in trials.glob("*/result.json")}
        (victim,) = [name for name, r in last.items() if _node_of(r["pid"], workers) is workers[0]]
        epochs_at_removal = reported_epochs(trials)[victim]
        c.remove_node(workers[0])  # SIGTERM to its raylet and workers, as when a spot instance is reclaimed
        c.add_node(num_cpus=1)     # the autoscaler's replacement
        assert search.wait(300) == 0, search.output

    assert epochs_at_removal and epochs_at_removal[-1] < 10  # it was mid-trial
    assert "node has died" in (trials / victim / "error.txt").read_text()
    rows = assert_every_trial_once(tmp_path / "runs" / "c", n_trials=2, max_epochs=10)
    assert all(r["status"] == "finished" for r in rows)
    # The epochs went on from the checkpoint: the victim reported each epoch exactly once.
    assert reported_epochs(trials)[victim] == list(range(1, 11))


def test_driver_killed_on_a_cluster_then_resumed(cluster, tiny_data, tmp_path):
    """The driver dies (the head's shell is closed, say) while the cluster lives on; `--resume` with
    the same `--address` finishes the search with every trial once and ASHA's rungs rebuilt."""
    c, _ = cluster
    space = write_space(tmp_path, tiny_data, """
arms: {backbone: [resnet18], version: [v1, v2]}
params:
  lr: {type: float, low: 0.002, high: 0.03, log: true}
budget: {max_epochs: 3, grace_period: 1, reduction_factor: 2, trials_per_arm: 3, max_concurrent: 2}
resources: {cpu: 1}
""")
    trials = tmp_path / "runs" / "c" / "trials"
    with _start_search(space, c.address) as search:
        wait_until(lambda: sum(map(len, reported_epochs(trials).values())) >= 3, 240, "3 epochs were reported",
                   search.proc)
        kill_between_snapshots(search, trials)  # SIGKILL: the driver only; the cluster's processes are not in its group
    assert not (tmp_path / "runs" / "c" / "results.csv").exists()

    with _start_search(space, c.address, "--resume") as resumed:
        assert resumed.wait(400) == 0, resumed.output
    rows = assert_every_trial_once(tmp_path / "runs" / "c", n_trials=6, max_epochs=3, repeats=True)
    assert {r["arm"] for r in rows} == {"resnet18-v1-none-t5", "resnet18-v2-none-t5"}
    assert any(r["status"].startswith("stopped") for r in rows)  # ASHA still stops trials after the resume


def _autoscaling_config(cluster_yaml: Path) -> tuple[dict, dict]:
    """Head resources and worker node types from cluster.yaml, shrunk to fit this machine: the GPU
    counts and the node type names are kept; CPUs are capped at 2 (Ray starts a worker process per
    CPU on a fake node) and each type at 2 nodes."""
    cfg = yaml.safe_load(cluster_yaml.read_text())
    types = cfg["available_node_types"]
    head = dict(types[cfg["head_node_type"]]["resources"])
    workers = {}
    for name, t in types.items():
        if name == cfg["head_node_type"]:
            continue
        res = dict(t["resources"])
        workers[name] = {"resources": {**res, "CPU": min(res.get("CPU", 1), 2), "object_store_memory": 200 * 2 ** 20},
                         "node_config": {}, "min_workers": 0, "max_workers": min(t["max_workers"], 2)}
    return head, workers


class _Autoscaling(AutoscalingCluster):
    """Ray's fake-provider autoscaling cluster with the config written here: Ray's wheel lacks the
    `fake_multi_node/example.yaml` that `AutoscalingCluster` reads (these are its fields)."""

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        config = {
            "cluster_name": "fake_multinode", "max_workers": 4, "head_node_type": "ray.head.default",
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "available_node_types": {**worker_node_types, "ray.head.default": {
                "resources": head_resources, "node_config": {}, "max_workers": 0}},
            "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1, "docker": {}, "file_mounts": {},
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
            "rsync_filter": []}
        config.update(config_kwargs)
        return config


@pytest.mark.alone
def test_the_autoscaler_starts_gpu_nodes_for_the_trials(tiny_data, tmp_path, monkeypatch):
    """No node can run a trial at the start (the head has no CPU, as in cluster.yaml); the trials ask
    for a GPU, the autoscaler starts cluster.yaml's GPU node types (GPUs simulated: the trials replay
    curves) and the search finishes.

    Note: AutoscalingCluster runs `ray stop --force` when it starts and when it stops, which stops
    every Ray on this machine, and with it any driver of another test (its xdist worker dies with
    it, seen): `make test` runs this test after all others."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # its `ray` CLI
    head, workers = _autoscaling_config(ROOT / "cluster.yaml")
    assert head == {"CPU": 0} and all(w["resources"].get("GPU", 0) >= 1 for w in workers.values())
    asc = _Autoscaling(head_resources=head, worker_node_types=workers, idle_timeout_minutes=1)  # kept to look
    asc.start()
    try:
        space = write_space(tmp_path, tiny_data, """
arms: {backbone: [resnet18]}
params:
  lr: {type: float, low: 0.005, high: 0.01}
budget: {max_epochs: 1, grace_period: 1, reduction_factor: 2, trials_per_arm: 2, max_concurrent: 2}
resources: {cpu: 1, gpu: 1}
""")
        with _start_search(space, "auto", time_scale=0.01) as search:
            assert search.wait(300) == 0, search.output
        rows = result_rows(tmp_path / "runs" / "c")
        assert len(rows) == 2 and all(r["status"] == "finished" for r in rows)
        ray.init(address="auto", logging_level="ERROR")
        started = [n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]
        gpus_per_type = {w["resources"]["GPU"] for w in workers.values()}
        assert started and all(n["Resources"].get("GPU") in gpus_per_type for n in started), started
    finally:
        ray.shutdown()
        asc.shutdown()
