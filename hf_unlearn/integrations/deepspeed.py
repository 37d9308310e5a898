"""Every DeepSpeed special case of hf_unlearn lives here (ZeRO-1/2/3, with or without CPU offload).

Why this module exists (research/environment.md §5, hf-conventions.md §4):

* accelerate's ``DeepSpeedEngineWrapper.backward`` runs ``engine.backward`` **and** ``engine.step()`` at the
  accumulation boundary, so a trainer cannot act "between backward and step" and a step that needs two backward
  passes (masked forget gradient, then unmasked retain gradient) would step after the first. ``install_step_control``
  replaces that method once with the same three calls plus two hooks: a *deferral* flag (``defer_step_unless``) and
  a masked-step guard around ``engine.step()``.
* The optimizer under ZeRO updates fp32 master weights that live in flat partitions, not in ``param.data``; the
  exact-mask restore (``ZeroMaskedStep``) therefore puts masked entries back in the master partition *and* in the
  working (module) parameter. It only ever touches this rank's partition and saves only its masked entries, and only
  when something can move them (``GradientMasker.protected``): at most ``4 bytes x masked entries / world size``
  per rank.
* Gradients: under ZeRO-1/2 by the hooks of ``hf_unlearn.masking.GradientMasker`` (registered before DeepSpeed
  initialises, they see full-shape gradients before DeepSpeed's reduce hooks: measured), with full-shape masks. Under
  ZeRO-3 each rank keeps only its shard of each mask, bit-packed (``shard_masks``: 1 bit per entry / world size),
  and masks the reduce-scattered gradient partitions before DeepSpeed accumulates them
  (``DeepSpeedZeroOptimizer_Stage3.partition_grads``), so no rank ever holds a full-shape mask.

Collectives: ``gather_full_fp32_params`` and the restore under ZeRO-1/2 (one all-reduce per masked parameter) and of
ZeRO-3 persistent parameters are collective calls; every rank runs the same training steps, so they line up.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = [
    "check_images_agree",
    "defer_step_unless",
    "full_grad",
    "gather_full_fp32_params",
    "install_masked_step",
    "install_step_control",
    "mask_fingerprint",
    "param_shape",
    "prepare_for_inference",
    "shard_masks",
    "touch_every_parameter",
    "ZeroMaskedStep",
]


# ----------------------------------------------------------------------------------------------------------------
# Small helpers usable without DeepSpeed installed
# ----------------------------------------------------------------------------------------------------------------
def _is_zero3_param(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def param_shape(param: torch.Tensor) -> torch.Size:
    """The parameter's real shape, also under ZeRO-3 where ``param.shape`` is ``[0]`` outside a gathered context."""
    return param.ds_shape if _is_zero3_param(param) else param.shape


def full_grad(param: nn.Parameter) -> torch.Tensor | None:
    """The full (all-rank) gradient of ``param`` after a backward pass, ``None`` if it has none.

    Plain training and DDP: ``param.grad``. Under DeepSpeed ZeRO the gradient lives in reduced, partitioned buffers
    (``param.grad`` is ``None`` after the reduce hooks): ``deepspeed.utils.safe_get_full_grad``, a collective every
    rank must call for the same parameters in the same order, valid after ``engine.backward`` and before
    ``engine.step``. Under ZeRO the backward must be ``engine.backward(loss)`` (or ``accelerator.backward``), so the
    reduce hooks run.
    """
    if not (_is_zero3_param(param) or hasattr(param, "_hp_mapping")):
        return param.grad
    from deepspeed.utils import safe_get_full_grad

    return safe_get_full_grad(param)


def _dist_rank(group=None) -> int:
    import deepspeed.comm as dist

    return dist.get_rank(group=group)


