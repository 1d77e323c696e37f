#!/usr/bin/env bash
# The MiniLM BBC rows of reports/transfer_real re-run with undetermined directions mapped to zero
# (commit f050dac and its review fixes), the same recipe and draws: fine-tunes as
# reports/run_real.sh makes them, then scripts/transfer_real.py, 3 draws, every method.
# Resumes: a fine-tune or pair already written is skipped. Takes about 45 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
S="--test-size 0.2 --train-limit 1000 --max-length 64 --quiet"
for m in minilm-l3 minilm-l6; do
  [ -d runs/real/${m}_bbc_news_ft ] || tasklift finetune $m bbc_news $S -o runs/real/${m}_bbc_news_ft
done
for pair in minilm-l3:minilm-l6 minilm-l6:minilm-l3; do
  a=${pair%%:*}; b=${pair##*:}
  [ -f runs/transfer_zero/${a}_to_${b}_bbc_news.json ] ||
    python scripts/transfer_real.py run --pair $pair --data bbc_news -o runs/transfer_zero
done
python scripts/transfer_real.py report runs/transfer_zero -o reports/completion/bbc
# the Procrustes methods again with the SVD completion, the same fine-tunes and draws: side by side
for pair in minilm-l3:minilm-l6 minilm-l6:minilm-l3; do
  a=${pair%%:*}; b=${pair##*:}
  [ -f runs/transfer_zero/${a}_to_${b}_bbc_news_svd.json ] ||
    python reports/completion/svd_variant.py run --pair $pair --data bbc_news \
      --methods bico,activation,gradient --tag svd -o runs/transfer_zero
done
python scripts/transfer_real.py report runs/transfer_zero -o reports/completion/bbc
