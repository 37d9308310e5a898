"""The divergence guard: a step is kept only if its loss, gradients and updated weights are sane.

Gradient ascent is unbounded: at a high learning rate one step can move the weights to 1e8 (finite, so nothing
fails) and the next forward pass is NaN. By then a checkpoint of the broken weights may be on disk. The guard checks,
at every optimizer step:

1. before it: the gradient norm is finite (the loss was checked when it was computed);
2. after it: the update ``||theta_new - theta_old||`` is finite (so are the new weights) and at most
   ``max_update_ratio * ||theta_old||`` (default 1: no fine-tuning step legitimately moves the weights by more than
   their own size);
3. before every save (checkpoint or ``save_model``): the weights are finite and give a finite loss on a fixed
   forget batch, so a checkpoint is never written with weights that would diverge on the next step.

On a failure the weights are put back, bit for bit, to the last state known good (before the failing step; for a
non-finite loss or a failed pre-save check, before the step that produced the weights), nothing more is saved, and
``UnlearningDivergedError`` names the last checkpoint that was verified when it was written.

Cost: one copy of the trainable parameters kept on their device (written in place each step, no allocation) and
three reductions per step; under DeepSpeed the optimizer steps inside backward, so steps 1-2 are skipped there (the
loss and pre-save checks still hold). ``divergence_guard=False`` turns it all off.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback


class UnlearningDivergedError(RuntimeError):
    """Training diverged (a non-finite loss, gradient or update, or an update above ``max_update_ratio``).

    Raised before the failing step is kept: the model in memory holds the last weights known good, and no checkpoint
    was written after them. The message names the last checkpoint verified when saved.
    """


class DivergenceGuard(TrainerCallback):
    """See the module docstring. Created by ``UnlearnTrainer`` when ``args.divergence_guard`` is True."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.params: list[torch.nn.Parameter] = []
        self._snapshot: list[torch.Tensor] = []
        self._has_snapshot = False
        self._probe = None
        self.enabled_steps = False  # per-step checks (off under DeepSpeed)

    # -------------------------------------------------------------------------------------------- set-up
    def on_train_begin(self, args, state, control, **kwargs):
        self.enabled_steps = not self.trainer.is_deepspeed_enabled
        self.params = [p for p in self.trainer.model.parameters() if p.requires_grad] if self.enabled_steps else []
        self._snapshot = [torch.empty_like(p, memory_format=torch.preserve_format) for p in self.params]
        self._has_snapshot = False

    def on_train_end(self, args, state, control, **kwargs):
        self._snapshot, self._has_snapshot = [], False  # free the copy

    # -------------------------------------------------------------------------------------------- per step
    @torch.no_grad()
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not self.enabled_steps or not self.params:
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            norm = _total_norm(grads)
            if not math.isfinite(norm):  # the step has not run: nothing to put back
                self._fail(f"the gradient norm became {norm} at step {state.global_step + 1}",
                           "The step did not run: the model in memory holds the weights before it")
        torch._foreach_copy_(self._snapshot, [p.detach() for p in self.params])
        self._has_snapshot = True

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, **kwargs):
        if not self.enabled_steps or not self._has_snapshot:
            return
        device = self.params[0].device
        update_sq = torch.zeros((), dtype=torch.float32, device=device)
        for p, before in zip(self.params, self._snapshot):  # one parameter at a time: no second full-size copy
            update_sq += torch.linalg.vector_norm((p.detach() - before).float()).to(device) ** 2
        update, weights = math.sqrt(update_sq.item()), _total_norm(self._snapshot)
        ratio = update / weights if weights > 0 else 0.0
        self.trainer._metrics["update_ratio"].append(ratio)
        step = state.global_step + 1
        restored = "The model in memory holds the weights from before that step"
        if not math.isfinite(update):
            self._restore()
            self._fail(f"step {step} made the weights non-finite (update norm {update})", restored)
        bound = args.max_update_ratio
        if bound is not None and weights > 0 and ratio > bound:
            self._restore()
            self._fail(f"step {step} changed the weights by {ratio:.3g} times their norm (update norm {update:.3g}, "
                       f"weight norm {weights:.3g}), above max_update_ratio={bound}", restored)

    # -------------------------------------------------------------------------------------------- loss / saves
    def on_nonfinite_loss(self, what: str) -> None:
        """Called by ``compute_loss``: the current weights give a non-finite loss; put back the ones before them."""
        self._fail(what, self._restore_message())

    @torch.no_grad()
    def verify_before_save(self, what: str) -> dict:
        """Check the weights about to be saved; returns what the manifest records (``{"finite": True, ...}``)."""
        tensors = [p.detach() for p in self.trainer.model.parameters() if p.numel()]
        if tensors and not self.trainer.is_deepspeed_enabled:
            worst = _total_norm(tensors, ord=math.inf)
            if not math.isfinite(worst):
                self._fail(f"the weights about to be saved ({what}) are not finite", self._restore_message())
        loss = self._probe_loss()
        if loss is not None and not math.isfinite(loss):
            self._fail(f"the weights about to be saved ({what}) give a {loss} loss on a forget batch",
                       self._restore_message())
        return {"finite": True, "probe_loss": loss}

    def _probe_loss(self) -> float | None:
        trainer = self.trainer
        dataset = getattr(trainer, "forget_dataset", None)
        if dataset is None or len(dataset) == 0:
            return None
        if self._probe is None:
            n = min(trainer.args.per_device_train_batch_size, len(dataset))
            self._probe = trainer.data_collator.collator([dataset[i] for i in range(n)])
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            outputs = model(**trainer.model_inputs(trainer._prepare_inputs(self._probe)))
        finally:
            model.train(was_training)
        return None if getattr(outputs, "loss", None) is None else outputs.loss.item()

    # -------------------------------------------------------------------------------------------- failure
    @torch.no_grad()
    def _restore(self) -> bool:
        if not self._has_snapshot:
            return False
        torch._foreach_copy_([p.data for p in self.params], self._snapshot)
        return True

    def _restore_message(self) -> str:
        """Put back the weights from before the last step (those whose loss was checked finite)."""
        if self._restore():
            return ("The model in memory holds the weights from before the step that produced them (their loss was "
                    "finite)")
        return "No earlier weights were kept (this happened before the first step): the model in memory is unusable"

    def _fail(self, what: str, memory: str) -> None:
        trainer = self.trainer
        last = trainer.last_verified_checkpoint() if hasattr(trainer, "last_verified_checkpoint") else None
        checkpoint = (f"the last checkpoint verified finite when saved is {last}" if last
                      else "no checkpoint verified finite was saved in output_dir")
        raise UnlearningDivergedError(
            f"Unlearning diverged: {what}. Training stopped and nothing more was saved. {memory}; {checkpoint}. "
            "Lower `learning_rate`, set `stop_forget_loss_above`, use a bounded forget loss (NPOTrainer), or add a "
            "retain term."
        )


def _total_norm(tensors: list[torch.Tensor], ord: float = 2.0) -> float:
    """The ``ord``-norm over all ``tensors`` as a float (one reduction per device, one sync)."""
    norms = torch._foreach_norm(tensors, ord)
    device = norms[0].device
    stacked = torch.stack([n.float().to(device) for n in norms])
    return torch.linalg.vector_norm(stacked, ord).item()
