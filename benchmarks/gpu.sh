#!/usr/bin/env bash
# Every GPU scenario in one run, on a machine whose image has torch (CUDA) but not diffusers and no
# network: installs the lab from wheels placed beside it, builds SD 1.5's architecture from its
# config (model "sd15-arch": same compute as the real weights, no download) and prints each table.
#
#   pip download -d benchmarks/wheels diffusers transformers peft accelerate safetensors \
#       nbformat nbclient ipykernel ipywidgets matplotlib tqdm rich torchmetrics   # on a networked machine
#   bash benchmarks/gpu.sh [WHEELS_DIR]                                             # on the GPU machine
#
# Budget: about 8 minutes on an H100/H200 (fits the 10-minute window with room for the install).
# Results go to stdout, one JSON line per scenario, and to $OUT (or ./gpu-results) as files.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="${1:-benchmarks/wheels}"
RESULTS="${OUT:-gpu-results}"
mkdir -p "$RESULTS"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)"
if ! python -c "import diffusers" 2>/dev/null; then
    pip install --no-index --find-links "$WHEELS" --no-deps -e . >/dev/null
    pip install --no-index --find-links "$WHEELS" diffusers transformers peft accelerate safetensors \
        nbformat nbclient ipykernel ipywidgets matplotlib tqdm rich torchmetrics >/dev/null
fi
export HF_HUB_OFFLINE=1 SD_LORA_LAB_MODEL=sd15-arch
run() {  # name, timeout, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" | tee "$RESULTS/$name.txt" || echo "$name: failed or past ${limit}s"
}
run overfit_loop 120 python benchmarks/overfit_loop.py --model sd15-arch --steps 30 --repeats 3
run generation 150 python benchmarks/generation.py --model sd15-arch --steps 30 --repeats 3
run notebook_steps 200 python benchmarks/notebook_steps.py --model sd15-arch --runs 2
run grading_throughput 240 python benchmarks/grading_throughput.py --model sd15-arch --submissions 4 --workers 2 --serial 2
# data-parallel LoRA on every GPU (one process each, NCCL, bf16 autocast); one GPU: a single process
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -gt 1 ]; then
    run distributed 240 accelerate launch --multi_gpu --num_processes "$GPUS" --num_machines 1 --dynamo_backend no \
        -m lab_utils.distributed --model sd15-arch --size 512 --steps 20 --batch $((2 * GPUS)) --out "$RESULTS/dp"
else
    run distributed 240 python -m lab_utils.distributed --model sd15-arch --size 512 --steps 20 --batch 2 --out "$RESULTS/dp"
fi
grep -h '^{' "$RESULTS"/*.txt > "$RESULTS/all.jsonl" || true
