#!/bin/bash
# The speed table's `make run` rows (benchmarks/README.md): a fresh clone's `make run` (install included), timed with
# `date`, with the CPU and its precision.  Run it with nothing else running on the machine.
#   benchmarks/time_make_run.sh                  # the default executor
#   benchmarks/time_make_run.sh --workers 1      # one task after another
set -u
src=$(git rev-parse --show-toplevel) && dest=$(mktemp -d)/mistudy
git clone -q "$src" "$dest" && cd "$dest" && git log --oneline -1 | cut -c1-80
lscpu | grep -E "Model name|^CPU\(s\)"
grep -o -m1 'amx_bf16\|avx512_bf16' /proc/cpuinfo || echo "no native bf16: the CPU profiles train in float32"
start=$(date +%s)
make run ARGS="$*" > make-run.log 2>&1; rc=$?
echo "make run $* rc=$rc: $(( $(date +%s) - start )) s wall (install included); log: $dest/make-run.log"
grep -E "study finished|done in" make-run.log | tail -12
