"""``ZeroMasker``: exact masks under DeepSpeed ZeRO-1/2/3 (with or without CPU offload).

* Gradients: under ZeRO-1/2 by ``LocalMasker``'s hooks (registered before DeepSpeed initialises, they see full-shape
  gradients before DeepSpeed's reduce hooks: measured), with full-shape masks. Under ZeRO-3 each rank keeps only its
  shard of each mask, bit-packed (1 bit per entry / world size), and masks the reduce-scattered gradient partitions
  before DeepSpeed accumulates them (``DeepSpeedZeroOptimizer_Stage3.partition_grads``), so no rank ever holds a
  full-shape mask.
* Weights: the optimizer under ZeRO updates fp32 master weights that live in flat partitions, not in ``param.data``,
  and steps inside ``accelerator.backward`` (``integrations/deepspeed.py``: the step control). ``ZeroMaskedStep``
  saves and puts back masked entries of this rank's master partition *and* of the working parameter around
  ``engine.step()``, with the shared restore policy: at most ``4 bytes x masked entries / world size`` per rank, and
  nothing while nothing can move them.

Collectives: the restore under ZeRO-1/2 (one all-reduce per masked parameter) and of ZeRO-3 persistent parameters,
and ``check_masks_agree``; every rank runs the same training steps, so they line up.
"""

from __future__ import annotations

import torch
from torch import nn

from ..integrations.deepspeed import install_step_control, is_zero3_param
from .local import LocalMasker
from .tensors import PackedMask, mask_fingerprint, put_back


