#!/usr/bin/env bash
# Fill .device/ (git-ignored) with what a device-machine run of scripts/gpu_paper_run.sh needs and that
# machine lacks: the data (../shared does not travel) and faiss, as a wheel installed into .device/site.
#
#   bash scripts/device_folder.sh [DATA]      # default ../shared/data/market1501-dev
#
# Then, with the device tool: run `bash scripts/gpu_paper_run.sh .device/market1501-dev $OUT/g4`
# with carry [".device"]. Research-only images: never commit .device/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${1:-$root/../shared/data/market1501-dev}"
mkdir -p "$root/.device"
rm -rf "$root/.device/market1501-dev"
cp -r "$data" "$root/.device/market1501-dev"
python3 -m pip install -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --target "$root/.device/site" faiss-cpu
du -sh "$root/.device"/*
