#!/usr/bin/env bash
# BiCo transfer experiments of reports/transfer/report.md, exactly as run (CPU, seed 0).
# No pretrained vision or text pair ships in a wheel, so the pairs are pretrained here on real
# data (scikit-learn digits, classes 0-4): A and three targets B that differ in one thing each.
# Needs: pip install -e ".[demo]"
set -euo pipefail
cd "$(dirname "$0")/.."
Q=--quiet
V="--image-size 32 --test-size 0.2"
# the transfer settings these reports were made with (the defaults until 2026-12-03)
PREV="--tie-break 1e-6 --stats-dtype float64"
R=runs/bico

pretrain() { [ -d "$R/$1" ] || python scripts/pretrain_vit_digits.py -o "$R/$1" "${@:2}"; }
pretrain vit_a                                       # 6 blocks x 128
pretrain vit_b_seed --seed 1                         # the same shape, another seed
pretrain vit_b_wide --hidden 192 --heads 6 --seed 2  # wider
pretrain vit_b_deep --layers 9 --seed 3              # deeper

# The task: all 10 digits (5 never seen labelled in pre-training). A is fine-tuned; each B too,
# as the upper bound a transfer tries to reach without training.
for m in a b_seed b_wide b_deep; do
  tasklift finetune $R/vit_$m digits $V --epochs 5 --lr 1e-3 -o $R/vit_${m}_ft $Q
done

for pair in "seed:same shape, another seed" "wide:width 128 -> 192" "deep:depth 6 -> 9"; do
  b=${pair%%:*}
  tasklift transfer $R/vit_a $R/vit_a_ft $R/vit_b_$b digits $V --probe $PREV \
    --target-finetuned $R/vit_b_${b}_ft --title "${pair#*:}" -o $R/transfer_$b $Q
done

tasklift report $R/transfer_seed $R/transfer_wide $R/transfer_deep -o reports/transfer \
  --title "tasklift: BiCo task-vector transfer on ViTs pretrained here"
