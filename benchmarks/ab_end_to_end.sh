#!/usr/bin/env bash
# tasklift's end-to-end N = 2000 pipeline (bench_end_to_end.py --one tasklift) at an earlier
# commit and at the working tree, alternated, each run in its own process: a regression check
# measured side by side. Usage: bash benchmarks/ab_end_to_end.sh COMMIT [REPEATS]
# Writes benchmarks/results/end_to_end_ab.txt (the RESULT line of every run).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(mktemp -d)
git worktree add -f "$old" "$1" -q
trap 'git worktree remove --force "$old"' EXIT
out=benchmarks/results/end_to_end_ab.txt
echo "# bash benchmarks/ab_end_to_end.sh $1 ${2:-2}: old = $1, new = the working tree at $(git rev-parse --short HEAD)" > $out
for i in $(seq "${2:-2}"); do
  for which in old new; do
    if [ $which = old ]; then s=$old/benchmarks/bench_end_to_end.py; else s=benchmarks/bench_end_to_end.py; fi
    echo "$which $i $(python "$s" --one tasklift --n 2000 2>/dev/null | grep RESULT)" | tee -a $out
  done
done
