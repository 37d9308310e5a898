"""The divergence guard: an optimizer step is kept only if its loss and its updated weights are sane.

Gradient ascent is unbounded: at a high learning rate one step can move the weights to 1e8 (finite, so nothing
fails) and the next forward pass is NaN. By then a checkpoint of the broken weights may be on disk. The guard checks:

1. every loss as it is computed (``compute_loss``), before its backward pass;
2. after every optimizer step, the norm of the trainable weights: it must be finite (a non-finite gradient or an
   overflowing update shows here; the message says which) and may change by at most ``max_weight_norm_change`` times
   itself (default 1.0, i.e. it more than doubled: no fine-tuning step legitimately does that);
3. before every save (checkpoint or ``save_model``): the weights are finite and give a finite loss on a fixed forget
   batch, so a checkpoint is never written with weights whose next forward pass diverges.

On a failure the weights are put back, bit for bit, to the last state known good (before the failing step; for a
non-finite loss or a failed pre-save check, before the step that produced the weights), nothing more is saved, and
``UnlearningDivergedError`` names the last checkpoint that was verified when it was written.

Cost per step: one in-place copy of the trainable parameters (kept on their device, allocated once) and two fused
norms; no second temporary copy, one host sync. The norm change is a lower bound of the update's size
(``| ||a|| - ||b|| | <= ||a - b||``), which is what makes the check cheap: the exact update norm would need a
subtraction over every weight. Under DeepSpeed the optimizer steps inside backward, so check 2 is skipped there (1
and 3 hold). Under FSDP2 each rank copies its own shards and the norms are summed over the ranks, so every rank takes
the same decision. ``divergence_guard=False`` turns everything off.
"""

from __future__ import annotations

import math

import torch


class UnlearningDivergedError(RuntimeError):
    """Training diverged (a non-finite loss or weights, or a weight-norm change above ``max_weight_norm_change``).

    Raised before the failing step is kept: the model in memory holds the last weights known good, and no checkpoint
    was written after them. The message names the last checkpoint verified when saved.
    """


