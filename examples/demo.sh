#!/usr/bin/env bash
# The demo behind `make demo`: what the models cost, the bundled corpus, a two-minute
# fine-grained MoE run. Re-running resumes or, once done, just reports (add --force to retrain).
set -euo pipefail
cd "$(dirname "$0")/.."
M=.venv/bin/moescale

echo "== 1. What the example models cost (moescale info)"
$M info examples/dense.yaml examples/moe.yaml examples/fine_grained.yaml

echo
echo "== 2. The bundled corpus (moescale corpus build; cached after the first time)"
$M corpus build

echo
echo "== 3. Train a fine-grained MoE, E 8 x G 4, top-2 (moescale train examples/demo.yaml)"
$M train examples/demo.yaml "$@"

echo
.venv/bin/python - <<'PY'
from moescale.run import read_summary

s = read_summary("runs/demo")
print(f"validation loss {s.val_loss:.4f} after {s.tokens:,} tokens "
      f"({s.params_active:,} active of {s.params_total:,} parameters)")
print("run directory: runs/demo (summary.json, metrics.jsonl, train.log, TensorBoard events, "
      "checkpoints/)")
print("TensorBoard: .venv/bin/tensorboard --logdir runs")
PY
