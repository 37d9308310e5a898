"""Scoring parameters on forget / preserve data and thresholding the scores into a `SaliencyMask`.

Scores (``config.score``), for every covered entry j:

- ``fisher_ratio`` (MMUnlearner, SFR-on): ``F[j] = mean over batches of (dL_batch/dθ_j)^2`` on the forget set and on
  the group's preserve sets; selected iff ``(F_f + eps) / (F_p + eps) >= gamma``.
- ``grad_magnitude`` (SalUn): ``|Σ_batches dL_batch/dθ_j|`` on the forget set; the top ``threshold`` fraction of all
  covered entries is selected.
- ``random``: seeded uniform scores, top ``threshold`` fraction (ablation).

Gradients are read in the model's dtype and accumulated in fp32, so a bf16 / fp16 model does not underflow to a zero
Fisher the way squaring in half precision does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.rows import validate_rows
from ..integrations.deepspeed import param_shape
from ..models import LANGUAGE, PROJECTOR, VISION, unwrap_model
from .config import SaliencyMaskConfig
from .mask import SaliencyMask, describe_architecture
from .sharded import Layout, sharded_top_fraction

logger = logging.getLogger(__name__)

Collator = Callable[[list[dict[str, Any]]], Mapping[str, Any]]


# ------------------------------------------------------------------------------------------------ gradient passes
@contextmanager
def _gradient_mode(model: nn.Module, param_names: list[str]) -> Iterator[dict[str, nn.Parameter]]:
    """Eval mode, gradients only for ``param_names``; everything restored on exit.

    Restored: every parameter's ``requires_grad`` and ``.grad``, every module's training flag and the input-grad hooks.
    Layers with gradient checkpointing enabled are flagged as training (transformers only checkpoints in training
    mode), so checkpointing still saves memory; their submodules, dropout included, stay in eval mode.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    params = dict(model.named_parameters())
    missing = [name for name in param_names if name not in params]
    if missing:
        raise ValueError(f"{len(missing)} parameter name(s) not in the model, e.g. {missing[:5]}.")
    flags = {name: p.requires_grad for name, p in params.items()}
    grads = {name: p.grad for name, p in params.items()}
    modes = {module: module.training for module in model.modules()}
    base = unwrap_model(model)
    added_input_hooks = False
    wanted = set(param_names)
    try:
        for name, p in params.items():
            p.requires_grad_(name in wanted)
            p.grad = None
        model.eval()
        checkpointed = [
            m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
        ]
        for layer in checkpointed:
            layer.training = True
        # Reentrant checkpointing drops gradients of checkpointed layers whose inputs do not require grad (e.g. LoRA
        # on a frozen base): make the input embeddings' outputs require grad, as PEFT and transformers do.
        if checkpointed and hasattr(base, "enable_input_require_grads") and not getattr(
            base, "_require_grads_hooks", None
        ):
            base.enable_input_require_grads()
            added_input_hooks = True
        yield {name: params[name] for name in param_names}
    finally:
        if added_input_hooks:
            base.disable_input_require_grads()
        for module, mode in modes.items():
            module.training = mode
        for name, p in params.items():
            p.requires_grad_(flags[name])
            p.grad = grads[name]


def _batches(dataset: Iterable, batch_size: int, max_batches: int | None) -> Iterator[list[dict]]:
    """Consecutive batches of rows, in dataset order (no shuffling), the last one possibly short."""
    chunk: list[dict] = []
    count = 0
    for row in dataset:
        chunk.append(row)
        if len(chunk) == batch_size:
            yield chunk
            chunk, count = [], count + 1
            if max_batches is not None and count >= max_batches:
                return
    if chunk:
        yield chunk


