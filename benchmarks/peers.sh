#!/usr/bin/env bash
# Peer servers for the benchmark suite, each in its own virtualenv under .cache/peers (their pins clash
# with ours). CPU torch first and as a constraint: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=.cache/peers
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
mkdir -p "$PEERS"
echo "$TORCH_SPEC" > "$PEERS/constraints.txt"
if [ ! -x "$PEERS/infinity/bin/infinity_emb" ]; then
  python3 -m venv "$PEERS/infinity"
  "$PEERS/infinity/bin/pip" install -q --upgrade pip
  "$PEERS/infinity/bin/pip" install -q "$TORCH_SPEC"
  "$PEERS/infinity/bin/pip" install -q -c "$PEERS/constraints.txt" "infinity-emb[server,torch]"
fi
# vLLM: only a resolver check here; its PyPI wheels are CUDA builds pinned to their own torch.
"$PEERS/infinity/bin/pip" install --dry-run --ignore-installed -c "$PEERS/constraints.txt" vllm \
  > "$PEERS/vllm-dryrun.log" 2>&1 || echo "vllm does not install next to $TORCH_SPEC: see $PEERS/vllm-dryrun.log"
