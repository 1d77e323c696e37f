#!/usr/bin/env bash
# One default BiCo fit (benchmarks/fit_once.py, MiniLM-L6 -> L3 BBC, 1 thread) at an earlier
# commit and at the working tree, alternated, each in its own process: code drift measured apart
# from a shared machine's drift. Usage: bash benchmarks/ab_fit.sh COMMIT [REPEATS] [PAIR]
# Writes benchmarks/results/fit_ab.txt (the RESULT line of every run).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(mktemp -d)
git worktree add -f "$old" "$1" -q
trap 'git worktree remove --force "$old"' EXIT
out=benchmarks/results/fit_ab.txt
pair=${3:-minilm-l6:minilm-l3}
echo "# bash benchmarks/ab_fit.sh $1 ${2:-2} $pair: old = $1, new = the working tree at $(git rev-parse --short HEAD)" > $out
for i in $(seq "${2:-2}"); do
  for which in old new; do
    if [ $which = old ]; then src=$old/src; else src=src; fi
    echo "$which $i $(OMP_NUM_THREADS=1 python benchmarks/fit_once.py --src "$src" --pair "$pair" 2>/dev/null | grep RESULT)" | tee -a $out
  done
done
