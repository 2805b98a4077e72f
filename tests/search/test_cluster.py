"""cluster.yaml: Ray's own validation, and the project's lint against exposing the cluster."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.cluster_lint import lint

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load(CLUSTER.read_text()))
    validate_config(cfg)  # raises on a schema error
    assert cfg["head_node_type"] == "head" and cfg["available_node_types"]["head"]["resources"] == {"CPU": 0}
    gpu_types = {k: v for k, v in cfg["available_node_types"].items() if v["resources"].get("GPU")}
    assert gpu_types and all(v["max_workers"] >= 1 for v in gpu_types.values())
    assert cfg["idle_timeout_minutes"] > 0


def test_shipped_cluster_yaml_is_clean():
    assert lint(CLUSTER) == []


@pytest.mark.parametrize("old,new,message", [
    ("      - FromPort: 22\n        ToPort: 22", "      - FromPort: 8265\n        ToPort: 8265",
     "ports 8265-8265 open to ['0.0.0.0/0']"),
    ("export RAY_AUTH_MODE=token; ulimit -n 65536; ~/smallobj-search/.venv/bin/ray start --head",
     "ulimit -n 65536; ~/smallobj-search/.venv/bin/ray start --head", "starts Ray without RAY_AUTH_MODE=token"),
    ("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0", "serves the dashboard on every interface"),
    ('  "~/.ray/auth_token": "~/.ray/auth_token"     # the token, from your machine; never committed\n', "",
     "file_mounts: must ship the token file"),
    ("cluster_name: smallobj-search", "cluster_name: smallobj-search\n# aws_access_key_id: AKIAABCDEFGHIJKLMNOP",
     "looks like an AWS access key id"),
    ("cluster_name: smallobj-search", "cluster_name: smallobj-search\n# password: hunter2hunter2hunter2",
     "looks like a credential assigned in the file"),
])
def test_lint_fails_on_exposure(tmp_path, old, new, message):
    text = CLUSTER.read_text()
    assert old in text
    bad = tmp_path / "c.yaml"
    bad.write_text(text.replace(old, new, 1))
    problems = lint(bad)
    assert any(message in p for p in problems), problems


def test_a_local_run_folder_on_a_cluster_is_refused_before_anything_starts(tmp_path, capsys):
    import ray

    from search import run

    space = Path(__file__).resolve().parents[2] / "spaces" / "demo.yaml"
    assert run.main(["--space", str(space), "--address", "auto", "--storage", str(tmp_path)]) == 2
    assert "must be shared by every node" in capsys.readouterr().err and not ray.is_initialized()
    assert list(tmp_path.iterdir()) == []  # nothing written
