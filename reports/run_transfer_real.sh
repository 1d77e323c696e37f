#!/usr/bin/env bash
# BiCo and baselines on real pretrained pairs (issue 11), exactly as run (CPU). Needs the
# fine-tuned models of reports/run_real.sh (same 1,000 training examples per task, seed 0).
# Each draw takes its own 128 calibration and 200 validation inputs; the scale grid is 0..2.
set -euo pipefail
cd "$(dirname "$0")/.."
T="python scripts/transfer_real.py run -o runs/transfer_real"
$T --pair minilm-l6:minilm-l3 --data bbc_news --draws 3
$T --pair minilm-l6:minilm-l3 --data tweets --test-size 1000 --draws 3 \
  --methods bico,activation,gradient,naive
# across families, widths and tokenizers: MiniLM-L6 (BERT, 384) -> MPNet (768, own tokenizer);
# tokens paired by [CLS] (one row per text), or by words through the tokenizers' character
# offsets (one row per word); naive and GradFix need equal shapes, so they cannot run here
$T --pair minilm-l6:mpnet --data bbc_news --token cls --methods bico,gradient --draws 3
$T --pair minilm-l6:mpnet --data bbc_news --token word --methods bico,activation --draws 3 --tag word
$T --pair minilm-l3:minilm-l6 --data bbc_news --draws 3
$T --pair minilm-l3:minilm-l6 --data tweets --test-size 1000 --draws 3
python scripts/transfer_real.py report runs/transfer_real -o reports/transfer_real
python scripts/bico_analysis.py --pair minilm-l6:minilm-l3 --data tweets
