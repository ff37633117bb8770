#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.sh installs on the GPU machine (Python 3.12, x86_64 Linux,
# no network there) into the git-ignored folder .whl/. Run it on a machine that reaches the package
# registry, then name .whl in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 --dest .whl kornia==0.9.0 kornia_rs==0.2.0
ls -la .whl