def _num_batches(dataset: Any, batch_size: int, max_batches: int | None) -> int | None:
    try:
        total = math.ceil(len(dataset) / batch_size)
    except TypeError:
        return max_batches
    return total if max_batches is None else min(total, max_batches)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _accumulate(
    model: nn.Module,
    dataset: Iterable,
    data_collator: Collator,
    param_names: list[str],
    batch_size: int,
    max_batches: int | None,
    *,
    square: bool,
    layout: Layout,
    device: str | torch.device | None = None,
    fisher_device: str | torch.device | None = None,
    show_progress: bool = False,
    desc: str = "gradients",
    into: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], int, set[str]]:
    """Per-parameter fp32 sums over batches of ``grad ** 2`` (``square``) or ``grad``, of this rank's part of each
    parameter (``layout``: the whole parameter unless the model is sharded). ``into``: sums to keep adding to.

    Returns ``(sums, number of batches, names that received a gradient in at least one batch)``.
    """
    if dataset is None:
        raise ValueError(f"The {desc} dataset is None; pass a datasets.Dataset (or a list of row dicts).")
    if data_collator is None or not callable(data_collator):
        raise ValueError(
            "data_collator must be a callable turning a list of rows into a dict of tensors with `labels`, e.g. "
            "hf_unlearn.data.collators.UnlearnDataCollator(processor)."
        )
    device = torch.device(device) if device is not None else _model_device(model)
    with _gradient_mode(model, param_names) as params, torch.enable_grad():
        accumulator = _Accumulator(layout, square, fisher_device, into)
        # Fold each gradient in as soon as autograd has accumulated it (still in cache, and freed at once, so the
        # batch's gradients never all exist together; under ZeRO-3 it must be so). Reentrant gradient checkpointing
        # runs nested backward passes that can accumulate a parameter's gradient more than once per batch: there,
        # fold in after the backward, or (ZeRO-3) refuse a second gradient in one batch.
        hooks = [p.register_post_accumulate_grad_hook(accumulator.hook(name)) for name, p in params.items()] if (
            layout.fold_in_hooks or not _checkpointing(model)) else []
        num = 0
        progress = tqdm(
            _batches(dataset, batch_size, max_batches), total=_num_batches(dataset, batch_size, max_batches),
            desc=desc, disable=not (show_progress and layout.is_main), unit="batch",
        )
        try:
            for rows in progress:
                batch = data_collator(rows)
                if not isinstance(batch, Mapping) or "labels" not in batch:
                    keys = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
                    raise ValueError(
                        f"The data collator must return a dict with `labels` (got {keys}); the loss is "
                        "model(**batch).loss."
                    )
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                loss = model(**batch).loss
                if loss is None:
                    raise ValueError("model(**batch) returned no loss; the collator's `labels` must be a tensor.")
                if not torch.isfinite(loss.detach()):
                    raise ValueError(
                        f"Non-finite loss ({loss.item()}) in batch {num} of the {desc} dataset; check the labels "
                        "(all -100?) and the model's dtype."
                    )
                layout.check_batch(loss, desc, num)
                accumulator.batch_seen.clear()
                loss.backward()
                for name, p in params.items():  # every gradient, without hooks; none is left with them
                    if p.grad is not None:
                        accumulator.add(name, p)
                num += 1
        finally:
            for handle in hooks:
                handle.remove()
        if num == 0:
            raise ValueError(f"The {desc} dataset is empty; the Fisher needs at least one batch.")
        for name, p in params.items():  # never touched: zero, as if every batch gave a zero gradient
            if name not in accumulator.sums:
                accumulator.sums[name] = torch.zeros(layout.local_shape(name), dtype=torch.float32,
                                                     device=fisher_device or p.device)
    return {name: accumulator.sums[name] for name in params}, num, accumulator.touched


def _checkpointing(model: nn.Module) -> bool:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return any(isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing for m in model.modules())


