"""The runs after an arm's search: its confirmation and baseline runs, as whole trial configs.

- confirm: the arm's top `confirm.top_k` configurations (`results.ranked`) retrained for the full
  budget with every confirmation seed;
- baseline: the space's `baseline` values on the arm (the study's way: one set for all arms),
  trained for the full budget with the same seeds, so the two stages are paired by seed.

The seeds (`eval_seeds`) are never a seed a search trial can use, and are known before any search
trial has run: an arm's runs start as soon as that arm's search has ended, while other arms still
search (search.searcher issues them in the search's own queue).
"""
from __future__ import annotations

from detector import config as C
from search.space import Arm, Space


def search_seeds(space: Space) -> set[int]:
    """Every seed a search trial of the space can train with: its `fixed` seed (or the default), or
    every value of a searched `seed`."""
    searched = next((p for p in space.params if p.name == "seed"), None)
    if searched is None:
        return {int(space.fixed.get("seed", C.TrainConfig.seed))}
    if searched.type == "categorical":
        return {int(c) for c in searched.choices}
    return set(range(int(searched.low), int(searched.high) + 1, int(searched.step or 1)))


def eval_seeds(space: Space) -> list[int]:
    """The seeds of every confirmation and baseline run (`Space.eval_seeds`)."""
    return space.eval_seeds(search_seeds(space))


def arm_stage_configs(space: Space, arm: Arm, stage: str, ranked_trials, seeds: list[int]) -> list[dict]:
    """The runs of `stage` for `arm`. `ranked_trials`: the arm's search trials in `results.ranked`'s
    order, each with `trial_id`, `config` (its whole TrainConfig as a dict) and `params`."""
    configs = []
    if stage == "confirm":
        for rank, r in enumerate(ranked_trials[:space.confirm_top_k]):
            for s in seeds:
                cfg = C.from_dict({**r.config, "seed": s, "epochs": space.max_epochs})
                configs.append({"arm": arm.name, "study": arm.name, "stage": stage, "source_trial": r.trial_id,
                                "rank": rank, "cfg": C.to_dict(cfg), "params": r.params})
    elif stage == "baseline":
        for s in seeds:
            configs.append({"arm": arm.name, "study": arm.name, "stage": stage, "source_trial": "", "rank": 0,
                            "cfg": C.to_dict(space.baseline_config(arm, s)),
                            "params": {p.name: space.baseline[p.name] for p in space.params}})
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return configs


def stage_configs(space: Space, stage: str, records) -> list[dict]:
    """Every arm's runs of `stage`, from a finished search's records (search.results.collect)."""
    from search.results import ranked

    seeds = eval_seeds(space)
    return [c for arm in space.arms for c in arm_stage_configs(space, arm, stage, ranked(records, arm.name), seeds)]


def run_key(config: dict) -> str:
    """What identifies one later-stage run, so that it is issued once across resumes."""
    return f"{config['stage']}:{config['arm']}:{config['source_trial']}:{config['cfg']['seed']}"


def is_later_stage(config: dict) -> bool:
    """Whether a trial config is a confirmation or baseline run (not a search trial)."""
    return config.get("stage", "search") != "search"


def scores_test(config: dict, data: tuple) -> bool:
    """Whether a trial is scored on the test images: only the runs after the search (confirmation,
    baseline) are, and only where the run has test images. A search trial never resolves their
    reference: the images that choose a configuration never include them."""
    return is_later_stage(config) and len(data) > 2 and data[2] is not None
