#!/usr/bin/env bash
# Issue 21.6 at today's defaults (cutoff 1e-3, float32 statistics): BiCo with and without centred
# covariances on the MiniLM pairs and MiniLM-L6 -> MPNet (tokens paired by word), 3 calibration
# draws each, as run.sh did at the settings before 2026-12-03; then the summary
# (reports/centring/defaults/summary.md). Needs runs/real's fine-tunes (reports/run_real.sh's
# recipe; MPNet's is made here if missing). Resumes: a pair whose output file exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
T="python scripts/transfer_real.py run --runs runs/real --draws 3 --methods bico --data bbc_news --settings defaults"
R=runs/centring_defaults
[ -d runs/real/mpnet_bbc_news_ft ] || tasklift finetune mpnet bbc_news --test-size 0.2 \
  --train-limit 1000 --max-length 64 -o runs/real/mpnet_bbc_news_ft --quiet
for pair in minilm-l6:minilm-l3 minilm-l3:minilm-l6 minilm-l6:mpnet; do
  a=${pair%%:*} b=${pair##*:} W=""
  [ $b = mpnet ] && W="--token word"
  [ -f $R/plain/${a}_to_${b}_bbc_news.json ] || $T --pair $pair $W -o $R/plain
  [ -f $R/centred/${a}_to_${b}_bbc_news_centred.json ] || $T --pair $pair $W --center --tag centred -o $R/centred
done
python reports/centring/summary.py $R reports/centring/defaults "bash reports/centring/run_defaults.sh"
