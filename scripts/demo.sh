#!/usr/bin/env bash
# Install the pinned environment and segment the bundled sample with the bundled demo model.
# Writes out/colin27_t1_2mm.seg.nrrd (open it in 3D Slicer) and out/colin27_t1_2mm.png (overlay montage).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
mkdir -p out
.venv/bin/uxnet-segment segment Resources/SampleData/colin27_t1_2mm.nrrd --model demo_brain \
  -o out/colin27_t1_2mm.seg.nrrd --snapshot out/colin27_t1_2mm.png "$@"
echo "Wrote out/colin27_t1_2mm.seg.nrrd and out/colin27_t1_2mm.png"