# ----------------------------------------------------------------------------------------------------------------
# Reference / teacher models
# ----------------------------------------------------------------------------------------------------------------
def prepare_for_inference(model: nn.Module, accelerator) -> nn.Module:
    """Wrap a frozen model (NPO / KL reference, VKD teacher) the way the policy is distributed.

    ZeRO-3: a sharded DeepSpeed inference engine (each rank holds 1/N of the weights; every rank must run the same
    forward passes, which it does since all ranks take the same steps). Stages 0-2: a stage-0 replica per rank.
    Load a ZeRO-3 reference with ``from_pretrained`` *after* creating the ``TrainingArguments`` so it is partitioned
    while loading (``zero.Init``); a deep copy of a partitioned policy is not a model.
    """
    from trl.models.utils import prepare_deepspeed

    model.eval().requires_grad_(False)
    return prepare_deepspeed(model, accelerator)


def _engine_of(accelerator):
    wrapper = getattr(accelerator, "deepspeed_engine_wrapped", None)
    if wrapper is None:
        raise RuntimeError(
            "DeepSpeed is enabled but the engine is not built yet: call this after `accelerator.prepare(model)` "
            "(the Trainer does it at the start of `train()`)."
        )
    return wrapper


# ----------------------------------------------------------------------------------------------------------------
# Step control: deferral of engine.step() and the masked-step guard
# ----------------------------------------------------------------------------------------------------------------
class _StepControl:
    """Replacement of ``DeepSpeedEngineWrapper.backward`` (accelerate 1.x) with deferral and a step guard."""

    def __init__(self, wrapper):
        engine = wrapper.engine
        for method in ("set_gradient_accumulation_boundary", "backward", "step"):
            if not hasattr(engine, method):
                raise RuntimeError(f"This DeepSpeed engine has no `{method}`; hf_unlearn needs deepspeed >= 0.14.")
        self.wrapper, self.engine = wrapper, engine
        self.defer = False  # True while a non-last backward of a multi-pass step runs
        self.guard: ZeroMaskedStep | None = None
        self.should_guard: Callable[[], bool] = lambda: False
        self._touch: torch.Tensor | None = None  # ZeRO-1/2: see touch_every_parameter()
        self._touch_hook = None
        wrapper.backward = self.backward

    def enable_touch(self) -> None:
        if self._touch_hook is not None:
            return
        trainable = [p for p in self.engine.module.parameters() if p.requires_grad]

        def before_forward(module, args):
            # Built before the pass's first forward, so autograd runs it after the whole real graph (it visits
            # nodes from the most recently created): every parameter's gradient is then complete, and handed to
            # DeepSpeed's reduce hooks, in this same order on every rank.
            if self._touch is None and torch.is_grad_enabled() and module.training:
                self._touch = 0.0 * sum(p.sum() for p in trainable)

        self._touch_hook = self.engine.module.register_forward_pre_hook(before_forward)

    def backward(self, loss: torch.Tensor, sync_gradients: bool = True, **kwargs) -> None:
        if self._touch is not None:
            loss, self._touch = loss + self._touch, None
        # Same three calls as accelerate's wrapper; a deferred pass is an accumulation micro-step (no step).
        boundary = bool(sync_gradients) and not self.defer
        self.engine.set_gradient_accumulation_boundary(is_boundary=boundary)
        self.engine.backward(loss, **kwargs)
        if not boundary:
            return
        guard = self.guard if self.guard is not None and self.should_guard() else None
        if guard is not None:
            guard.snapshot()
        self.engine.step()  # clip, optimizer step, zero_grad, scheduler
        if guard is not None:
            guard.restore()


def install_step_control(accelerator) -> _StepControl:
    """Replace ``accelerator.deepspeed_engine_wrapped.backward`` once (idempotent) and return the controller."""
    wrapper = _engine_of(accelerator)
    control = getattr(wrapper, "_hf_unlearn_step_control", None)
    if control is None or control.engine is not wrapper.engine:
        control = _StepControl(wrapper)
        wrapper._hf_unlearn_step_control = control
    return control


