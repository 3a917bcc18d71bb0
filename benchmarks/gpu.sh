#!/usr/bin/env bash
# Every GPU scenario in one run, on a machine whose image has torch (CUDA) but not diffusers and no
# network: installs the lab from wheels carried beside it, builds SD 1.5's architecture from its
# public config as a diffusers folder on local disk (random weights: the same compute and memory as
# the real ones; then every scenario loads it as a pod loads SD 1.5) and prints each table.
#
#   pip download -d WHEELS --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 … \
#       diffusers==0.42.1 nbformat nbclient ipykernel ipywidgets       # on a networked machine; then drop
#   pip download -d WHEELS --no-deps peft==0.21.2 accelerate==1.16.0   # the wheels the GPU image already has
#   WHEELS=WHEELS bash benchmarks/gpu.sh                                 # on the GPU machine
#   GPU_SH_DRY_RUN=1 bash benchmarks/gpu.sh                              # the same path on CPU, tiny
#
# Scenarios run in priority order; each gets what is left of GPU_SH_SECONDS (default 540) up to its
# own cap, so one slow scenario cannot starve the summary. On an H200 (2026-12-04) everything before
# the throughput scenario took 437 s and the throughput scenario ~200 s: give ~700 s for all of it.
# Results: stdout (a table and one JSON line per scenario) and in $OUT (or ./gpu-results):
# all.jsonl, the grader's report.json and gpu-results.tar.gz (every scenario's full output).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="${WHEELS:-benchmarks/wheels}"
DEST="${OUT:-gpu-results}"
RESULTS="$(mktemp -d)"
PY="${PYTHON:-python3}"
DEADLINE=$((SECONDS + ${GPU_SH_SECONDS:-540}))
mkdir -p "$DEST"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if [ -n "${GPU_SH_DRY_RUN:-}" ]; then
    BUILD=tiny  # the same path on CPU with the built-in model, small settings
    SMALL=1
else
    BUILD=sd15-arch
    SMALL=
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
if ! "$PY" -c "import diffusers, peft, accelerate, nbclient, ipykernel" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" diffusers==0.42.1 peft==0.21.2 \
        accelerate==1.16.0 nbformat nbclient ipykernel ipywidgets || exit 1
fi
if ! (cd /tmp && "$PY" -c "import lab_utils, grader") 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
fi
"$PY" - <<'EOF'
import diffusers, peft, accelerate, transformers, torch
print("torch", torch.__version__, "| diffusers", diffusers.__version__, "| transformers", transformers.__version__,
      "| peft", peft.__version__, "| accelerate", accelerate.__version__,
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU")
EOF

pick() { if [ -n "$SMALL" ]; then echo "$1"; else echo "$2"; fi; }  # dry run's value, GPU's value

run() {  # name, cap in seconds, command...: stops at the cap or the run's deadline, whichever is first
    local name=$1 cap=$2 left=$((DEADLINE - SECONDS))
    shift 2
    [ "$left" -gt "$cap" ] && left=$cap
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped (no time left)" | tee "$RESULTS/$name.txt"
        return
    fi
    echo "== $name (up to ${left}s)"
    local start=$SECONDS
    timeout "$left" "$@" 2>&1 | tee "$RESULTS/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start))s" | tee -a "$RESULTS/$name.txt"
}

# the folder a pod mounts, built once (bf16 on a GPU that has it, as load_pipeline picks)
MODEL="${GPU_SH_MODEL_DIR:-/tmp/sd15-arch-folder}"
if [ ! -f "$MODEL/model_index.json" ]; then
    run sd15_folder 120 "$PY" -c "import sys, lab_utils; lab_utils.load_pipeline(sys.argv[1]).save_pretrained(sys.argv[2])" \
        "$BUILD" "$MODEL"
fi
export SD_LORA_LAB_MODEL="$MODEL"
# the pod path: 3/3, the grader's own count of trainable parameters, per-step times
run grader 150 "$PY" -m grader notebooks/sd_lora_lab_solution.ipynb --model "$MODEL" --results "$RESULTS/grade"
if ! grep -q "^== grader: exit 0" "$RESULTS/grader.txt"; then  # the sandbox, or the lab? one run without it
    run grader_unsandboxed 150 "$PY" -m grader notebooks/sd_lora_lab_solution.ipynb --model "$MODEL" \
        --sandbox none --results "$RESULTS/grade-none"
fi
cd benchmarks
run grade_solution 100 "$PY" grade_solution.py --runs 1 --model "$MODEL"
run overfit_loop 90 "$PY" overfit_loop.py --model "$MODEL" --steps $(pick 5 20) --repeats $(pick 1 3)
run generation 90 "$PY" generation.py --model "$MODEL" --steps $(pick 5 30) --repeats $(pick 1 3)
run notebook_steps 150 "$PY" notebook_steps.py --model "$MODEL" --runs 1
cd ..
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -gt 1 ]; then  # data-parallel LoRA on every GPU (one process each, NCCL, bf16 autocast)
    run distributed 120 accelerate launch --multi_gpu --num_processes "$GPUS" --num_machines 1 --dynamo_backend no \
        -m lab_utils.distributed --model "$MODEL" --steps 20 --batch $((2 * GPUS)) --out "$RESULTS/dp"
else  # one GPU (or the dry run's CPU): a single process
    run distributed 90 "$PY" -m lab_utils.distributed --model "$MODEL" --steps $(pick 3 20) --batch 2 \
        --out "$RESULTS/dp"
fi
run gpu_tests 90 "$PY" -m pytest -m gpu tests/test_sandbox.py -q -p no:cacheprovider -o addopts= -o timeout=80
cd benchmarks
run grading_throughput 240 "$PY" grading_throughput.py --model "$MODEL" --submissions $(pick 2 8) \
    --workers $(pick 2 8) --serial 1
cd ..
grep -h '^{' "$RESULTS"/*.txt > "$DEST/all.jsonl" || true
cp "$RESULTS"/grade*/report.json "$DEST/" 2>/dev/null || true
tar -czf "$DEST/gpu-results.tar.gz" -C "$RESULTS" --exclude='*.png' . || true
echo "== done in ${SECONDS}s; $(wc -l < "$DEST/all.jsonl") JSON lines in $DEST/all.jsonl"
