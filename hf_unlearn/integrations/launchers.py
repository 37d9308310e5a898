"""One micro-batch of an unlearning step under whatever launcher runs it: the launcher special cases, in one place.

An unlearning step runs several forward/backward passes (forget and retain terms, masked and unmasked parts) whose
parameters differ between passes and between ranks: a text-only retain batch skips the vision tower, an image batch
on the next rank does not. Each launcher synchronises per pass in its own way, and each breaks differently
(docs/distributed.md); this picks the launcher's fix:

* DDP: the reducer stays idle, gradients averaged once per optimizer step (``ddp.one_sync_per_step``).
* DeepSpeed ZeRO-1/2: every backward touches every trainable parameter, so the ranks' buckets match
  (``deepspeed.touch_every_parameter``).
* DeepSpeed ZeRO-3: weights are gathered per module in forward; ranks must run the same modules. A step whose
  batches differ in having images is refused with an error instead of a hang (``deepspeed.check_images_agree``).
* FSDP2: handled per pass and at train begin (``fsdp.FSDPTrainingCallback``, ``fsdp.check_gradient_agreement``).
* One process: nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from .ddp import is_ddp, one_sync_per_step


@contextmanager
def unlearning_step(trainer, model, inputs: dict) -> Iterator[None]:
    """Wrap ``Trainer.training_step`` of one micro-batch (``model`` is the wrapped model the Trainer passes)."""
    if trainer.is_deepspeed_enabled:
        from . import deepspeed

        if is_deepspeed_zero3_enabled():
            deepspeed.check_images_agree(inputs, trainer.args.device)
        else:
            deepspeed.touch_every_parameter(trainer.accelerator)
        yield
    elif is_ddp(model):
        with one_sync_per_step(model, trainer.accelerator):
            yield
    else:
        yield
