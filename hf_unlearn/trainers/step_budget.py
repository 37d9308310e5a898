"""How many optimizer steps ``train()`` will run, known before anything is written.

A run of zero steps is not an unlearning run: ``transformers.Trainer`` would "train", then save the starting model as
the unlearned one without a word. The config refuses the settings that give zero steps on their own
(``num_train_epochs=0``, ``max_steps=0``: ``config_checks.py``); what is left depends on the data: with
``dataloader_drop_last=True``, fewer rows than one global batch give no batch at all.
"""

from __future__ import annotations

import math

__all__ = ["check_trains_some_steps", "planned_optimizer_steps"]


def _batches_per_epoch(args, num_rows: int) -> int:
    global_batch = args.train_batch_size * max(args.world_size, 1)  # train_batch_size counts DataParallel's GPUs
    return num_rows // global_batch if args.dataloader_drop_last else math.ceil(num_rows / global_batch)


def planned_optimizer_steps(args, num_rows: int) -> int:
    """The optimizer steps ``Trainer.train()`` runs on ``num_rows`` anchor rows (``set_initial_training_values``)."""
    batches = _batches_per_epoch(args, num_rows)
    if batches == 0:
        return 0
    if args.max_steps > 0:
        return args.max_steps
    if args.max_steps == 0:
        return 0
    per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    return math.ceil(args.num_train_epochs * per_epoch)


def check_trains_some_steps(args, num_rows: int, anchor: str) -> int:
    """``planned_optimizer_steps``, or a ``ValueError`` naming the numbers that give zero."""
    steps = planned_optimizer_steps(args, num_rows)
    if steps > 0:
        return steps
    global_batch = args.train_batch_size * max(args.world_size, 1)
    if _batches_per_epoch(args, num_rows) == 0:
        cause = (f"{num_rows} {anchor} row(s) (the pairing anchor) make no full batch of {global_batch} "
                 f"(per_device_train_batch_size={args.per_device_train_batch_size} on {max(args.world_size, 1)} "
                 "process(es)) with dataloader_drop_last=True")
        fix = "Use a batch size of at most the number of rows, dataloader_drop_last=False, or more rows."
    else:
        cause = f"max_steps={args.max_steps} and num_train_epochs={args.num_train_epochs}"
        fix = "Set max_steps >= 1, or max_steps=-1 and num_train_epochs > 0."
    raise ValueError(f"This run would train 0 optimizer steps and save the starting model as the unlearned one: "
                     f"{cause}. {fix}")
