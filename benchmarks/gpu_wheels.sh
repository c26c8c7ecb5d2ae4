#!/usr/bin/env bash
# The wheels that give a machine without internet (the GPU benchmark machine: Python 3.12,
# torch 2.11) torchtitan's MoE layer, the `torchtitan` peer of benchmarks/moe_layer.py.
# Exactly the set `from torchtitan.models.common.moe import MoE` needs beyond that machine's
# packages: torchtitan itself, spmd_types (imported by its modules), tyro and docstring_parser
# (imported by torchtitan.config). tyro's typeguard is imported only when tyro parses a command
# line, which the benchmark never does. No torch: the machine's own is used. About 1.6 MB.
#
# usage: bash benchmarks/gpu_wheels.sh   (there: pip install --no-deps --target D .whl/*.whl)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl \
    torchtitan==0.3.0 spmd_types==0.2.3 tyro==1.0.17 docstring_parser==0.18.0