def touch_every_parameter(accelerator) -> None:
    """ZeRO-1/2: every backward gives every trainable parameter a gradient, in the same order on every rank.

    ZeRO-1/2 reduces the gradients a backward produced in buckets filled in the order they become ready. An
    unlearning step's passes touch different parameters on different ranks (a text-only retain batch on one rank
    leaves the vision tower without gradient, the other rank's does not): the buckets then differ in size (gloo:
    "Received data size doesn't match expected size") or, worse, only in order, and the all-reduce silently adds
    unrelated entries (measured: final weights off by 5e-4 after 3 steps). A zero term ``0 * sum(p.sum())`` over the
    trainable parameters, built before each pass's first forward and added to its loss, gives every parameter a
    gradient and makes them all complete at the very end of the backward, in the term's fixed order. Gradients are
    unchanged (``x + 0``); a parameter no pass reaches gets a zero gradient, which DeepSpeed's flat optimizer
    partitions give it anyway. The reduction then no longer overlaps the backward. Idempotent.
    """
    install_step_control(accelerator).enable_touch()


@contextmanager
def defer_step_unless(accelerator, last: bool) -> Iterator[None]:
    """Run one backward pass of a multi-pass optimizer step: unless ``last``, DeepSpeed accumulates and does not step.

    Used by ``UnlearnTrainer`` for the masked-forget / unmasked-retain two-pass step. DeepSpeed scales nothing here
    (the Trainer passes ``scale_wrt_gas=False``); gradients of the passes add up as accumulation micro-steps.
    """
    control = install_step_control(accelerator)
    previous, control.defer = control.defer, not last
    try:
        yield
    finally:
        control.defer = previous


