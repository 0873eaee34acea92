#!/usr/bin/env bash
# GPU acceptance run for panseg's TensorRT path: what a maintainer runs on a GPU machine from a fresh clone (about
# 5-8 minutes, most of it engine builds). It has NOT been run in this repository's CI, which has no GPU.
#
# Prerequisites (README, "GPU machines"): an NVIDIA driver, and in the active Python environment
#   pip install --extra-index-url https://pypi.nvidia.com -e ".[train,export,dev,gpu-cu13]" (gpu-cu12 on a CUDA 12
#   driver), and onnxruntime-gpu instead of onnxruntime.
#
# Usage: tests/gpu/acceptance.sh [WORK_DIR]     (default: a fresh temporary folder; kept for inspection)
# Steps: environment -> cuda-python plumbing -> tiny export -> TensorRT builds of the query-sparse pair (cold, then
# warm timing cache) -> pytest -m gpu -> 200-call soak alternating shapes (device memory before/after, host<->device
# bytes per image) -> panseg-rt bench on the plan. Every step's result goes into WORK_DIR/summary.json, printed at
# the end; the exit status is 0 only if every step passed.
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 1
WORK=${1:-$(mktemp -d -t panseg-gpu-acceptance.XXXXXX)}
mkdir -p "$WORK/steps"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PANSEG_CACHE_DIR="$WORK/cache"
PROFILE=(--min-shape 1x256x256 --opt-shape 1x384x512 --max-shape 2x512x640)
STARTED=$(date +%s)

# step NAME COMMAND...: run it, keep its log, record status and seconds; a step that prints one JSON object as its
# last line of stdout contributes it to the summary.
step() {
    local name=$1
    shift
    local begin=$SECONDS status
    echo "== $name: $*" >&2
    "$@" >"$WORK/steps/$name.out" 2>"$WORK/steps/$name.log"
    status=$?
    printf '{"status": %d, "seconds": %d}\n' "$status" "$((SECONDS - begin))" >"$WORK/steps/$name.status"
    tail -n 3 "$WORK/steps/$name.log" >&2
    return "$status"
}

step nvidia_smi nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.used --format=csv,noheader
step env "$PY" tests/gpu/acceptance.py env
step plumbing "$PY" tests/gpu/acceptance.py plumbing
step export "$PY" tests/gpu/acceptance.py export "$WORK/model"
ONNX="$WORK/model/tiny.onnx"
PLAN="$WORK/model/tiny.plan"
step build_cold "$PY" -m export.tensorrt "$ONNX" -o "$PLAN" "${PROFILE[@]}" --timing-cache "$WORK/timing.cache" \
    --quiet
step build_warm "$PY" -m export.tensorrt "$ONNX" -o "$PLAN" "${PROFILE[@]}" --timing-cache "$WORK/timing.cache" \
    --inspect --quiet
step pytest_gpu "$PY" -m pytest tests/test_tensorrt_gpu.py tests/test_onnxruntime_pair.py -m gpu -q -p no:cacheprovider
step soak "$PY" tests/gpu/acceptance.py soak "$PLAN" "$ONNX" 200
step bench panseg-rt bench --engine "$PLAN" --shape 384x512 --iterations 50 --warmup 5 --json "$WORK/bench.json" \
    --no-progress

"$PY" - "$WORK" "$STARTED" <<'PYEOF'
import json, sys, time
from pathlib import Path

work, started = Path(sys.argv[1]), int(sys.argv[2])
steps = {}
for status in sorted((work / "steps").glob("*.status")):
    name = status.name[: -len(".status")]
    entry = json.loads(status.read_text())
    out = (work / "steps" / f"{name}.out").read_text().strip().splitlines()
    try:
        entry["result"] = json.loads(out[-1]) if out else None
    except json.JSONDecodeError:
        entry["result"] = out[-5:]
    steps[name] = entry
bench = work / "bench.json"
if bench.is_file():
    data = json.loads(bench.read_text())
    steps["bench"]["result"] = {k: v for k, v in data.items() if k not in ("samples", "raw")}
ok = all(s["status"] == 0 and not (isinstance(s.get("result"), dict) and s["result"].get("ok") is False)
         for s in steps.values())
summary = {"ok": ok, "seconds": int(time.time()) - started, "work_dir": str(work), "steps": steps}
(work / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
sys.exit(0 if ok else 1)
PYEOF