class _Accumulator:
    """Per-parameter fp32 sums of ``grad ** 2`` (``square``) or ``grad``, one gradient at a time, of this rank's part
    of each parameter (``layout.take_grad``).

    The first gradient of a parameter becomes its sum (squared in place when it is already fp32 on the sums'
    device: no zero-filled buffer, one pass); later ones are added with ``addcmul_`` / ``add_``. Same values as
    adding every batch to zeros, bit for bit.
    """

    def __init__(self, layout: Layout, square: bool, fisher_device, into: dict[str, torch.Tensor] | None = None):
        self.layout, self.square = layout, square
        self.fisher_device = None if fisher_device is None else torch.device(fisher_device)
        self.sums: dict[str, torch.Tensor] = {} if into is None else into
        self.touched: set[str] = set()
        self.batch_seen: set[str] = set()  # names folded in during the current batch (hooks)

    def hook(self, name: str):
        def fold_in(param: torch.Tensor) -> None:
            if param.grad is None:
                return
            if name in self.batch_seen:
                raise RuntimeError(
                    f"{name} received a second gradient in one backward pass (reentrant gradient checkpointing with "
                    "a parameter used in several checkpointed segments): its squared gradient cannot be folded in "
                    "piece by piece. Use non-reentrant checkpointing: model.gradient_checkpointing_enable("
                    "gradient_checkpointing_kwargs={'use_reentrant': False}) (transformers' default)."
                )
            self.batch_seen.add(name)
            self.add(name, param)

        return fold_in

    @torch.no_grad()
    def add(self, name: str, param: torch.Tensor) -> None:
        grad = self.layout.take_grad(name, param)  # param.grad is cleared: this tensor (or its base) is ours alone
        total = self.sums.get(name)
        if total is None:
            target = self.fisher_device or grad.device
            first = grad if grad.dtype == torch.float32 and grad.device == target and grad._base is None else (
                grad.to(device=target, dtype=torch.float32, copy=True))  # fp32 before squaring
            self.sums[name] = first.mul_(first) if self.square else first
            self.touched.add(name)
            return
        self.touched.add(name)
        if grad.dtype != torch.float32 or grad.device != total.device:
            grad = grad.to(device=total.device, dtype=torch.float32)  # fp32 before squaring
        if self.square:
            total.addcmul_(grad, grad)
        else:
            total.add_(grad)


