#!/usr/bin/env bash
# The three-seed grids of issue 11 (README "Does cluster masking help?"). Data from
# examples/fashion_mnist_to_imagefolder.rs and examples/openclipart_to_tsv.rs (see the README);
# a finished run is skipped, so adding a strategy to a grid runs only its new rows.
set -euo pipefail
export NODEVICE_SELECT=1
CC=${CC:-target/release/clusterclip}
D=${D:-/work/data}
S=${S:-/work/study}
start=$(date +%s)
$CC study --out $S/fmnist --title "Fashion-MNIST (micro, 300 steps of 32, 3 seeds)" \
  --model micro --strategies none,random,cluster,cluster-own --ratios 0.5 --feature-modes normalized,rgb --seeds 0,1,2 \
  --train-data $D/fmnist-train/captions.tsv --val-data none \
  --zeroshot-data imagefolder:$D/fmnist-test --probe-train-data imagefolder:$D/fmnist-probe-train \
  --probe-data imagefolder:$D/fmnist-test --batch-size 32 --epochs 3 --samples-per-epoch 3200
echo "fmnist wall $(( $(date +%s) - start )) s"
start=$(date +%s)
$CC study --out $S/openclipart --title "openclipart (micro, 400 steps of 32, 3 seeds)" \
  --model micro --strategies random,cluster,cluster-own --ratios 0.5 --feature-modes normalized,rgb --seeds 0,1,2 \
  --train-data $D/openclipart/train.tsv --val-data $D/openclipart/val.tsv \
  --batch-size 32 --epochs 4 --samples-per-epoch 3200
echo "openclipart wall $(( $(date +%s) - start )) s"
