#!/usr/bin/env bash
# Install (see setup.sh) and run the main job: every method on the built-in benchmark, results in ./demo_output.
# Benchmark v3 runs one worker process per core, at most 4 (a seed's methods and checks are shared out; the numbers
# are those of one process); the other benchmarks run in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case " $* " in
  *" --v2 "* | *" --real "* | *" --text "* | *" --workers "*) workers=() ;;
  *) workers=(--workers "$(python3 -c 'import os; print(min(os.cpu_count() or 1, 4))')") ;;
esac
exec .venv/bin/hf-unlearn demo --output demo_output "${workers[@]}" "$@"
