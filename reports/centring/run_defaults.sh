#!/usr/bin/env bash
# Issue 21.6 at today's defaults (cutoff 1e-3, float32 statistics): BiCo with and without centred
# covariances on the MiniLM pairs, 3 calibration draws each, as run.sh did at the settings before
# 2026-12-03; then the summary (reports/centring/defaults/summary.md). Resumes: a pair whose
# output file exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
T="python scripts/transfer_real.py run --runs runs/real --draws 3 --methods bico --data bbc_news --settings defaults"
R=runs/centring_defaults
for pair in minilm-l6:minilm-l3 minilm-l3:minilm-l6; do
  a=${pair%%:*} b=${pair##*:}
  [ -f $R/plain/${a}_to_${b}_bbc_news.json ] || $T --pair $pair -o $R/plain
  [ -f $R/centred/${a}_to_${b}_bbc_news_centred.json ] || $T --pair $pair --center --tag centred -o $R/centred
done
python reports/centring/summary.py $R reports/centring/defaults "bash reports/centring/run_defaults.sh"
