#!/usr/bin/env bash
# Real scale, measured once (not in CI): a random-init model with the real Qwen3-Embedding-4B config,
# exported in fp16 with ONNX external data on this machine. Prints wall time and peak RSS of each step.
# Usage: scripts/real_scale_export.sh [WORKDIR]   (needs ~25 GB disk, ~20 GiB RAM)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/qwen3-real-scale}
CONFIG=${CONFIG:-4B}
PRECISION=${PRECISION:-fp16}
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1
BIN=.venv/bin
/usr/bin/time -v $BIN/qwen3-embed dev-model --real-config "$CONFIG" --dtype float16 --output "$WORK/ckpt" \
  2> "$WORK/dev-model.time"
/usr/bin/time -v $BIN/qwen3-embed export --model "$WORK/ckpt" --output "$WORK/repo" --backend onnxruntime \
  --precision "$PRECISION" --verify-long-tokens 256 --no-warmup 2> >(tee "$WORK/export.log" >&2)
for f in dev-model.time export.log; do
  echo "== $f"; grep -E "Elapsed \(wall|Maximum resident" "$WORK/$f"
done
ls -la "$WORK/repo/qwen3_embedding/1"