class DivergenceGuard:
    """See the module docstring. Created by ``UnlearnTrainer`` when ``args.divergence_guard`` is True; a weight editor
    it runs last after every optimizer step (``UnlearnTrainer.weight_editors``)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.params: list[torch.nn.Parameter] = []
        self._snapshot: list[torch.Tensor] = []
        self._has_snapshot = False
        self._check_batch = None
        self.enabled_steps = False  # per-step checks (off under DeepSpeed)

    # -------------------------------------------------------------------------------------------- set-up
    def begin_training(self) -> None:
        self.enabled_steps = not self.trainer.is_deepspeed_enabled
        self._snapshot, self._has_snapshot, self._norm_before = [], False, None

    def _trainable_locals(self) -> list[torch.Tensor]:
        # Looked up at each step: under FSDP2 the registered parameters are the shards only between steps (a forward
        # outside training, e.g. the probe's, leaves full tensors registered that the next backward frees).
        self.params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        return [_local(p) for p in self.params]

    def end_training(self) -> None:
        self._snapshot, self._has_snapshot = [], False  # free the copy

    # -------------------------------------------------------------------------------------------- per step
    @torch.no_grad()
    def before_step(self) -> None:
        if not self.enabled_steps:
            return
        local = self._trainable_locals()
        if not local:
            return
        if [t.shape for t in self._snapshot] != [t.shape for t in local]:
            self._snapshot = [torch.empty_like(t) for t in local]  # allocated once
        torch._foreach_copy_(self._snapshot, local)
        self._norm_before = _norm_tensor(local)  # no sync yet
        self._has_snapshot = True

    @torch.no_grad()
    def after_step(self) -> None:
        if not self.enabled_steps or not self._has_snapshot:
            return
        norms = torch.stack([self._norm_before, _norm_tensor([_local(p) for p in self.params])])
        before, after = _sum_over_shards(norms ** 2, self.params).sqrt().tolist()  # the one sync
        step = self.trainer.state.global_step + 1
        if not math.isfinite(after):
            norm = self._gradient_norm()
            self._restore()
            cause = (f"the gradient norm was {norm}" if not math.isfinite(norm)
                     else "the gradients were finite: the update overflowed")
            self._fail(f"step {step} made the weights non-finite ({cause})",
                       "The model in memory holds the weights from before that step")
        change = abs(after - before) / before if before > 0 else 0.0
        self.trainer.record_metric("weight_norm_change", change)
        bound = self.trainer.args.max_weight_norm_change
        if bound is not None and change > bound:
            self._restore()
            self._fail(f"step {step} changed the weight norm from {before:.4g} to {after:.4g} ({change:.3g} times "
                       f"itself), above max_weight_norm_change={bound}",
                       "The model in memory holds the weights from before that step")

    @torch.no_grad()
    def _gradient_norm(self) -> float:
        """The norm of the whole gradient (NaN when no parameter has one). Under FSDP2 each rank holds a shard of it:
        summed over the ranks, so every rank names the same cause (a NaN in one shard is every rank's NaN)."""
        grads = [_local(p.grad) for p in self.params if p.grad is not None]
        device = _local(self.params[0]).device
        squared = _norm_tensor(grads) ** 2 if grads else torch.zeros((), device=device)
        count = torch.tensor(float(len(grads)), device=squared.device)
        squared, count = _sum_over_shards(torch.stack([squared, count]), self.params).tolist()
        return math.sqrt(squared) if count else float("nan")

    # -------------------------------------------------------------------------------------------- loss / saves
    def on_nonfinite_loss(self, what: str) -> None:
        """Called by ``compute_loss``: the current weights give a non-finite loss; put back the ones before them."""
        self._fail(what, self._restore_message())

    @torch.no_grad()
    def verify_before_save(self, what: str) -> dict:
        """Check the weights about to be saved; returns what the manifest records (``{"finite": True, ...}``)."""
        # Floating-point weights only: a 4-bit / 8-bit base (QLoRA) stores integers, which cannot be non-finite
        params = [p for p in self.trainer.model.parameters() if p.numel() and (p.is_floating_point() or p.is_complex())]
        tensors = [_local(p.detach()) for p in params]
        tensors = [t for t in tensors if t.numel()]
        if tensors and not self.trainer.is_deepspeed_enabled:
            worst = _sum_over_shards(_norm_tensor(tensors, ord=math.inf), params, op="max").item()
            if not math.isfinite(worst):
                self._fail(f"the weights about to be saved ({what}) are not finite", self._restore_message())
        loss = self._check_batch_loss()
        if loss is not None and not math.isfinite(loss):
            self._fail(f"the weights about to be saved ({what}) give a {loss} loss on a forget batch",
                       self._restore_message())
        return {"finite": True, "probe_loss": loss}

    def _check_batch_loss(self) -> float | None:
        trainer = self.trainer
        dataset = getattr(trainer, "forget_dataset", None)
        if dataset is None or len(dataset) == 0:
            return None
        if self._check_batch is None:
            n = min(trainer.args.per_device_train_batch_size, len(dataset))
            self._check_batch = trainer.row_collator([dataset[i] for i in range(n)])
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            outputs = model(**trainer.model_inputs(trainer._prepare_inputs(self._check_batch)))
        finally:
            model.train(was_training)
        return None if getattr(outputs, "loss", None) is None else outputs.loss.item()

    # -------------------------------------------------------------------------------------------- failure
    @torch.no_grad()
    def _restore(self) -> bool:
        if not self._has_snapshot:
            return False
        torch._foreach_copy_([_local(p) for p in self.params], self._snapshot)
        return True

    def _restore_message(self) -> str:
        """Put back the weights from before the last step (those whose loss was checked finite)."""
        if self._restore():
            return ("The model in memory holds the weights from before the step that produced them (their loss was "
                    "finite)")
        if self.trainer.state.global_step == 0:
            return ("No step had run: the starting weights already give it (check the data, the labels and the "
                    "model's dtype)")
        return "No step of this run had been kept yet: the model in memory holds the weights that give it"

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


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 (DTensor) parameter or gradient; the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _sum_over_shards(values: torch.Tensor, params: list[torch.Tensor], op: str = "sum") -> torch.Tensor:
    """Combine per-rank values over the ranks when the parameters are sharded (DTensors); as is otherwise (DDP
    replicas hold the same weights, one process holds all of them)."""
    if not any(hasattr(p, "to_local") for p in params):
        return values
    import torch.distributed as dist

    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return out


def _norm_tensor(tensors: list[torch.Tensor], ord: float = 2.0) -> torch.Tensor:
    """The ``ord``-norm over all ``tensors`` as a 0-d fp32 tensor (fused per device; no host sync)."""
    norms = torch._foreach_norm(tensors, ord)
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.float().to(device) for n in norms]), ord)
