# Sourced by reports/run_real_vit.sh and reports/run_real_imdb.sh: where runs go, the scaling
# sizes, and `step NAME COMMAND...`, which runs COMMAND unless runs/real/NAME exists and logs its
# wall time and peak memory (GNU time -v) to runs/real/logs/NAME.time.
Q=--quiet
R=runs/real
L=$R/logs
SC="--per-class 2,8,32 --fractions 0.01,0.05,0.2,1"
mkdir -p $L

step() {
  local name=$1
  shift
  if [ -e "$R/$name" ]; then echo "have $R/$name"; return; fi
  echo "run  $name"
  /usr/bin/time -v -o "$L/$name.time" "$@"
}
