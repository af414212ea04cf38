#!/usr/bin/env bash
# Measures a machine with a GPU but no Rust toolchain from a prebuilt binary (issue 15, item 6):
# the matmul kernel at 1024³ and 4096³ and a ViT-B/16 training step (the paper's model, M2) with
# no masking, random 50% and cluster masking pinned at 50% (equal compute, M7). Budget: under 5
# minutes on a hardware GPU. Build the binary elsewhere (`cargo build --release`) and copy it.
#
#   benches/gpu_machine.sh [path/to/clusterclip] [batch size, default 64]
#
# PRESET and SIZES override the model and the matmul sizes (a dry run on a CPU driver:
# PRESET=nano SIZES=256 benches/gpu_machine.sh target/release/clusterclip 8).
#
# Prints the adapter, each result as one JSON line, and the wall time; record them in the README
# ("Speed") with the machine's name.
set -euo pipefail
CC=${1:-target/release/clusterclip}
BATCH=${2:-64}
PRESET=${PRESET:-b16}
SIZES=${SIZES:-1024 4096}
start=$(date +%s)
"$CC" info | grep '^chosen'
for size in $SIZES; do
  "$CC" bench matmul --m "$size" --n "$size" --k "$size" --repeats 5 --json
done
# Batches that exceed one storage binding are split automatically (README, --accum-freq).
"$CC" bench step --preset "$PRESET" --batch-size "$BATCH" --mask none --repeats 3 --json
"$CC" bench step --preset "$PRESET" --batch-size "$BATCH" --mask random --mask-ratio 0.5 --repeats 3 --json
"$CC" bench step --preset "$PRESET" --batch-size "$BATCH" --mask cluster --min-mask-ratio 0.5 \
  --max-mask-ratio 0.5 --repeats 3 --json
echo "wall $(( $(date +%s) - start )) s"
