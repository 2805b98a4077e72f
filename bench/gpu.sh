#!/usr/bin/env bash
# Every GPU check in one run of at most 5 minutes on one GPU; one JSON file comes out.
#
#   bash bench/gpu.sh              # on the GPU machine: writes ${OUT:-bench/out}/gpu.json
#   SMOKE=1 bash bench/gpu.sh      # anywhere, in about a minute on a CPU: tiny sizes, same code paths
#
# The GPU machine has torch, torchvision, torchmetrics, numpy, pillow and pyyaml but no Ray or
# Optuna: these checks drive detector/ directly (it imports neither). Run through the device
# tool, copy the shared yardstick into the ignored, carried folder .gpu/ first:
#   mkdir -p .gpu && cp ../shared/tools/raw_torchvision_bench.py .gpu/     (carry: [".gpu"])
#
# Each part has its own time limit (140 + 50 + 105 s, under 5 minutes together); a part that runs
# out keeps the rows it finished.
# 1. gpu.py throughput: the 8 architectures x batch 8, 32 x AMP off/on, 512 x 512
# 2. loop_vs_raw.py: the project's loop (data pipeline included) vs the bare loop,
#    resnet50-v1, 512 x 512, batch 8, bf16
# 3. gpu.py share: 1, 2 and 4 processes of the project's loop sharing the GPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-bench/out}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ -n "${SMOKE:-}" ]; then
  THROUGHPUT="--size 64 --batches 2 --archs resnet18-v1 resnet50-v2 --seconds 1"
  LOOP="--arch resnet18-v1 --size 64 --batch 2 --steps 4 --repeats 1 --workers 0"
  SHARE="--size 64 --batch 2 --images 8 --workers 0 --seconds 3 --procs 1 2 --setup-s 25"
else
  THROUGHPUT="--seconds 1.5"
  LOOP="--arch resnet50-v1 --size 512 --batch 8 --steps 20 --repeats 2 --workers 4 --amp"
  SHARE="--arch resnet18-v1 --batch 8 --images 32 --workers 2 --seconds 10 --procs 1 2 4 --setup-s 22"
fi

start=$(date +%s)
$PY -c 'import torch, torchvision, json; print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.cuda.is_available(), "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}))' \
  > "$OUT_DIR/env.json"
timeout 140 $PY bench/gpu.py throughput $THROUGHPUT > "$OUT_DIR/throughput.json" 2> "$OUT_DIR/throughput.log"
echo "throughput: exit $? after $(( $(date +%s) - start )) s"
timeout 50 $PY bench/loop_vs_raw.py $LOOP > "$OUT_DIR/loop.json" 2> "$OUT_DIR/loop.log"
echo "loop_vs_raw: exit $? after $(( $(date +%s) - start )) s"
timeout 105 $PY bench/gpu.py share $SHARE > "$OUT_DIR/share.json" 2> "$OUT_DIR/share.log"
echo "share: exit $? after $(( $(date +%s) - start )) s"

# One file with whatever finished (a part that timed out or failed is recorded as such).
$PY - "$OUT_DIR" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys
from pathlib import Path
out, wall = Path(sys.argv[1]), int(sys.argv[2])
def part(name):
    """The part's final JSON object; if it did not finish, the rows it printed before it stopped."""
    try:
        lines = [json.loads(x) for x in (out / f"{name}.json").read_text().splitlines() if x.startswith("{")]
    except (OSError, json.JSONDecodeError):
        lines = []
    if lines and ("benchmark" in lines[-1] or name == "env"):
        return lines[-1]
    log = out / f"{name}.log"
    return {"error": "did not finish", "partial_rows": lines, "log_tail": log.read_text()[-1500:] if log.exists() else ""}
res = {"env": part("env"), "wall_s": wall, "throughput": part("throughput"), "loop_vs_raw": part("loop"),
       "share": part("share")}
(out / "gpu.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
EOF
