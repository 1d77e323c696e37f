#!/usr/bin/env bash
# Issue 22.2 on real text, exactly as run (CPU, seed 0): task matrices on IMDB with MiniLM-L6 and
# MPNet at 256 tokens. Resumable: a finished step's folder is kept and skipped. Peak memory of
# each step: runs/real/logs/<step>.time (GNU time -v). Then the report (reports/real_imdb).
# DINOv2 runs in reports/run_real_vit.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source reports/real_steps.sh  # Q, R, L, SC and step

# IMDB: 1,000 training reviews, 1,000 held out, 256 tokens (most reviews are longer).
S="--test-size 1000 --train-limit 1000 --max-length 256"
for m in minilm-l6 mpnet; do
  step ${m}_imdb_ft tasklift finetune $m imdb $S -o $R/${m}_imdb_ft $Q
  step sweep_${m}_imdb tasklift sweep $m $R/${m}_imdb_ft imdb $S -o $R/sweep_${m}_imdb $Q
  step scaling_${m}_imdb tasklift scaling $m $R/${m}_imdb_ft imdb $S $SC -o $R/scaling_${m}_imdb $Q
done

python scripts/real_report.py $R -o reports/real_imdb --script reports/run_real_imdb.sh \
  --only minilm-l6 mpnet --overwrite
mkdir -p reports/real_imdb/time && cp $L/*imdb*.time reports/real_imdb/time/  # peak RSS, wall time
