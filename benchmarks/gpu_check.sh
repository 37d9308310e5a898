#!/usr/bin/env bash
# One prepared GPU check of hf_unlearn (issue 27): bf16 step times of Trainer / GA / NPO (precomputed) / MMUnlearner
# (masked) / VKD as ratios, their peak GPU memory, masked-entry exactness under bf16 AdamW and the saliency pass, in
# one table (benchmarks/gpu_check.py says what each row measures). Runs in a few minutes on one GPU, offline, with
# the Python found there; every run is capped at 8 minutes.
#
#   bash benchmarks/gpu_check.sh --cpu --tiny          # the CPU smoke path (the test suite runs it)
#   bash benchmarks/gpu_check.sh                       # one GPU, the 157M real LLaVA (its wheels installed)
#   bash benchmarks/gpu_check.sh --prepare .gpu_assets # here, with the network: config + processor, missing wheels
#   bash benchmarks/gpu_check.sh --assets .gpu_assets  # there: installs the carried wheels into /tmp, then runs
#
# A GPU machine without datasets / trl / this transformers: run --prepare where pip works (ignore the folder in
# .git/info/exclude), carry it, and pass --assets: its wheels go to /tmp/hf_unlearn_site (first on PYTHONPATH) and
# its model/ folder (the real LLaVA's config and processor, 3.5 MB, no weights) gives the architecture, with weights
# drawn at random. hf_unlearn itself is imported from this tree. With $OUT set, the results also go to
# $OUT/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ASSETS=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" benchmarks/gpu_check.py --prepare "$2" ;;
    --assets) ASSETS=$2; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ -n "$ASSETS" ]; then
  if compgen -G "$ASSETS/wheels/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hf_unlearn_site \
      "$ASSETS"/wheels/*.whl
    export PYTHONPATH="/tmp/hf_unlearn_site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  [ -d "$ASSETS/model" ] && ARGS=(--model-dir "$ASSETS/model" "${ARGS[@]}")
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export DS_ACCELERATOR=${DS_ACCELERATOR:-$([[ " ${ARGS[*]} " == *" --cpu "* ]] && echo cpu || echo cuda)}
exec timeout 480 "$PY" benchmarks/gpu_check.py "${ARGS[@]}"
