#!/usr/bin/env bash
# The GPU checks of the speed issue as one script, for a machine with a CUDA GPU and no network
# (the device machine: torch and the project's other needs in a venv, the rest carried as wheels).
#
#   benchmarks/gpu_check.sh [WHEELS_DIR] [OUT_DIR]     # defaults: .wheels and $OUT (or /tmp/gpu_check)
#
# 1. installs the wheels the machine's Python lacks (soundfile, cffi, pycparser, espeakng-loader:
#    `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 ...`
#    into WHEELS_DIR beforehand) into a temporary folder put on PYTHONPATH with the checkout;
# 2. runs the tests that exercise CUDA where it is present (no host synchronisation in sampling,
#    rollouts and estimators; tensor placement; estimator shapes on every device);
# 3. benchmarks/speech_step.py on the GPU (CTC beside the hard-alignment model, K = 4 and 16);
# 4. recipes/timit/run.sh end to end on the GPU: corpus, features, MINUTES of training, evaluation,
#    decoding and an alignment picture.
# Environment: PY (default /opt/torch/.venv/bin/python3, called by its path: a symlink loses the
# venv), DEVICE (default cuda; cpu for a dry run), MINUTES (default 3). Everything lands in OUT_DIR.
set -euo pipefail

py=${PY:-/opt/torch/.venv/bin/python3}
wheels=${1:-.wheels}
out=${2:-${OUT:-/tmp/gpu_check}}
device=${DEVICE:-cuda}
minutes=${MINUTES:-3}
mkdir -p "$out"
site=$(mktemp -d)
bin=$(mktemp -d)
"$py" -m pip install --quiet --no-index --no-deps --target "$site" "$wheels"/*.whl
# `python` for the recipe's stages: this interpreter by its own path
printf '#!/bin/sh\nexec "%s" "$@"\n' "$py" > "$bin/python"
chmod +x "$bin/python"
export PATH="$bin:$PATH" PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
started=$SECONDS
step() { echo "[gpu_check] $1 ($((SECONDS - started)) s)"; }

step "device"
python -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee "$out/device.txt"

step "tests"
python -m pytest -q -p no:cacheprovider tests/core/test_sampling.py tests/core/test_attention.py \
  tests/core/test_placement.py tests/estimators/test_conformance.py 2>&1 | tee "$out/tests.txt" | tail -3

step "training step table"
python benchmarks/speech_step.py --device "$device" --posteriors lattice --estimators vimco-seq,vimco \
  --samples 4,16 --rounds 2 --out "$out/speech_step_$device.md" | tail -8

step "recipe"
recipes/timit/run.sh --exp "$out/exp" --nproc 1 --plots 1 -- --device "$device" --max-minutes "$minutes" \
  > "$out/recipe.txt" 2>&1 || { tail -40 "$out/recipe.txt"; exit 1; }
grep -E "^\[run.sh\]|PER" "$out/recipe.txt" | tail -12
step "done"
