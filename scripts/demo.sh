#!/usr/bin/env bash
# Install (see setup.sh) and run the main job: every method on the built-in benchmark, results in ./demo_output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/hf-unlearn demo --output demo_output "$@"
