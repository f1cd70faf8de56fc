#!/usr/bin/env bash
# The GPU measurements of perf/README.md in one run (device machine: torch only, no Avalanche needed).
# Usage: OUT=<folder> bash perf/gpu_measurements.sh   -> one JSON per measurement and a log in $OUT.
set -uo pipefail
OUT=${OUT:-perf/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee "$OUT/machine.txt"
# 1. the prepared command: CIGN fp32 vs bf16 on raw clips at D=512, batch 128 (64 px frames, width-16 ResNets)
python3 perf/bench_cign.py --input clips --precisions fp32,bf16 --device cuda --dim 512 --batch 128 \
  --json "$OUT/precision_clips64.json" 2>&1 | tee -a "$OUT/log.txt"
# 2. the same at the papers' encoder and frame sizes (full-width ResNet18, 224 px)
python3 perf/bench_cign.py --input clips --precisions fp32,bf16 --device cuda --dim 512 --batch 128 \
  --image-size 224 --encoder-width 64 --json "$OUT/precision_clips224.json" 2>&1 | tee -a "$OUT/log.txt"
# 3. CIGN vs fine-tuning step time by class count at D=512, batch 128 (feature tokens)
python3 perf/bench_cign.py --device cuda --dim 512 --batch 128 --json "$OUT/cign_vs_finetune.json" 2>&1 | tee -a "$OUT/log.txt"
