"""Space files: every shipped one parses; bad ones are rejected naming file, key, value and rule."""
from __future__ import annotations

from pathlib import Path

import pytest

from search.space import SpaceError, dry_run_text, load_space

SPACES = sorted(Path(__file__).resolve().parents[2].joinpath("spaces").glob("*.yaml"))

BASE = """
arms: {backbone: [resnet18], version: [v1], weights: [none]}
params:
  lr: {type: float, low: 0.001, high: 0.1, log: true}
budget: {max_epochs: 4, grace_period: 1, reduction_factor: 2, trials_per_arm: 2}
"""


def _write(tmp_path, text, name="x.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_shipped_space_parses(path):
    space = load_space(path)
    assert space.arms and space.total_trials() >= len(space.arms)
    assert "arms (" in dry_run_text(space)


def test_shipped_spaces_exist():
    names = {p.name for p in SPACES}
    assert {"demo.yaml", "full.yaml", "pretrained.yaml", "freezing.yaml", "depth.yaml", "versions.yaml"} <= names


def test_arms_are_the_product_minus_impossible_combinations(tmp_path):
    path = _write(tmp_path, BASE.replace(
        "arms: {backbone: [resnet18], version: [v1], weights: [none]}",
        "arms: {backbone: [resnet18, resnet50], version: [v1, v2], weights: [none, coco], trainable_layers: [3, 5]}"))
    s = load_space(path)
    names = {a.name for a in s.arms}
    assert names == {"resnet18-v1-none-t5", "resnet18-v2-none-t5", "resnet50-v1-none-t5", "resnet50-v2-none-t5",
                     "resnet50-v1-coco-t3", "resnet50-v2-coco-t3", "resnet50-v1-coco-t5", "resnet50-v2-coco-t5"}
    text = dry_run_text(s)
    assert "skipped combinations (8):" in text
    assert "COCO weights exist only for backbone resnet50" in text
    assert "freezing means nothing without pretrained weights" in text


@pytest.mark.parametrize("edit,message", [
    (("low: 0.001, high: 0.1", "low: 0.1, high: 0.01"), "x.yaml: params.lr: `low <= high` must hold, got low=0.1 high=0.01"),
    (("budget:", "colour: red\nbudget:"), "x.yaml: unknown key(s) ['colour']"),
    (("lr: {", "learning_rate: {"), "x.yaml: params.learning_rate: is not a training field"),
    (("type: float", "type: uniform"), "x.yaml: params.lr.type: must be one of ['float', 'int', 'categorical'], got 'uniform'"),
    (("log: true", "log: true, step: 0.01"), "x.yaml: params.lr: `step` and `log: true` cannot be used together"),
    (("low: 0.001", "low: 0.0"), "x.yaml: params.lr: `low > 0` must hold when log is true, got low=0.0"),
    (("reduction_factor: 2", "reduction_factor: 1"), "x.yaml: budget.reduction_factor: must be an integer >= 2, got 1"),
    (("grace_period: 1", "grace_period: 9"), "x.yaml: budget.grace_period: `grace_period <= max_epochs` must hold"),
    (("trials_per_arm: 2", "trials_per_arm: 2, stopping: hyperband"),
     "x.yaml: budget.stopping: must be one of ['asha', 'none'], got 'hyperband'"),
    (("trials_per_arm: 2", "trials_per_arm: 2, sampler: cmaes"),
     "x.yaml: budget.sampler: must be one of ['tpe', 'random'], got 'cmaes'"),
    (("weights: [none]", "weights: [none], depth: [3]"), "x.yaml: arms: unknown axis/axes ['depth']"),
    (("budget:", "fixed: {epochs: 3}\nbudget:"), "x.yaml: fixed.epochs: may not be set in a space: set by budget.max_epochs"),
    (("budget:", "fixed: {optimizer: adam}\nbudget:"), "optimizer: must be one of ['sgd', 'adamw'], got 'adam'"),
    (("budget:", "fixed: {metric: map}\nbudget:"), "x.yaml: fixed.metric: may not be set in a space: set by the space's top-level `metric`"),
    (("budget:", "metric: accuracy\nbudget:"), "x.yaml: metric: must be one of ['map50'"),
    (("budget:", "resources: {cpu: 0}\nbudget:"), "x.yaml: resources.cpu: must be a number > 0"),
    (("budget:", "confirm: {top_k: 1, seeds: 2}\nbaseline: {lr: -1}\nbudget:"),
     "x.yaml: baseline.lr: must be a number > 0, got -1.0 (arm resnet18-v1-none-t5)"),
    (("budget:", "confirm: {top_k: 1, seeds: 2}\nbaseline: {lr: 0.01, learning_rate: 2}\nbudget:"),
     "x.yaml: baseline.learning_rate: is not a training field"),
    (("budget:", "confirm: {top_k: 1, seeds: 2}\nbaseline: {momentum: 0.9}\nbudget:"),
     "x.yaml: baseline: must give a value for every searched parameter; missing: ['lr']"),
    (("budget:", "baseline: {lr: 0.01}\nbudget:"), "x.yaml: baseline: needs a `confirm` section"),
    (("budget:", "confirm: {top_k: 1, seeds: 2}\nbaseline: {lr: 0.01, split_seed: 3}\nbudget:"),
     "x.yaml: baseline.split_seed: the baseline runs on the run's split"),
    (("budget:", "confirm: {top_k: 1, seeds: 2}\nbaseline: {lr: 0.01, backbone: resnet50}\nbudget:"),
     "x.yaml: baseline.backbone: is an architecture axis"),
    (("params:\n", "params:\n  split_seed: {type: int, low: 0, high: 3}\n"),
     "x.yaml: params.split_seed: the split is the run's, not a trial's: set it under `fixed`"),
    (("budget:", "fixed: {val_fraction: 0.5, test_fraction: 0.5}\nbudget:"),
     "test_fraction: val_fraction + test_fraction must be < 1"),
    (("budget:", "resources: {cpu: 4, gpu: 2}\nbudget:"),
     "x.yaml: resources.gpu: must be at most 1, got 2: one trial trains on one GPU (there is no data-parallel "
     "training); to use more GPUs, run more trials at once (budget.max_concurrent), or pack several trials"),
    (("budget:", "resources: {cpu: 2}\nfixed: {num_workers: 3}\nbudget:"),
     "x.yaml: fixed.num_workers: must be at most the trial's CPU share (resources.cpu = 2: 2 worker processes; "
     "the default is 1), got 3"),
    (("params:\n", "resources: {cpu: 2}\nparams:\n  num_workers: {type: categorical, choices: [0, 4]}\n"),
     "x.yaml: params.num_workers: must be at most the trial's CPU share"),
    (("trials_per_arm: 2", "trials_per_arm: 2, checkpoint_every: 0"),
     "x.yaml: budget.checkpoint_every: must be an integer >= 1, got 0"),
])
def test_bad_spaces_are_rejected_with_the_rule(tmp_path, edit, message):
    old, new = edit
    assert old in BASE
    with pytest.raises(SpaceError) as e:
        load_space(_write(tmp_path, BASE.replace(old, new, 1)))
    assert message in str(e.value)


def test_conditional_parameters_must_follow_their_condition(tmp_path):
    ok = BASE.replace("params:\n", "params:\n  optimizer: {type: categorical, choices: [sgd, adamw]}\n"
                                   "  momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}\n")
    s = load_space(_write(tmp_path, ok))
    momentum = next(p for p in s.params if p.name == "momentum")
    assert momentum.active({"optimizer": "sgd"}) and not momentum.active({"optimizer": "adamw"})
    bad = BASE.replace("params:\n", "params:\n  momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}\n")
    with pytest.raises(SpaceError, match="params.momentum.when: must name a categorical parameter listed before"):
        load_space(_write(tmp_path, bad))


def test_values_no_trial_could_train_with_fail_at_load(tmp_path):
    # nesterov needs sgd: a space fixing adamw and searching nesterov fails before anything runs.
    bad = BASE.replace("params:\n", "params:\n  nesterov: {type: categorical, choices: [false, true]}\n").replace(
        "budget:", "fixed: {optimizer: adamw}\nbudget:")
    with pytest.raises(SpaceError, match="nesterov: needs optimizer 'sgd'"):
        load_space(_write(tmp_path, bad))


def test_baseline_is_one_configuration_for_every_arm_and_seeds_skip_the_search_s(tmp_path):
    text = BASE.replace("backbone: [resnet18]", "backbone: [resnet18, resnet34]").replace(
        "budget:", "fixed: {split_seed: 7, test_fraction: 0.2}\nconfirm: {top_k: 1, seeds: 3}\n"
                   "baseline: {lr: 0.02, optimizer: sgd}\nbudget:")
    s = load_space(_write(tmp_path, text))
    cfgs = [s.baseline_config(arm, seed=1000) for arm in s.arms]
    assert [c.backbone for c in cfgs] == ["resnet18", "resnet34"]
    assert all(c.lr == 0.02 and c.epochs == 4 and c.split_seed == 7 and c.test_fraction == 0.2 for c in cfgs)
    assert s.eval_stages() == ("confirm", "baseline")
    assert s.eval_seeds(set()) == [1000, 1001, 1002]
    assert s.eval_seeds({0, 1000, 1002}) == [1001, 1003, 1004]
    assert "baseline (shared by every arm)" in dry_run_text(s) and "split: split_seed 7" in dry_run_text(s)


def test_the_space_s_metric_is_every_trial_s_metric(tmp_path):
    """The metric ASHA and Optuna look at is the one each trial picks its best epoch (model.pt) by."""
    s = load_space(_write(tmp_path, BASE.replace("budget:", "metric: iou_per_gt\nbudget:", 1)))
    cfg = s.trial_config(s.arms[0], {"lr": 0.01})
    assert cfg.metric == "iou_per_gt" == s.metric


def test_stopping_none_has_no_rungs_and_the_dry_run_says_so(tmp_path):
    space = load_space(_write(tmp_path, BASE.replace("trials_per_arm: 2", "trials_per_arm: 2, stopping: none, sampler: random")))
    assert (space.stopping, space.sampler, space.asha_rungs()) == ("none", "random", [])
    assert space.trial_epoch_estimate() == (8, 8)
    text = dry_run_text(space)
    assert "no early stopping (budget.stopping: none); proposals: random" in text
    assert "ASHA rungs at epochs [1, 2] (reduction factor 2); proposals: tpe" in dry_run_text(load_space(_write(tmp_path, BASE)))


@pytest.mark.parametrize("resources, expected", [("{cpu: 4, gpu: 1}", 3), ("{cpu: 1}", 0), ("{cpu: 2.5, gpu: 0.5}", 1)])
def test_loader_workers_default_to_the_trial_s_cpu_share_minus_one(tmp_path, resources, expected):
    s = load_space(_write(tmp_path, BASE + f"resources: {resources}\n"))
    assert s.fixed["num_workers"] == expected
    assert s.trial_config(s.arms[0], {"lr": 0.01}).num_workers == expected
    # A space may still fix it, within the share.
    fixed = load_space(_write(tmp_path, BASE + f"resources: {resources}\nfixed: {{num_workers: 0}}\n"))
    assert fixed.trial_config(fixed.arms[0], {"lr": 0.01}).num_workers == 0


def test_checkpoints_every_n_epochs_and_at_every_rung(tmp_path):
    text = BASE.replace("max_epochs: 4, grace_period: 1, reduction_factor: 2",
                        "max_epochs: 20, grace_period: 3, reduction_factor: 2, checkpoint_every: 5")
    assert sorted(load_space(_write(tmp_path, text)).checkpoint_epochs()) == [3, 5, 6, 10, 12, 15, 20]
    no_asha = text.replace("checkpoint_every: 5", "checkpoint_every: 5, stopping: none")
    assert sorted(load_space(_write(tmp_path, no_asha)).checkpoint_epochs()) == [5, 10, 15, 20]
    assert load_space(_write(tmp_path, BASE)).checkpoint_epochs() == {1, 2, 3, 4}  # the default: every epoch