def accumulate_fisher(
    model: nn.Module,
    dataset: Iterable,
    data_collator: Collator,
    param_names: list[str],
    batch_size: int,
    max_batches: int | None = None,
    *,
    device: str | torch.device | None = None,
    fisher_device: str | torch.device | None = None,
    show_progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over consecutive batches of ``(dL_batch/dθ)^2``, in fp32.

    ``L_batch = model(**data_collator(rows)).loss``. The model runs in eval mode; only ``param_names`` get gradients;
    ``requires_grad`` flags, ``.grad`` and training modes are restored afterwards. ``device`` is where batches go
    (default: the device of the model's first parameter; the model is not moved), ``fisher_device`` where the fp32
    sums live (default: each parameter's device; ``"cpu"`` saves accelerator memory). On a model partitioned by ZeRO-3
    or FSDP2 every rank returns whole Fishers (``compute_saliency_mask`` keeps each rank's shard only).
    """
    params = dict(model.named_parameters())
    layout = Layout(model, {n: params[n] for n in param_names if n in params}, sharded=False)
    with layout.passes():
        sums, num, _ = _accumulate(
            model, dataset, data_collator, list(param_names), batch_size, max_batches, square=True, layout=layout,
            device=device, fisher_device=fisher_device, show_progress=show_progress, desc="Fisher",
        )
    return {name: s / num for name, s in sums.items()}


# ---------------------------------------------------------------------------------------------------- thresholds
def top_fraction(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Select exactly ``round(fraction * N)`` entries with the largest scores, globally over all tensors.

    Ties at the cut-off are broken by position (first come first), so the count is exact and deterministic.
    """
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in names])
    total = flat.numel()
    k = min(total, max(0, math.floor(fraction * total + 0.5)))
    if k == total:
        selected = torch.ones(total, dtype=torch.bool)
    elif k == 0:
        selected = torch.zeros(total, dtype=torch.bool)
    else:
        cutoff = torch.kthvalue(flat, total - k + 1).values  # the k-th largest score
        selected = flat > cutoff
        need = k - int(selected.sum())
        ties = torch.nonzero(flat == cutoff).reshape(-1)[:need]
        selected[ties] = True
    out, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = selected[offset:offset + size].reshape(scores[n].shape).clone()
        offset += size
    return out


# ------------------------------------------------------------------------------------------------------ the mask
def compute_saliency_mask(
    model: nn.Module,
    config: SaliencyMaskConfig,
    forget_dataset: Iterable | None,
    preserve_datasets: Mapping[str, Iterable] | None,
    data_collator: Collator | None,
    *,
    device: str | torch.device | None = None,
    fisher_device: str | torch.device | None = None,
    show_progress: bool = True,
    sharded: bool | None = None,
) -> SaliencyMask:
    """Score the parameters covered by ``config`` and threshold them into a `SaliencyMask`.

    Args:
        model: a ``transformers`` model, possibly PEFT-wrapped (the mask then covers the trainable adapter parameters
            under their real names) and with gradient checkpointing enabled; or partitioned by DeepSpeed ZeRO-3
            (loaded after ``TrainingArguments(deepspeed=...)``, so ``from_pretrained`` ran under ``zero.Init``) or
            sharded by FSDP2 (``fully_shard``), with every rank calling this with the same data.
        config: which parameters, which score, which threshold.
        forget_dataset: rows (``image``, ``question``, ``answer``, ...) the model should forget; unused by ``random``.
        preserve_datasets: named preserve datasets, e.g. ``{"retain": ..., "text": ...}``; the names are those of
            ``config.preserve_sets``. Only ``fisher_ratio`` uses them.
        data_collator: ``rows -> dict of tensors`` with ``labels`` (e.g. ``UnlearnDataCollator(processor)``).
        device: where batches are sent (default: the model's first parameter's device; the model is not moved).
        fisher_device: where the fp32 accumulators live (default: next to each parameter; ``"cpu"`` saves memory).
        show_progress: show tqdm progress bars (on rank 0).
        sharded: on a ZeRO-3 / FSDP2 model, each rank keeps the fp32 sums of its own shard of every covered parameter
            (1/N of the memory) and the threshold is global (``saliency/sharded.py``); the default there. ``False``
            keeps whole-size sums on every rank (the single-process computation over the same gradients).

    Batches are consecutive rows (no shuffling), so the result is deterministic. ``config.max_batches`` caps each
    dataset separately. Every rank returns the whole mask.
    """
    _check_arguments(model, config, forget_dataset, preserve_datasets, data_collator)
    targets = config.resolve_targets(model)  # name -> group
    names = list(targets)
    params = dict(model.named_parameters())
    layout = Layout(model, {n: params[n] for n in names}, sharded)
    summary: dict[str, Any] = {"score": config.score, "threshold": config.threshold}
    common = dict(layout=layout, device=device, fisher_device=fisher_device, show_progress=show_progress)

    def select(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if layout.sharded:
            return sharded_top_fraction(layout, scores, config.threshold)
        return top_fraction(scores, config.threshold)

    with layout.passes():
        if config.score == "random":
            generator = torch.Generator().manual_seed(config.seed)  # every rank draws every tensor, keeps its part
            masks = select({n: layout.part(n, torch.rand(param_shape(params[n]), generator=generator))
                            for n in names})
        elif config.score == "grad_magnitude":
            sums, num, touched = _accumulate(
                model, forget_dataset, data_collator, names, config.batch_size, config.max_batches, square=False,
                desc="forget", **common,
            )
            _warn_untouched(names, touched, layout)
            masks = select({n: s.abs_() for n, s in sums.items()})
            summary["num_batches"] = {"forget": num}
        else:
            masks, fisher_summary = _fisher_ratio_masks(
                model, config, targets, forget_dataset, preserve_datasets, data_collator, common
            )
            summary.update(fisher_summary)

    masks = layout.full_masks(masks)  # whole bool masks on the CPU, every rank
    summary["groups"] = _group_counts(masks, targets)
    return SaliencyMask(masks, config=config, scores_summary=summary, architecture=describe_architecture(model, names))


_SIGNATURE = "compute_saliency_mask(model, config, forget_dataset, preserve_datasets, data_collator)"


def _is_dataset(value: Any) -> bool:
    return (hasattr(value, "__iter__") and not isinstance(value, (str, bytes, Mapping))
            and not (callable(value) and not hasattr(value, "__len__")))


def _check_arguments(model, config, forget_dataset, preserve_datasets, data_collator) -> None:
    """Types first, then the rows (without decoding images): a wrong call fails before any gradient is computed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch / transformers model, got {type(model).__name__}; the arguments are "
                        f"{_SIGNATURE}.")
    if not isinstance(config, SaliencyMaskConfig):
        raise TypeError(f"config must be a SaliencyMaskConfig, got {type(config).__name__}.")
    if forget_dataset is not None and not _is_dataset(forget_dataset):
        raise TypeError(f"forget_dataset must be a dataset (a datasets.Dataset or a list of rows), got "
                        f"{type(forget_dataset).__name__}; the arguments are {_SIGNATURE}.")
    if preserve_datasets is not None and not isinstance(preserve_datasets, Mapping):
        what = ("a collator" if callable(preserve_datasets) and not hasattr(preserve_datasets, "__len__")
                else f"a single {type(preserve_datasets).__name__}")
        raise TypeError(
            f"preserve_datasets must map preserve-set names to datasets, got {what}. The arguments are "
            f"{_SIGNATURE}: pass e.g. preserve_datasets={{'retain': retain_ds}} (the names config.preserve_sets uses: "
            f"{config.preserve_sets}) and the collator as data_collator."
        )
    for name, dataset in (preserve_datasets or {}).items():
        if not isinstance(name, str) or not _is_dataset(dataset):
            raise TypeError(f"preserve_datasets[{name!r}] must be a dataset under a string name, got "
                            f"{type(dataset).__name__}.")
    if data_collator is not None and (not callable(data_collator) or _is_dataset(data_collator)
                                      or isinstance(data_collator, Mapping)):
        raise TypeError(f"data_collator must be a callable turning a list of rows into a batch dict, got "
                        f"{type(data_collator).__name__}; the arguments are {_SIGNATURE}.")
    from ..data.collators import UnlearnDataCollator

    if data_collator is None:  # no rows are batched (the `random` score)
        return
    # Rows in hf_unlearn's / TRL's formats are checked now, whatever the collator (data/rows.py).
    ours = isinstance(data_collator, UnlearnDataCollator)
    validate_rows(forget_dataset, "forget set", require_known_format=ours)
    for name, dataset in (preserve_datasets or {}).items():
        validate_rows(dataset, f"preserve set {name!r}", require_known_format=ours)


def _fisher_ratio_masks(
    model: nn.Module,
    config: SaliencyMaskConfig,
    targets: dict[str, str],
    forget_dataset: Iterable | None,
    preserve_datasets: Mapping[str, Iterable] | None,
    data_collator: Collator | None,
    common: dict,
) -> tuple[dict[str, torch.Tensor], dict]:
    names = list(targets)
    sets_of = {n: config.preserve_set_names(group) for n, group in targets.items()}  # name -> preserve set names
    needed = list(dict.fromkeys(s for sets in sets_of.values() for s in sets))
    given = sorted(preserve_datasets or {})
    missing = [s for s in needed if s not in (preserve_datasets or {})]
    if missing:
        raise ValueError(
            f"preserve_datasets has no {missing} (given: {given}); config.preserve_sets={config.preserve_sets} needs "
            f"{needed} for the covered groups {sorted(set(targets.values()))}. Pass them, e.g. "
            "preserve_datasets={'retain': retain_ds, 'text': text_ds}, or change config.preserve_sets."
        )
    batch, cap = config.batch_size, config.max_batches
    forget_sums, num_forget, touched = _accumulate(
        model, forget_dataset, data_collator, names, batch, cap, square=True, desc="forget", **common
    )
    eps, gamma = config.epsilon, config.threshold
    # Every ratio below is (F_f + eps) / (F_p + eps) >= gamma, computed in place in the accumulators' buffers (the
    # same operations in the same order as the plain expression, so the same bits, without six full-size temporaries).
    forget_plus_eps = {n: s.div_(num_forget).add_(eps) for n, s in forget_sums.items()}
    # One pass per preserve set, over the parameters whose group uses it; batches never mix two sets. "pooled" keeps
    # adding every set's squared gradients to one running sum per parameter; "every" folds each set's ratio test into
    # a running AND and frees the set's sums. Either way at most two fp32 buffers per parameter exist at a time (the
    # forget Fisher and one preserve sum), plus a bool.
    pooled_sum: dict[str, torch.Tensor] = {}
    pooled_batches: dict[str, int] = {}
    keep: dict[str, torch.Tensor] = {}
    preserve_batches: dict[str, int] = {}
    for set_name in needed:
        covered = [n for n in names if set_name in sets_of[n]]
        pooled = config.preserve_combine == "pooled"
        sums, num, seen = _accumulate(
            model, preserve_datasets[set_name], data_collator, covered, batch, cap, square=True,
            desc=f"preserve {set_name!r}", into=pooled_sum if pooled else None, **common,
        )
        preserve_batches[set_name] = num
        touched |= seen
        for n in covered:
            if pooled:
                pooled_batches[n] = pooled_batches.get(n, 0) + num
            else:
                passed = _ratio_passes(forget_plus_eps[n], sums[n].div_(num).add_(eps), gamma)
                keep[n] = passed if n not in keep else keep[n].logical_and_(passed)
        del sums
    _warn_untouched(names, touched, common["layout"])

    masks = {}
    for n in names:
        if config.preserve_combine == "pooled":
            # Batch-weighted mean = one Fisher over the concatenation of the sets (whole batches).
            masks[n] = _ratio_passes(forget_plus_eps[n], pooled_sum.pop(n).div_(pooled_batches[n]).add_(eps), gamma)
        else:
            masks[n] = keep.pop(n)
        del forget_plus_eps[n]
    summary = {"num_batches": {"forget": num_forget, "preserve": preserve_batches},
               "preserve_combine": config.preserve_combine}
    return masks, summary


def _ratio_passes(forget_plus_eps: torch.Tensor, preserve_plus_eps: torch.Tensor, gamma: float) -> torch.Tensor:
    """``forget_plus_eps / preserve_plus_eps >= gamma``, dividing into the second buffer (which is consumed)."""
    return torch.div(forget_plus_eps, preserve_plus_eps, out=preserve_plus_eps).ge(gamma)


def _warn_untouched(names: list[str], touched: set[str], layout: Layout) -> None:
    untouched = [n for n in names if n not in touched]
    if untouched and layout.is_main:
        logger.warning(
            "%d covered parameter(s) received no gradient on any batch (unused by the forward pass, e.g. %s): their "
            "Fishers and gradient sums are 0 (Fisher ratio (0 + eps) / (0 + eps) = 1).",
            len(untouched), untouched[:3],
        )


def _group_counts(masks: dict[str, torch.Tensor], targets: dict[str, str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for group in (VISION, PROJECTOR, LANGUAGE):
        members = [n for n, g in targets.items() if g == group]
        if members:
            covered = sum(masks[n].numel() for n in members)
            selected = sum(int(masks[n].sum()) for n in members)
            out[group] = {"covered": covered, "selected": selected, "fraction": selected / covered}
    return out