def _dist_rank(group=None) -> int:
    import deepspeed.comm as dist

    return dist.get_rank(group=group)


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
    bit-packed on the partition's device, and the fingerprint of every full mask (for ``check_masks_agree``).
    The full masks are only read here (on the device the caller keeps them, typically the CPU)."""
    fingerprints = {n: mask_fingerprint(m) for n, m in masks.items()}
    shards = {n: PackedMask(_zero3_local_slice(params[n], masks[n].reshape(-1).to(torch.bool)),
                            device=params[n].ds_tensor.device) for n in names}
    return shards, fingerprints


class ZeroMasker(LocalMasker):
    """The masker under DeepSpeed (see the module docstring). ``snapshot`` / ``restore`` are no-ops at the trainer's
    call sites: the engine steps inside backward, where ``ZeroMaskedStep`` does them."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], freeze_uncovered: bool = True):
        self.shards: dict[str, PackedMask] = {}
        self.guard: ZeroMaskedStep | None = None
        super().__init__(model, masks, freeze_uncovered)

    def _bind(self, masks: dict[str, torch.Tensor]) -> None:
        if any(is_zero3_param(p) for p in self.params.values()):  # partitioned at load (zero.Init): shards only
            self.shards, self._fingerprints = shard_masks(self.params, masks, self.partially_masked)
            return
        super()._bind(masks)

    def begin_training(self, start) -> None:
        control = install_step_control(start.accelerator)
        if not self.shards and any(is_zero3_param(p) for p in self.params.values()):
            # Partitioned by the engine (no zero.Init): switch to sharded masks, no hooks.
            self.shards, self._fingerprints = shard_masks(self.params, self.masks, self.partially_masked)
            self.remove()
            self.masks = {}
        check_masks_agree(self)
        if self.shards:
            _install_zero3_gradient_masking(control.engine.optimizer, self)
        self.guard = ZeroMaskedStep(self, control.engine)
        control.guard, control.should_guard = self.guard, start.fully_masked
        super().begin_training(start)

    def snapshot(self) -> None:
        pass

    def restore(self) -> None:
        pass

    def mask_bytes(self) -> int:
        return super().mask_bytes() + sum(s.nbytes for s in self.shards.values())

    def snapshot_bytes(self) -> int:
        return self.guard.saved_bytes() if self.guard is not None else 0


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
    (``RestorePolicy.protected`` / ``generation``): nothing is saved while nothing can move masked entries, and
    values saved once stay valid across consecutive fully masked steps. Only masked entries are saved
    (``masked_select``), only this rank's partition. After the step, the working parameter is made consistent:

    * ZeRO-3: master partition via ``safe_get/set_local_fp32_param``; the working partition ``param.ds_tensor``
      gets the same values in its dtype; parameters kept gathered (``ds_persist``) are re-gathered (collective).
    * ZeRO-1/2 (and DeepSpeed's BF16 optimizer): master fragment ``param._hp_mapping``; the replicated working
      parameter is rebuilt from the full master (``safe_get_full_fp32_param``, one all-reduce per parameter).
      DeepSpeed itself sets working = master cast to the working dtype, so unmasked entries are unchanged bit for bit.
    * No master copy (stage 0 in fp32): the parameter itself.

    Args:
        masker: the trainer's ``ZeroMasker`` (``params``, ``masks`` / ``shards`` by name).
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
        plain = [n for n in self.names if not (is_zero3_param(self.masker.params[n])
                                               or hasattr(self.masker.params[n], "_hp_mapping"))]
        if plain and engine.zero_optimization_stage() == 0 and engine.fp16_enabled():
            raise NotImplementedError(
                "Exact masked steps with DeepSpeed stage 0 + fp16 cannot reach the fp32 master weights. Use ZeRO "
                "stage 1, 2 or 3 (any precision) or bf16."
            )

    # -- local views -------------------------------------------------------------------------------------------
    def _local_blocked(self, name: str, param, device) -> torch.Tensor | None:
        """This rank's flat ``~mask`` (True = masked), aligned with its master partition / fragment."""
        if is_zero3_param(param):
            return self.masker.shards[name].unpack(device).logical_not_()
        mapping = getattr(param, "_hp_mapping", None)
        if mapping is None:
            return None
        address = mapping.lp_fragment_address
        flat = self.masker.masks[name].reshape(-1)
        return flat[address.start:address.start + address.numel].to(device).logical_not()

    def _master(self, param) -> torch.Tensor | None:
        """This rank's fp32 master values of ``param`` (a view where DeepSpeed has one)."""
        if is_zero3_param(param):
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
        return is_zero3_param(param) and bool(getattr(param._z3_optimizer, "offload_optimizer", False))

    def saved_bytes(self) -> int:
        """Bytes of saved master values this rank holds now."""
        return sum(t.numel() * t.element_size() for t in self._saved.values() if t is not None)

    @torch.no_grad()
    def snapshot(self) -> None:
        masker = self.masker
        if self._saved and masker.policy.still_valid(self._generation):
            return  # nothing moved masked entries since they were saved
        self._saved = {}
        for name in masker.policy.protected:
            param = masker.params[name]
            master = self._master(param)
            if master is None:
                self._saved[name] = None
            elif not (is_zero3_param(param) or hasattr(param, "_hp_mapping")):  # the parameter itself
                self._saved[name] = master.detach().clone(memory_format=torch.contiguous_format)
            else:
                values = master.detach().reshape(-1).masked_select(self._local_blocked(name, param, master.device))
                self._saved[name] = values.cpu() if self._offloaded(param) else values
        self._generation = masker.policy.generation

    @torch.no_grad()
    def restore(self) -> None:
        regather: list[nn.Parameter] = []
        for name, saved in self._saved.items():
            param = self.masker.params[name]
            if is_zero3_param(param):
                self._restore_zero3(name, param, saved)
                if getattr(param, "ds_persist", False) or _is_available(param):
                    regather.append(param)
            elif hasattr(param, "_hp_mapping"):
                self._restore_zero12(name, param, saved)
            elif saved is not None:  # the optimizer updates the parameter itself
                put_back(param.data, saved, self.masker.mask_on(name, param.device))
        if regather:  # gathered copies were refreshed from the partitions before our restore: refresh them again
            regather[0].partition(param_list=regather)
            regather[0].all_gather(param_list=regather)
        if not self.masker.policy.managed:
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


def check_masks_agree(masker) -> None:
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
        bad = [n for n, hi, lo in zip(fingerprints, high.tolist(), low.tolist()) if hi != lo]
        raise ValueError(
            f"The saliency mask differs between ranks for {len(bad)} parameter(s), e.g. {bad[:3]}. Build the mask "
            "deterministically (same seed) or load the same saved SaliencyMask on every rank."
        )


