#!/usr/bin/env bash
# Re-derive the digits config cards on the validation split with `dcbench tune` (issue 10, item 5).
#
# One study per (method, IPC) under $OUT/<method>-ipc<N>/ (a re-run continues each study; --trials
# counts finished trials). Each study writes best.toml; copy its values into the method's digits
# cards (methods/trajectory_matching.py `_digits_cards`, methods/dm.py) with a `source` naming the
# study and its budget, then regenerate reports/bench-digits with those cards:
#     dcbench bench --methods random,mtt,tesla,tesla-exact,dm --dataset digits --ipc 1,10 \
#                   --num-eval 5 --threads 1 --no-progress --output reports/bench-digits --overwrite
# and the soft-label TESLA cell the issue asks for (the honest comparison with the same-rule baseline):
#     dcbench run --method tesla --dataset digits --ipc 1 --set labels=sla --num-eval 5 --output runs/tesla-sla-ipc1
#
# Budget (measured on the 2-core CPU build machine, loaded, nice 15, one thread): one tesla IPC 1 trial at the
# current card (200 iterations, 20 steps) took 316 s plus 106 s for the 5 experts of a new lr_teacher
# (each lr_teacher value trains its own experts once; the default space has three). 20 trials of one
# cell: about 1.5-2 h there (pruning shortens it); a quiet machine runs the same iterations ~3x faster.
#
# Usage: OUT=runs/tune-digits TRIALS=20 bash benchmarks/retune_digits.sh
set -euo pipefail

OUT=${OUT:-runs/tune-digits}
TRIALS=${TRIALS:-20}
COMMON=(--dataset digits --trials "$TRIALS" --num-eval 2 --threads 1 --no-progress)

for ipc in 1 10; do
  for method in mtt tesla tesla-exact dm; do
    dcbench tune --method "$method" --ipc "$ipc" "${COMMON[@]}" --output "$OUT/$method-ipc$ipc"
  done
done
