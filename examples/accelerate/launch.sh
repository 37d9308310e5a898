#!/usr/bin/env bash
# Shared body of ddp.sh, fsdp2.sh, zero2.sh and zero3.sh: MMUnlearner on LLaVA-1.5 with `accelerate launch`.
#
#   bash examples/accelerate/launch.sh {ddp|fsdp2|zero2|zero3} [--tiny] [more unlearn_llava.py / MMUnlearnerConfig flags]
#
# GPUs (default): phase 1 computes the saliency mask on one GPU (skipped when it exists), phase 2 unlearns on every
# GPU of the node with the accelerate config examples/accelerate/<launcher>.yaml. Environment: MODEL, OUT, PORT,
# NUM_GPUS (default: the config's num_processes).
# --tiny: the same two commands' CPU twin (tiny LLaVA, built-in benchmark, 2 processes, fp32, 2 steps, the mask
# computed in the training process). `accelerate launch --cpu --num_processes 2` would start ONE process (accelerate's
# behaviour), so the config's launcher is kept and the script runs on CPU (--use_cpu) instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
LAUNCHER=${1:-}
[ $# -gt 0 ] && shift
case "$LAUNCHER" in
  ddp|fsdp2) DS=() ;;
  zero2|zero3) DS=(--deepspeed "examples/deepspeed/$LAUNCHER.json") ;;
  *) echo "unknown launcher '$LAUNCHER': use ddp, fsdp2, zero2 or zero3" >&2; exit 2 ;;
esac
TINY=0
for arg in "$@"; do [ "$arg" = "--tiny" ] && TINY=1; done
SCRIPT=examples/deepspeed/unlearn_llava.py
OUT=${OUT:-runs/llava-mmunlearner-$LAUNCHER}
PORT=${PORT:-29500}
ACCELERATE=(accelerate launch --config_file "examples/accelerate/$LAUNCHER.yaml" --main_process_port "$PORT")
COMMON=(--output_dir "$OUT" --mask_path "$OUT/saliency_mask" --schedule alternate --forget_every 2
        --forget_loss_type ga --lr_scheduler_type constant --report_to none)

if [ "$TINY" = 1 ]; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
  ACCELERATE+=(--num_processes 2)
  [ -z "${DS[*]}" ] && ACCELERATE+=(--mixed_precision no)  # DeepSpeed takes its precision from its JSON
  TRAIN=(--use_cpu --max_steps 2 --per_device_train_batch_size 2 --learning_rate 1e-3 --logging_steps 1 --mask_max_batches 2
         --save_strategy no)
else
  MODEL=${MODEL:-llava-hf/llava-1.5-7b-hf}
  [ -n "${NUM_GPUS:-}" ] && ACCELERATE+=(--num_processes "$NUM_GPUS")
  if [ ! -f "$OUT/saliency_mask/saliency_mask.safetensors" ]; then
    CUDA_VISIBLE_DEVICES=0 python "$SCRIPT" --model_name_or_path "$MODEL" "${COMMON[@]}" --compute_mask \
      --mask_target vision --mask_threshold 1.0 "$@"
  fi
  # Global batch = 1 x 4 x number of GPUs forget rows per optimizer step.
  TRAIN=(--model_name_or_path "$MODEL" --bf16 --per_device_train_batch_size 1 --gradient_accumulation_steps 4
         --gradient_checkpointing --learning_rate 1e-5 --num_train_epochs 5 --logging_steps 10
         --save_strategy epoch --save_total_limit 1)
fi
"${ACCELERATE[@]}" "$SCRIPT" "${COMMON[@]}" "${TRAIN[@]}" ${DS[@]+"${DS[@]}"} "$@"
