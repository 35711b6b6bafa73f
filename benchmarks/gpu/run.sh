#!/usr/bin/env bash
# The GPU benchmark, one command: `bash benchmarks/gpu/run.sh` on a machine with a CUDA GPU
# (torch, timm and torchvision installed; no network needed: the weights are random, speed does
# not depend on them). Writes benchmarks/gpu/<name>/bench.{md,json,csv,png} and the CUDA tests'
# result; every file records the command, the machine, the driver and torch.
set -euo pipefail
cd "$(dirname "$0")/../.."
pip install --no-deps -e . >/dev/null
OUT=benchmarks/gpu
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv"
python -m pytest -q tests/test_cuda.py -rs | tee "$OUT/cuda_tests.txt"
for batch in 64 128 256; do
  sparse-tuning bench --model vit_base_patch16_224 --device cuda --amp bf16 --batch-size "$batch" \
      --rounds 20 --warmup 5 --out "$OUT/vit_b_bf16_b$batch"
done
sparse-tuning bench --model vit_base_patch16_224 --device cuda --amp bf16 --batch-size 128 --compile \
    --methods full,adaptformer,sparse-tuning --rounds 20 --warmup 5 --out "$OUT/vit_b_bf16_b128_compiled"
sparse-tuning bench --model vit_large_patch16_224 --device cuda --amp bf16 --batch-size 64 \
    --methods full,adaptformer,lora,sparse-tuning,"sparse-tuning (eager)" --rounds 10 --warmup 3 --out "$OUT/vit_l_bf16_b64"
