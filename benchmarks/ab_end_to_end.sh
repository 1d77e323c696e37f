#!/usr/bin/env bash
# tasklift's end-to-end N = 2000 pipeline (bench_end_to_end.py --one tasklift, each tree's own
# copy) at an earlier commit and at the working tree, alternated (benchmarks/ab.sh).
# Usage: bash benchmarks/ab_end_to_end.sh COMMIT [REPEATS]; writes results/end_to_end_ab.txt.
exec bash "$(dirname "$0")/ab.sh" end_to_end_ab "$1" "${2:-2}" \
  python "{tree}/benchmarks/bench_end_to_end.py" --one tasklift --n 2000
