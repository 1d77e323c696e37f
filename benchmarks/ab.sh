#!/usr/bin/env bash
# A command run at an earlier commit and at the working tree, alternated, each run in its own
# process: a regression check measured side by side. {tree} in the command stands for the tree
# under test (a worktree of COMMIT, or "."). Keeps each run's RESULT line in results/NAME.txt.
# Usage: bash benchmarks/ab.sh NAME COMMIT REPEATS COMMAND...
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 commit=$2 repeats=$3
shift 3
old=$(mktemp -d)
git worktree add -f "$old" "$commit" -q
trap 'git worktree remove --force "$old"' EXIT
out=benchmarks/results/$name.txt
echo "# $*: old = $commit, new = the working tree at $(git rev-parse --short HEAD), $repeats x alternated" > "$out"
for i in $(seq "$repeats"); do
  for which in old new; do
    if [ $which = old ]; then tree=$old; else tree=.; fi
    echo "$which $i $("${@//\{tree\}/$tree}" 2>/dev/null | grep RESULT)" | tee -a "$out"
  done
done
