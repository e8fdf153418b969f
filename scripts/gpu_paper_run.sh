#!/usr/bin/env bash
# The paper's full-size configuration on one GPU, then its weights as a Hub folder.
#
#   bash scripts/gpu_paper_run.sh DATA OUT [recipe flags ...]
#
# Trains `--preset paper` (gam_resnet50_g4, 256x128, 2048-d, 20 warm-up epochs + 20 stages x 2, 4%
# merged per stage: paper 5.2) on DATA's bounding_box_train without labels, with what makes it fast on
# a GPU and leaves the method as it is: bf16 autocast (the recipe's default on CUDA), channels_last, the
# training set decoded once onto the GPU and augmented there in batches (--data-path decoded: no
# DataLoader workers), clustering on the host (the recipe's merge always runs there). A budget of
# BUDGET_MIN training minutes (default 8; evaluations every EVAL_EVERY_MIN, default 1, not counted)
# keeps the whole script within 10 minutes on an H200; where the budget ends the schedule, the log
# says at which stage. Then `recipes/publish.py --dry-run` writes OUT/hub: safetensors, timm's
# config with the 256x128 input size, and a card with the figures measured on DATA's query/gallery.
#
# Extra flags go to the recipe after the script's own, so they win: the CPU test runs this script with
# `--preset smoke --device cpu --model test_efficientnet_gn` on a tiny synthetic set
# (tests/test_gpu_script.py). On a machine without the project's environment (the device machine:
# its python3 has torch, timm and huggingface_hub, not faiss), `bash scripts/device_folder.sh` first
# copies the data and a faiss wheel into .device/, which this script puts on the path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${1:?usage: gpu_paper_run.sh DATA OUT [recipe flags ...]}"
out="${2:?usage: gpu_paper_run.sh DATA OUT [recipe flags ...]}"
shift 2
python="${PYTHON:-python}"
command -v "$python" >/dev/null || python=python3
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d "$root/.device/site" ]; then
    export PYTHONPATH="$root/.device/site:$PYTHONPATH"
fi
mkdir -p "$out"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no GPU'
    lscpu | grep -E 'Model name|^CPU\(s\)' || true
    "$python" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)'
} | tee "$out/machine.txt"

start=$(date +%s)
"$python" "$root/recipes/unsup_reid.py" --preset paper --data-root "$data" --output "$out/run" \
    --data-path decoded --workers 0 --channels-last \
    --time-budget-min "${BUDGET_MIN:-8}" --eval-every-min "${EVAL_EVERY_MIN:-1}" "$@" | tee "$out/train.txt"
echo "[gpu_paper_run] training took $(( $(date +%s) - start )) s wall" | tee -a "$out/machine.txt"

model="$("$python" -c "import json, sys; print(json.load(open(sys.argv[1]))['model'])" "$out/run/config.json")"
"$python" "$root/recipes/publish.py" --checkpoint "$out/run/checkpoint.pt" \
    --repo-id "${REPO_ID:-timm-gam/$model.unsup_market1501dev_paper}" --output "$out/hub" \
    --data-root "$data" --hardware "${HARDWARE:-$(head -2 "$out/machine.txt" | tail -1)}" --dry-run \
    | tee "$out/publish.txt"
