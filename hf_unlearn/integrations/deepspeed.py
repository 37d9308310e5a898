"""Every DeepSpeed special case of hf_unlearn lives here (ZeRO-1/2/3, with or without CPU offload).

Why this module exists (measured on CPU with 2 processes; docs/deepspeed.md):

* accelerate's ``DeepSpeedEngineWrapper.backward`` runs ``engine.backward`` **and** ``engine.step()`` at the
  accumulation boundary, so a trainer cannot act "between backward and step" and a step that needs two backward
  passes (masked forget gradient, then unmasked retain gradient) would step after the first. ``install_step_control``
  replaces that method once with the same three calls plus two hooks: a *deferral* flag (``defer_step_unless``) and
  a masked-step guard around ``engine.step()``.
* ZeRO-3 gathers each module's weights in its forward, so every rank must run the same modules
  (``check_images_agree``); ZeRO-1/2 reduce gradients in buckets filled in readiness order, so every backward gives
  every trainable parameter a gradient in a fixed order (``touch_every_parameter``).
* Frozen reference / teacher models are wrapped like the policy (``prepare_for_inference``).

Exact saliency masks under ZeRO live in ``hf_unlearn/masking/zero.py``; they use the step control's guard.

Outside training, ``zero3_gathering`` runs forward / backward passes through a ZeRO-3 partitioned model (saliency
scores: ``hf_unlearn/saliency/sharded.py``), and ``zero3_partition`` says which flat slice of a parameter a rank holds.

Collectives: ``gather_full_fp32_params`` and ``check_images_agree``; every rank runs the same training steps, so they
line up. ``zero3_gathering``'s passes all-gather weights module by module, so every rank must run the same passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = [
    "check_images_agree",
    "defer_step_unless",
    "full_grad",
    "gather_full_fp32_params",
    "install_step_control",
    "is_zero3_param",
    "param_shape",
    "prepare_for_inference",
    "touch_every_parameter",
    "zero3_gathering",
    "zero3_partition",
]


# ----------------------------------------------------------------------------------------------------------------
# Small helpers usable without DeepSpeed installed
# ----------------------------------------------------------------------------------------------------------------
def is_zero3_param(param: torch.Tensor) -> bool:
    """Whether ``param`` is partitioned by ZeRO-3 (it then has ``ds_id``, and ``shape`` is ``[0]`` outside a gather)."""
    return hasattr(param, "ds_id")


def param_shape(param: torch.Tensor) -> torch.Size:
    """The parameter's real shape, also under ZeRO-3 where ``param.shape`` is ``[0]`` outside a gathered context."""
    return param.ds_shape if is_zero3_param(param) else param.shape


def full_grad(param: nn.Parameter) -> torch.Tensor | None:
    """The full (all-rank) gradient of ``param`` after a backward pass, ``None`` if it has none.

    Plain training and DDP: ``param.grad``. Under DeepSpeed ZeRO the gradient lives in reduced, partitioned buffers
    (``param.grad`` is ``None`` after the reduce hooks): ``deepspeed.utils.safe_get_full_grad``, a collective every
    rank must call for the same parameters in the same order, valid after ``engine.backward`` and before
    ``engine.step``. Under ZeRO the backward must be ``engine.backward(loss)`` (or ``accelerator.backward``), so the
    reduce hooks run.
    """
    if not (is_zero3_param(param) or hasattr(param, "_hp_mapping")):
        return param.grad
    from deepspeed.utils import safe_get_full_grad

    return safe_get_full_grad(param)


def zero3_partition(param: torch.Tensor) -> tuple[int, int, int, object]:
    """``(rank, world size, partition size s, process group)`` of a ZeRO-3 parameter: rank r holds the entries
    ``[r * s, (r + 1) * s)`` of the flattened full parameter (the last partition is zero-padded past its end), the
    layout of ``param.ds_tensor`` and of the optimizer's gradient partitions (``masking/zero.py``)."""
    import deepspeed.comm as dist

    group = getattr(param, "ds_process_group", None)
    return dist.get_rank(group=group), dist.get_world_size(group=group), int(param.ds_tensor.ds_numel), group


@contextmanager
def zero3_gathering(model: nn.Module) -> Iterator[nn.Module]:
    """Forward and backward passes through a ZeRO-3 partitioned model outside a training engine; yields the module.

    ``zero.Init`` only partitions the weights; the hooks that gather each module's weights for its forward and
    backward belong to an engine. This builds DeepSpeed's inference engine (``deepspeed.initialize`` without an
    optimizer, as TRL does for reference models): gathering hooks, and no optimizer, fp32 master weights or gradient
    partitions. Autograd then leaves each parameter's full gradient in ``param.grad`` (a post-accumulate-grad hook
    sees it before the next module runs); nothing reduces it. The hooks are removed on exit. Pass the partitioned
    model, not a training engine (whose hooks are already there).

    The engine's ZeRO settings are the ZeRO-3 ones of the live Hugging Face DeepSpeed config (the one
    ``TrainingArguments(deepspeed=...)`` made) that are not ``"auto"``, else DeepSpeed's defaults.
    """
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, config=_gathering_config())
    try:
        yield model
    finally:
        engine.destroy()  # removes the module hooks


_GATHERING_KEYS = ("stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
                   "stage3_model_persistence_threshold", "stage3_max_live_parameters", "stage3_max_reuse_distance",
                   "offload_param")


def _gathering_config() -> dict:
    from transformers.integrations.deepspeed import deepspeed_config

    live = (deepspeed_config() or {}).get("zero_optimization", {})
    zero = {key: live[key] for key in _GATHERING_KEYS if key in live and live[key] != "auto"}
    # No precision block: weights loaded by zero.Init keep their dtype (DeepSpeed casts only unpartitioned models).
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "steps_per_print": 2**31 - 1,
            "zero_optimization": {**zero, "stage": 3}}


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
        self.guard = None  # masking.zero.ZeroMaskedStep: snapshot() / restore() around engine.step()
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
        if value is None and is_zero3_param(param):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                value = param.data.detach().clone()
        elif value is None:
            value = param.data.detach()
        out[name] = value.detach().float().cpu().reshape(param_shape(param)).clone()
    return out
