#!/usr/bin/env bash
# Install (see setup.sh) and run the whole test suite, slow tests included.
#
#   bash scripts/test.sh [pytest args]            in .venv, the locked versions (what CI runs)
#   bash scripts/test.sh --latest [pytest args]   in .venv-latest, the newest releases (drift check, docs/install.md)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
if [ "${1:-}" = "--latest" ]; then
  shift
  VENV=.venv-latest
  bash scripts/setup.sh --latest
else
  bash scripts/setup.sh
fi
export HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false
# One test worker per core (pytest-xdist), each file on one worker: the expensive session fixtures are built once and
# shared (tests/conftest.py: built_once). HF_UNLEARN_TEST_WORKERS=0 runs in this process.
exec "$VENV/bin/python" -m pytest -q -n "${HF_UNLEARN_TEST_WORKERS:-2}" --dist loadfile "$@"
