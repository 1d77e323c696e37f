#!/usr/bin/env bash
# Issue 21.6: BiCo with and without centred covariances on the real encoder pairs, 3 calibration
# draws each, the same A_ft / B_ft (runs/real, made by reports/run_real.sh) and settings as
# reports/run_transfer_real.sh; then the summary (reports/centring/summary.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
T="python scripts/transfer_real.py run --runs runs/real --draws 3 --methods bico --data bbc_news"
for pair in minilm-l6:minilm-l3 minilm-l3:minilm-l6; do
  $T --pair $pair -o runs/centring/plain
  $T --pair $pair --center --tag centred -o runs/centring/centred
done
# across families: MiniLM-L6 -> MPNet, modules paired by role, tokens by word
$T --pair minilm-l6:mpnet --token word -o runs/centring/plain
$T --pair minilm-l6:mpnet --token word --center --tag centred -o runs/centring/centred
python reports/centring/summary.py runs/centring reports/centring
