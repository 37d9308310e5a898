#!/usr/bin/env bash
# MMUnlearner on LLaVA-1.5 with DeepSpeed ZeRO-2 through accelerate (config: examples/accelerate/zero2.yaml).
#
#   bash examples/accelerate/zero2.sh            # one node, every GPU: mask on GPU 0, then unlearning (MODEL, OUT, PORT)
#   bash examples/accelerate/zero2.sh --tiny     # CPU, 2 processes, tiny LLaVA: the same recipe in seconds (tested)
#
# Any other flag goes to examples/deepspeed/unlearn_llava.py (ScriptArguments, MMUnlearnerConfig).
exec bash "$(dirname "$0")/launch.sh" zero2 "$@"
