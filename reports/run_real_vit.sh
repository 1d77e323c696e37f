#!/usr/bin/env bash
# Issue 22.2 on a real ViT, exactly as run (CPU, seed 0): task matrices on the DINOv2 ViT-S/14
# backbone, fine-tuned here at 112 px (224 px costs 4x per step on this 2-core CPU) on digits,
# ELPV and MNIST-5k (all 4,000 training images; a first run used 2,000). Pool cls+mean: what HF's DINOv2 classifier reads ([CLS] joined to the patch mean,
# each token through the final norm), so head-only at the last layer is HF's own computation.
# Resumable: a finished step's folder is kept and skipped. Peak memory of each step:
# runs/real/logs/<step>.time (GNU time -v). Then the fidelity rows and the report.
set -euo pipefail
cd "$(dirname "$0")/.."
source reports/real_steps.sh  # Q, R, L, SC and step

# images scaled to [-1, 1] (tasklift's image convention), 20% held out, batch 16, lr 5e-5 (a
# ViT's full fine-tune; EfficientNet's 1e-3 is a CNN's); --max-length only stamps the recipe
for d in digits elpv mnist_5k; do
  V="--image-size 112 --test-size 0.2 --max-length 64"
  if [ $d = mnist_5k ]; then E=2; else E=3; fi
  step dinov2-s_${d}_ft tasklift finetune dinov2-s $d $V --epochs $E --lr 5e-5 -o $R/dinov2-s_${d}_ft $Q
  V="$V --pool cls+mean"
  step sweep_dinov2-s_$d tasklift sweep dinov2-s $R/dinov2-s_${d}_ft $d $V -o $R/sweep_dinov2-s_$d $Q
  step scaling_dinov2-s_$d tasklift scaling dinov2-s $R/dinov2-s_${d}_ft $d $V $SC \
    -o $R/scaling_dinov2-s_$d $Q
done

# Issue 22.3: probe / head-only / task matrix per layer with the maps' fidelity (reuses the
# fine-tunes above)
python reports/fidelity/run.py dinov2-s_digits dinov2-s_elpv
python scripts/real_report.py $R -o reports/real_vit --script reports/run_real_vit.sh --only dinov2-s \
  --overwrite
mkdir -p reports/real_vit/time && cp $L/*dinov2*.time reports/real_vit/time/  # peak RSS, wall time
