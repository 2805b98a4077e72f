#!/usr/bin/env bash
# Every GPU check in one run of at most 5 minutes on one GPU; one JSON file comes out.
#
#   bash bench/gpu.sh              # on the GPU machine: writes ${OUT:-bench/out}/gpu.json
#   SMOKE=1 bash bench/gpu.sh      # anywhere, in a few minutes on a CPU: tiny sizes, same code paths
#
# The GPU machine has torch, torchvision, torchmetrics, numpy, pillow and pyyaml but no Ray or
# Optuna: these checks drive detector/ directly (it imports neither). Run through the device
# tool, copy the shared yardstick into the ignored, carried folder .gpu/ first:
#   mkdir -p .gpu && cp ../shared/tools/raw_torchvision_bench.py .gpu/     (carry: [".gpu"])
#
# Each part has its own time limit (45 + 5 x 28 + 70 + 35 s, under 5 minutes together); a part
# that runs out keeps the rows it finished.
# 1. gpu.py throughput: 4 architectures x batch 8 x amp off/bf16/fp16, 512 x 512
# 2. loop_vs_raw.py: the project's loop (data pipeline included) vs the bare loop, resnet50-v1 in
#    off/bf16/fp16, resnet18-v1 and resnet50-v2 in bf16, 512 x 512, batch 8 (one JSON line each)
# 3. gpu.py share: 1, 2 and 4 processes of the project's loop sharing the GPU, each capped at 1/N
#    of its memory (what a trial with resources.gpu 1/N does); aggregate img/s and out-of-memory
# 4. gpu.py precision: one trained checkpoint's mAP50 in fp32, bf16 and fp16 on 2048-px mosaics
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-bench/out}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ -n "${SMOKE:-}" ]; then
  THROUGHPUT="--size 64 --batches 2 --archs resnet18-v1 --amp off bf16 --seconds 1"
  LOOP_RUNS="resnet18-v1:off resnet18-v1:bf16"
  LOOP="--size 64 --batch 2 --steps 4 --repeats 1 --workers 0"; LOOP_S=80
  SHARE="--size 64 --batch 2 --images 8 --workers 0 --seconds 3 --procs 1 2 --setup-s 25"
  PRECISION="--images 12 --epochs 1 --width 512"
  THROUGHPUT_S=60; SHARE_S=150; PRECISION_S=200  # the CPU is slow at bf16 and fp16
else
  THROUGHPUT="--seconds 1.5 --batches 8 --archs resnet18-v1 resnet50-v1 resnet50-v2 resnet101-v1"
  LOOP_RUNS="resnet50-v1:off resnet50-v1:bf16 resnet50-v1:fp16 resnet18-v1:bf16 resnet50-v2:bf16"
  LOOP="--size 512 --batch 8 --steps 10 --repeats 1 --workers 4"; LOOP_S=28
  SHARE="--arch resnet18-v1 --batch 8 --images 32 --workers 2 --seconds 6 --procs 1 2 4 --setup-s 18"
  PRECISION=""
  THROUGHPUT_S=45; SHARE_S=70; PRECISION_S=35
fi

start=$(date +%s)
$PY -c 'import torch, torchvision, json; print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.cuda.is_available(), "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}))' \
  > "$OUT_DIR/env.json"
timeout $THROUGHPUT_S $PY bench/gpu.py throughput $THROUGHPUT > "$OUT_DIR/throughput.json" 2> "$OUT_DIR/throughput.log"
echo "throughput: exit $? after $(( $(date +%s) - start )) s"
: > "$OUT_DIR/loop.json"; : > "$OUT_DIR/loop.log"
for run in $LOOP_RUNS; do
  arch=${run%%:*}; amp=${run##*:}
  timeout $LOOP_S $PY bench/loop_vs_raw.py --arch "$arch" --amp "$amp" $LOOP >> "$OUT_DIR/loop.json" 2>> "$OUT_DIR/loop.log" \
    || echo "{\"arch\": \"$arch\", \"amp\": \"$amp\", \"error\": \"exit $?\"}" >> "$OUT_DIR/loop.json"
done
echo '{"benchmark": "loop_vs_raw_set"}' >> "$OUT_DIR/loop.json"
echo "loop_vs_raw: after $(( $(date +%s) - start )) s"
timeout $SHARE_S $PY bench/gpu.py share $SHARE > "$OUT_DIR/share.json" 2> "$OUT_DIR/share.log"
echo "share: exit $? after $(( $(date +%s) - start )) s"
timeout $PRECISION_S $PY bench/gpu.py precision $PRECISION > "$OUT_DIR/precision.json" 2> "$OUT_DIR/precision.log"
echo "precision: exit $? after $(( $(date +%s) - start )) s"

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
def rows(name):
    """Every JSON line of a part run once per setting (loop_vs_raw: one line per architecture and amp)."""
    try:
        return [json.loads(x) for x in (out / f"{name}.json").read_text().splitlines() if x.startswith("{")][:-1]
    except (OSError, json.JSONDecodeError):
        return []
res = {"env": part("env"), "wall_s": wall, "throughput": part("throughput"), "loop_vs_raw": rows("loop"),
       "share": part("share"), "precision": part("precision")}
(out / "gpu.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
EOF
