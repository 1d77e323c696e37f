#!/usr/bin/env bash
# One default BiCo fit (benchmarks/fit_once.py, MiniLM-L6 -> L3 BBC, 1 thread) on an earlier
# commit's source and on the working tree's, alternated (benchmarks/ab.sh): code drift measured
# apart from a shared machine's drift.
# Usage: bash benchmarks/ab_fit.sh COMMIT [REPEATS] [PAIR]; writes results/fit_ab.txt.
exec bash "$(dirname "$0")/ab.sh" fit_ab "$1" "${2:-2}" env OMP_NUM_THREADS=1 \
  python benchmarks/fit_once.py --src "{tree}/src" --pair "${3:-minilm-l6:minilm-l3}"
