#!/usr/bin/env bash
# The demo behind `make demo`: the quickstart study (dense vs standard MoE vs fine-grained MoE,
# 3 sizes x 5 token budgets from WSD branches, a small batch-size/LR axis) trained on the bundled
# corpus, collected, fitted and reported. About 10 minutes on 2 CPU cores the first time; a
# second call finds everything done and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
M=.venv/bin/moescale
T0=$(date +%s)

echo "== The bundled corpus (moescale corpus build; cached after the first time)"
$M corpus build

echo
echo "== The runs (moescale study examples/quickstart.yaml --dry-run)"
$M study examples/quickstart.yaml --dry-run "$@"

echo
echo "== Train, collect, fit, report (moescale study examples/quickstart.yaml)"
$M study examples/quickstart.yaml "$@"

echo
echo "demo finished in $(( $(date +%s) - T0 )) s. Open runs/quickstart/report.html in a browser;"
echo "the table is runs/quickstart/results.csv, the fits runs/quickstart/study.json."
