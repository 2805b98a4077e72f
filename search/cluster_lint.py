"""Check a Ray cluster launcher file for what would expose the cluster.

    python -m search.cluster_lint cluster.yaml

Ray's dashboard, job API and client run arbitrary code for whoever reaches them. This fails (exit 1,
one line per problem) on: a port other than SSH open to the internet in the security group; a
dashboard bound to all interfaces; a `ray start` without token authentication; no token file
shipped to the nodes; a secret-looking string anywhere in the file.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

OPEN = ("0.0.0.0/0", "::/0")
SECRET_PATTERNS = [
    (re.compile(r"AKIA[0-9A-Z]{16}"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"(?i)(secret|password|passwd|token|api[_-]?key)\s*[:=]\s*['\"]?[A-Za-z0-9/+=_\-]{16,}"),
     "a credential assigned in the file"),
    (re.compile(r"(?i)aws_secret_access_key"), "an AWS secret key setting"),
]


def lint(path: str | Path) -> list[str]:
    """Problems found in a cluster file, each naming the key and the rule; empty when none."""
    path = Path(path)
    text = path.read_text()
    cfg = yaml.safe_load(text) or {}
    problems = []
    for pattern, what in SECRET_PATTERNS:
        for m in pattern.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            problems.append(f"{path}:{line}: looks like {what}; credentials never go in this file "
                            f"(use an instance profile and the token file in file_mounts)")
    sg = (cfg.get("provider") or {}).get("security_group")
    if not sg or "IpPermissions" not in sg:
        problems.append(f"{path}: provider.security_group.IpPermissions: must be set explicitly (SSH only)")
    else:
        for perm in sg["IpPermissions"]:
            ranges = [r.get("CidrIp") for r in perm.get("IpRanges", [])] + \
                     [r.get("CidrIpv6") for r in perm.get("Ipv6Ranges", [])]
            if any(r in OPEN for r in ranges) and not (perm.get("FromPort") == 22 and perm.get("ToPort") == 22):
                problems.append(f"{path}: provider.security_group.IpPermissions: ports "
                                f"{perm.get('FromPort')}-{perm.get('ToPort')} open to {ranges}; only SSH (22) may be "
                                f"open to the internet (the dashboard goes through `ray dashboard cluster.yaml`)")
    starts = [(k, c) for k in ("head_start_ray_commands", "worker_start_ray_commands") for c in cfg.get(k) or []]
    if not starts:
        problems.append(f"{path}: head_start_ray_commands: missing; `ray start` must set RAY_AUTH_MODE=token")
    for key, cmd in starts:
        if "ray start" not in cmd:
            continue
        if "RAY_AUTH_MODE=token" not in cmd:
            problems.append(f"{path}: {key}: `{cmd.strip()[:60]}...` starts Ray without RAY_AUTH_MODE=token")
        if re.search(r"--dashboard-host[= ]0\.0\.0\.0", cmd):
            problems.append(f"{path}: {key}: --dashboard-host=0.0.0.0 serves the dashboard on every interface; "
                            f"use 127.0.0.1 and `ray dashboard cluster.yaml`")
    mounts = cfg.get("file_mounts") or {}
    if not any("auth_token" in str(k) for k in mounts):
        problems.append(f"{path}: file_mounts: must ship the token file (\"~/.ray/auth_token\": \"~/.ray/auth_token\")")
    return problems


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    if len(argv) != 1:
        print("usage: python -m search.cluster_lint CLUSTER.yaml", file=sys.stderr)
        return 2
    problems = lint(argv[0])
    for p in problems:
        print(p)
    if not problems:
        print(f"{argv[0]}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
