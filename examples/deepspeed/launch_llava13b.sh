#!/usr/bin/env bash
# MMUnlearner on llava-hf/llava-1.5-13b-hf with DeepSpeed ZeRO-3 on one node with 8 GPUs (80 GB each).
#
#   bash examples/deepspeed/launch_llava13b.sh            # from the repository root
#
#   MASK_TARGET=language bash examples/deepspeed/launch_llava13b.sh   # the official MMUnlearner: language mask
#
# MASK_TARGET=vision (default): the mask over the vision tower + projector, computed on one GPU; the language model
# stays frozen. MASK_TARGET=language (the official MMUnlearner): the mask over the language model, computed under
# ZeRO-3 across the same GPUs (each rank keeps the fp32 Fisher sums of its own partition), then every parameter trains.
# Memory per GPU (hf-unlearn estimate-memory examples/deepspeed/llava-1.5-13b-config.json --num-gpus 8): ZeRO-3 ~4.4
# GiB of model states + masks with the language model frozen (--trainable vision); language mask computation 15.8
# GiB, training every parameter 28.8 GiB (35.0 with the alternate schedule's saved values); plus activations. On GPUs
# with less memory use DS_CONFIG=examples/deepspeed/zero3_offload.json.
set -euo pipefail

MODEL=${MODEL:-llava-hf/llava-1.5-13b-hf}
BENCHMARK=${BENCHMARK:-MLLMMU/MLLMU-Bench}     # repo id or local folder
FORGET_SPLIT=${FORGET_SPLIT:-forget_5}
OUT=${OUT:-runs/llava-1.5-13b-mmunlearner}
DS_CONFIG=${DS_CONFIG:-examples/deepspeed/zero3.json}
NUM_GPUS=${NUM_GPUS:-8}
PORT=${PORT:-29500}
MASK_TARGET=${MASK_TARGET:-vision}

COMMON=(--model_name_or_path "$MODEL" --benchmark "$BENCHMARK" --forget_split "$FORGET_SPLIT"
        --mask_path "$OUT/saliency_mask" --output_dir "$OUT")

# 1. Saliency mask (MMUnlearner's Fisher ratio).
TRAIN_EXTRA=()
if [ ! -f "$OUT/saliency_mask/saliency_mask.safetensors" ]; then
  if [ "$MASK_TARGET" = vision ]; then  # vision tower + projector: one GPU (the fp32 sums in CPU RAM)
    CUDA_VISIBLE_DEVICES=0 python examples/deepspeed/unlearn_llava.py "${COMMON[@]}" --compute_mask \
      --mask_target vision --mask_threshold 1.0
  else  # the language model: partitioned over every GPU, each rank summing its own partition
    torchrun --nproc_per_node "$NUM_GPUS" --master_port "$PORT" examples/deepspeed/unlearn_llava.py "${COMMON[@]}" \
      --compute_mask --mask_target "$MASK_TARGET" --mask_threshold 1.0 --deepspeed examples/deepspeed/zero3.json --bf16
  fi
fi
# The official MMUnlearner masks the language model and trains every parameter (the vision tower unmasked).
[ "$MASK_TARGET" = vision ] || TRAIN_EXTRA=(--freeze_unmasked_parameters False)

# 2. Unlearning: 8 processes, ZeRO-3, bf16. Global batch = 1 x 4 x 8 = 32 forget rows per optimizer step.
torchrun --nproc_per_node "$NUM_GPUS" --master_port "$PORT" examples/deepspeed/unlearn_llava.py "${COMMON[@]}" \
  --deepspeed "$DS_CONFIG" --bf16 \
  --per_device_train_batch_size 1 --gradient_accumulation_steps 4 --gradient_checkpointing \
  --learning_rate 1e-5 --num_train_epochs 5 --lr_scheduler_type constant --warmup_steps 0 \
  --schedule alternate --forget_every 2 --forget_loss_type ga \
  --logging_steps 10 --save_strategy epoch --save_total_limit 1 --report_to none "${TRAIN_EXTRA[@]}"

# Same run with accelerate instead of torchrun:
#   accelerate launch --use_deepspeed --deepspeed_config_file "$DS_CONFIG" --num_processes "$NUM_GPUS" \
#     --num_machines 1 --main_process_port "$PORT" --mixed_precision bf16 --dynamo_backend no \
#     examples/deepspeed/unlearn_llava.py "${COMMON[@]}" --deepspeed "$DS_CONFIG" --bf16 ...