# ----------------------------------------------------------------------------------------------------------------
# ZeRO-3: sharded masks and masking of the gradient partitions
# ----------------------------------------------------------------------------------------------------------------
def _zero3_local_slice(param, flat: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a flat full-shape tensor, aligned with its ZeRO-3 partition (padded with True)."""
    size = param.ds_tensor.ds_numel
    start = _dist_rank(getattr(param, "ds_process_group", None)) * size
    local = flat[start:start + size]
    if local.numel() < size:  # padding at the end of the last partition: nothing to mask or restore there
        local = torch.cat([local, local.new_ones(size - local.numel())])
    return local


def shard_masks(params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor], names: list[str]):
    """``(shards, fingerprints)`` for ZeRO-3 partitioned ``params``: this rank's slice of each mask in ``names``,
    bit-packed on the partition's device, and the fingerprint of every full mask (for ``_check_masks_agree``).
    The full masks are only read here (on the device the caller keeps them, typically the CPU)."""
    from ..masking import PackedMask

    fingerprints = {n: mask_fingerprint(m) for n, m in masks.items()}
    shards = {n: PackedMask(_zero3_local_slice(params[n], masks[n].reshape(-1).to(torch.bool)),
                            device=params[n].ds_tensor.device) for n in names}
    return shards, fingerprints


def _use_shards(masker) -> None:
    """Switch a masker built before DeepSpeed partitioned the model (no zero.Init) to sharded masks, no hooks."""
    if masker.shards or not any(_is_zero3_param(p) for p in masker.params.values()):
        return
    masker.shards, masker._fingerprints = shard_masks(masker.params, masker.masks, masker.partially_masked)
    masker.remove()
    masker.masks = {}


def _install_zero3_gradient_masking(optimizer, masker) -> None:
    """Mask each reduce-scattered gradient partition with this rank's mask shard before DeepSpeed moves it into (or
    adds it to) its accumulation buffer: per backward pass, so the retain pass of a two-pass step stays unmasked
    and gradient accumulation adds masked forget gradients. Same values as masking the full gradient before the
    reduction (the reduction is elementwise); the clipping norm is computed later, from the masked partitions."""
    if getattr(optimizer, "_hf_unlearn_masker", None) is masker:
        return
    original = getattr(optimizer, "_hf_unlearn_partition_grads", None) or optimizer.partition_grads
    by_id = {masker.params[n].ds_id: masker.shards[n] for n in masker.partially_masked}

    def partition_grads(params_to_release, grad_partitions):
        if masker.active:
            for param, grad in zip(params_to_release, grad_partitions):
                shard = by_id.get(getattr(param, "ds_id", None))
                if shard is not None:
                    grad.mul_(shard.unpack(grad.device)[:grad.numel()].view_as(grad).view(torch.uint8))
        return original(params_to_release, grad_partitions)

    optimizer._hf_unlearn_partition_grads = original
    optimizer._hf_unlearn_masker = masker
    optimizer.partition_grads = partition_grads


# ----------------------------------------------------------------------------------------------------------------
# Exact masked steps on the fp32 master weights
# ----------------------------------------------------------------------------------------------------------------
class ZeroMaskedStep:
    """Save this rank's fp32 master values of masked entries before ``engine.step()``; put them back after.

    Which parameters, and whether values saved on an earlier step are still valid, follow the masker's policy
    (``GradientMasker.protected`` / ``generation``): nothing is saved while nothing can move masked entries, and
    values saved once stay valid across consecutive fully masked steps. Only masked entries are saved
    (``masked_select``), only this rank's partition. After the step, the working parameter is made consistent:

    * ZeRO-3: master partition via ``safe_get/set_local_fp32_param``; the working partition ``param.ds_tensor``
      gets the same values in its dtype; parameters kept gathered (``ds_persist``) are re-gathered (collective).
    * ZeRO-1/2 (and DeepSpeed's BF16 optimizer): master fragment ``param._hp_mapping``; the replicated working
      parameter is rebuilt from the full master (``safe_get_full_fp32_param``, one all-reduce per parameter).
      DeepSpeed itself sets working = master cast to the working dtype, so unmasked entries are unchanged bit for bit.
    * No master copy (stage 0 in fp32): the parameter itself.

    Args:
        masker: the trainer's ``GradientMasker`` (``params``, ``masks`` / ``shards`` by name).
    """

    def __init__(self, masker, engine=None):
        self.masker = masker
        self.names = list(masker.partially_masked)
        self._saved: dict[str, torch.Tensor | None] = {}
        self._generation = -1
        if engine is not None:
            self._check_supported(engine)

    def _check_supported(self, engine) -> None:
        config = getattr(engine, "_config", None)
        zero = getattr(config, "zero_config", None)
        for what in ("offload_param", "offload_optimizer"):
            device = getattr(getattr(zero, what, None), "device", None)
            if str(getattr(device, "value", device)) == "nvme":
                raise NotImplementedError(
                    f"Exact masked steps do not support `zero_optimization.{what}.device='nvme'` (the master weights "
                    "are swapped out during the step). Offload to 'cpu' instead."
                )
        plain = [n for n in self.names if not (_is_zero3_param(self.masker.params[n])
                                               or hasattr(self.masker.params[n], "_hp_mapping"))]
        if plain and engine.zero_optimization_stage() == 0 and engine.fp16_enabled():
            raise NotImplementedError(
                "Exact masked steps with DeepSpeed stage 0 + fp16 cannot reach the fp32 master weights. Use ZeRO "
                "stage 1, 2 or 3 (any precision) or bf16."
            )

    # -- local views -------------------------------------------------------------------------------------------
    def _local_blocked(self, name: str, param, device) -> torch.Tensor | None:
        """This rank's flat ``~mask`` (True = masked), aligned with its master partition / fragment."""
        if _is_zero3_param(param):
            return self.masker.shards[name].unpack(device).logical_not_()
        mapping = getattr(param, "_hp_mapping", None)
        if mapping is None:
            return None
        address = mapping.lp_fragment_address
        flat = self.masker.masks[name].reshape(-1)
        return flat[address.start:address.start + address.numel].to(device).logical_not()

    def _master(self, param) -> torch.Tensor | None:
        """This rank's fp32 master values of ``param`` (a view where DeepSpeed has one)."""
        if _is_zero3_param(param):
            from deepspeed.utils import safe_get_local_fp32_param

            return safe_get_local_fp32_param(param)
        if hasattr(param, "_hp_mapping"):
            mapping = param._hp_mapping
            return None if mapping is None else mapping.get_hp_fragment()
        return param.data

    # -- snapshot / restore ------------------------------------------------------------------------------------
    @staticmethod
    def _offloaded(param) -> bool:
        """ZeRO-3 with the optimizer on the CPU: ``safe_get_local_fp32_param`` returns a GPU copy; keep ours on CPU."""
        return _is_zero3_param(param) and bool(getattr(param._z3_optimizer, "offload_optimizer", False))

    def saved_bytes(self) -> int:
        """Bytes of saved master values this rank holds now."""
        return sum(t.numel() * t.element_size() for t in self._saved.values() if t is not None)

    @torch.no_grad()
    def snapshot(self) -> None:
        masker = self.masker
        if masker._managed and self._generation == masker.generation and self._saved:
            return  # nothing moved masked entries since they were saved
        self._saved = {}
        for name in masker.protected:
            param = masker.params[name]
            master = self._master(param)
            if master is None:
                self._saved[name] = None
            elif not (_is_zero3_param(param) or hasattr(param, "_hp_mapping")):  # the parameter itself
                self._saved[name] = master.detach().clone(memory_format=torch.contiguous_format)
            else:
                values = master.detach().reshape(-1).masked_select(self._local_blocked(name, param, master.device))
                self._saved[name] = values.cpu() if self._offloaded(param) else values
        self._generation = masker.generation

    @torch.no_grad()
    def restore(self) -> None:
        from ..masking import put_back

        regather: list[nn.Parameter] = []
        for name, saved in self._saved.items():
            param = self.masker.params[name]
            if _is_zero3_param(param):
                self._restore_zero3(name, param, saved)
                if getattr(param, "ds_persist", False) or _is_available(param):
                    regather.append(param)
            elif hasattr(param, "_hp_mapping"):
                self._restore_zero12(name, param, saved)
            elif saved is not None:  # the optimizer updates the parameter itself
                put_back(param.data, saved, self.masker._mask_on(name, param.device))
        if regather:  # gathered copies were refreshed from the partitions before our restore: refresh them again
            regather[0].partition(param_list=regather)
            regather[0].all_gather(param_list=regather)
        if not self.masker._managed:
            self._saved = {}

    def _restore_zero3(self, name: str, param, saved: torch.Tensor | None) -> None:
        from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param

        if saved is None:
            return
        current = safe_get_local_fp32_param(param)  # a view of the master partition (a copy with offload)
        blocked = self._local_blocked(name, param, current.device)
        current.view(-1).masked_scatter_(blocked, saved.to(current.device))
        safe_set_local_fp32_param(param, current)
        working = param.ds_tensor.data.view(-1)
        working.masked_scatter_(blocked.to(working.device), saved.to(device=working.device, dtype=working.dtype))

    def _restore_zero12(self, name: str, param, saved: torch.Tensor | None) -> None:
        from deepspeed.utils import safe_get_full_fp32_param

        mapping = param._hp_mapping
        if mapping is not None and saved is not None:
            fragment = mapping.get_hp_fragment()
            fragment.data.view(-1).masked_scatter_(self._local_blocked(name, param, fragment.device), saved)
        full = safe_get_full_fp32_param(param)  # collective: every rank, same order
        param.data.copy_(full.view_as(param.data).to(param.dtype))


def _is_available(param) -> bool:
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return param.ds_status == ZeroParamStatus.AVAILABLE


def mask_fingerprint(mask: torch.Tensor, chunk: int = 1 << 24) -> tuple[float, float]:
    """(number of True entries, sum of their positions mod a prime): equal masks give equal fingerprints.

    Exact in float64 (every partial sum stays far below 2**53); computed in chunks so no full-size index tensor.
    """
    flat = mask.reshape(-1)
    count, positions = 0.0, 0.0
    for start in range(0, flat.numel(), chunk):
        part = flat[start:start + chunk]
        index = torch.arange(start, start + part.numel(), device=part.device, dtype=torch.int64) % 1_000_003
        count += float(part.sum())
        positions += float(index[part].sum())
    return count, positions


def _check_masks_agree(masker) -> None:
    """Every rank must hold the same masks (a per-rank random mask would silently desynchronise the ranks)."""
    import deepspeed.comm as dist

    fingerprints = masker.fingerprints()
    if not dist.is_initialized() or dist.get_world_size() == 1 or not fingerprints:
        return
    from deepspeed.accelerator import get_accelerator

    # On the accelerator: NCCL reduces device tensors only.
    counts = torch.tensor(list(fingerprints.values()), dtype=torch.float64,
                          device=get_accelerator().current_device_name())
    high, low = counts.clone(), counts.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    if not torch.equal(high, low):
        bad = [n for n, h, l in zip(fingerprints, high.tolist(), low.tolist()) if h != l]
        raise ValueError(
            f"The saliency mask differs between ranks for {len(bad)} parameter(s), e.g. {bad[:3]}. Build the mask "
            "deterministically (same seed) or load the same saved SaliencyMask on every rank."
        )


def install_masked_step(accelerator, masker, should_restore: Callable[[], bool]) -> ZeroMaskedStep:
    """Make masked optimizer steps exact under DeepSpeed (call once the engine exists, e.g. ``on_train_begin``).

    Args:
        accelerator: the trainer's ``Accelerator`` (DeepSpeed enabled).
        masker: the ``GradientMasker`` whose hooks already mask gradients (under ZeRO-3 its masks are sharded here
            if the model was partitioned after the masker was built, and the gradient partitions are masked).
        should_restore: called at each optimizer step; True when the whole gradient of the step was masked (then
            masked entries are put back after ``engine.step()``, undoing weight decay and momentum).
    """
    control = install_step_control(accelerator)
    _use_shards(masker)
    _check_masks_agree(masker)
    if masker.shards:
        _install_zero3_gradient_masking(control.engine.optimizer, masker)
    control.guard = ZeroMaskedStep(masker, control.engine)
    control.should_guard = should_restore
    return control.guard


# ----------------------------------------------------------------------------------------------------------------
# ZeRO-3: the same modules on every rank
# ----------------------------------------------------------------------------------------------------------------
def check_images_agree(inputs: dict, device) -> None:
    """Under ZeRO-3, refuse a step where some ranks' forget or retain batch has images and others' has none.

    ZeRO-3 gathers each module's weights in its forward: a rank whose batch has no image skips the vision tower, the
    others gather its weights, and the collectives stop matching (a hang, or gloo's "Received data size doesn't
    match expected size"). One all-reduce of 4 ints per micro-batch turns that into this error.
    """
    from ..features import has_images
    from .ranks import all_ranks_agree

    sides = [side for side in ("forget", "retain") if side in inputs]
    if all_ranks_agree([has_images(inputs[side]) for side in sides], device):
        return
    raise ValueError(
        "Under DeepSpeed ZeRO-3 the ranks' batches of this step differ in having images (some text-only, some not): "
        "ZeRO-3 gathers the vision tower's weights only on the ranks that run it, and the collectives would never "
        "match. Give every row of the set an image or none (e.g. keep the text-only retain rows for a separate run), "
        "or use ZeRO-2, DDP or FSDP2 (docs/distributed.md), which handle mixed batches."
    )


# ----------------------------------------------------------------------------------------------------------------
# Full fp32 weights (tests, debugging, export)
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def gather_full_fp32_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: full fp32 tensor}`` on every rank: optimizer master weights for trainable parameters, the working
    weights for frozen ones. A collective: call it on every rank."""
    from deepspeed.utils import safe_get_full_fp32_param

    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        value = safe_get_full_fp32_param(param) if param.requires_grad else None
        if value is None and _is_zero3_param(param):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                value = param.data.detach().clone()
        elif value is None:
            value = param.data.detach()
        out[name] = value.detach().float().cpu().reshape(param_shape(param)).clone()
    return out
