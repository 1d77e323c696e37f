#!/usr/bin/env bash
# Issue 22.2 on real models, exactly as run (CPU, seed 0): task matrices on the DINOv2 ViT-S/14
# backbone (fine-tuned here at 112 px: 224 px costs 4x per step on this 2-core CPU) on MNIST-5k,
# digits and ELPV, and on IMDB with MiniLM-L6 and MPNet at 256 tokens. Resumable: a finished
# step's folder is kept and skipped. Peak memory of each step: runs/real/logs/<step>.time
# (GNU time -v). Then the report (reports/real_vit) and the per-layer fidelity rows.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=--quiet
R=runs/real
L=$R/logs
SC="--per-class 2,8,32 --fractions 0.01,0.05,0.2,1"
mkdir -p $L

step() {  # step NAME COMMAND...: run COMMAND unless runs/real/NAME exists; log time and memory
  local name=$1
  shift
  if [ -e "$R/$name" ]; then echo "have $R/$name"; return; fi
  echo "run  $name"
  /usr/bin/time -v -o "$L/$name.time" "$@"
}

# DINOv2-S: images scaled to [-1, 1] (tasklift's image convention), 20% held out, batch 16,
# lr 5e-5 (a ViT's full fine-tune; EfficientNet's 1e-3 is a CNN's).
V="--image-size 112 --test-size 0.2 --max-length 64"  # (no tokens: the recipe stamp)
for d in digits mnist_5k elpv; do
  if [ $d = mnist_5k ]; then E=2; else E=3; fi
  step dinov2-s_${d}_ft tasklift finetune dinov2-s $d $V --epochs $E --lr 5e-5 -o $R/dinov2-s_${d}_ft $Q
  step sweep_dinov2-s_$d tasklift sweep dinov2-s $R/dinov2-s_${d}_ft $d $V -o $R/sweep_dinov2-s_$d $Q
  step scaling_dinov2-s_$d tasklift scaling dinov2-s $R/dinov2-s_${d}_ft $d $V $SC \
    -o $R/scaling_dinov2-s_$d $Q
done

# IMDB: 1,000 training reviews, 1,000 held out, 256 tokens (most reviews are longer).
S="--test-size 1000 --train-limit 1000 --max-length 256"
for m in minilm-l6 mpnet; do
  step ${m}_imdb_ft tasklift finetune $m imdb $S -o $R/${m}_imdb_ft $Q
  step sweep_${m}_imdb tasklift sweep $m $R/${m}_imdb_ft imdb $S -o $R/sweep_${m}_imdb $Q
  step scaling_${m}_imdb tasklift scaling $m $R/${m}_imdb_ft imdb $S $SC -o $R/scaling_${m}_imdb $Q
done

# Issue 22.3-4: probe / head-only / task matrix per layer with the maps' fidelity, frozen head on
# digits (reuses the fine-tunes above; its frozen-head fine-tune goes to runs/fidelity)
python reports/fidelity/run.py dinov2-s_digits dinov2-s_mnist_5k dinov2-s_elpv
python scripts/real_report.py $R -o reports/real_vit --script reports/run_real_vit.sh
