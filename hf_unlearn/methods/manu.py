"""MANU: modality-aware neuron unlearning (Liu et al., ACL 2025 Findings, arXiv 2502.15910). Training-free.

MANU scores every MLP neuron of the chosen layers by how much more it fires on the forget set than on the retain set,
per modality (vision-tower neurons on image rows, language-model neurons on text-only rows), and prunes the top
``prune_percent`` % of each modality: their weight rows (and bias) in the MLP's first projection are set to zero, so
the neuron's output is exactly 0 on every input (GELU(0) = SiLU(0) = 0).

For a neuron with activations a (the first projection's output, before the nonlinearity) over the valid positions of
a set (language: non-padding tokens; vision: every patch):

    I_abs  = mean |a|      I_freq = mean 1[|a| > activation_threshold]
    I_var  = std a (population)      I_rms = sqrt(mean a^2)
    score  = sum_m w_m * (I_m(forget) / (I_m(retain) + epsilon) - 1)

with the authors' weights (abs 2, freq 0, var 2, rms 2). ``prune(...)`` returns the edited model; ``MANUTrainer``
(registered as ``manu``) prunes once, at its first training step, and its steps train nothing, so ``hf-unlearn run``,
the demo and the contract tests run it like every other method. docs/methods/manu.md says where we differ from the
authors' code and from Open-MMUnlearning's port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import UnlearnConfig
from ..config_checks import require_in_range, require_int_at_least, require_non_negative, require_positive
from ..data.collators import UnlearnDataCollator
from ..data.rows import rows_with_images
from ..features import language_blocks, vision_blocks
from ..models import is_vision_language_model, layer_indices, mlp_projection, unwrap_model
from ..trainers.base import UnlearnTrainer
from ..trainers.registry import MethodSpec, register_method

logger = logging.getLogger(__name__)

METRICS = ("abs", "freq", "var", "rms")
VISION, LANGUAGE = "vision", "language"
# The MLP's first projection, whose outputs are the neurons: CLIP / SigLIP / Qwen2-VL `fc1`, Llama / Qwen `gate_proj`
# (a zero gate silences the neuron whatever `up_proj` gives), GPT-2 `c_fc`.
FIRST_PROJECTIONS = ("fc1", "gate_proj", "c_fc")
PAPER_LAYERS = 3  # the authors prune the last 3 layers of each tower (vision 21-23 of 24, language 29-31 of 32)
PRUNED_PREFIX = "manu.pruned:"  # precomputed-store names: one bool mask per pruned module (saved in checkpoints)


@dataclass
class MANUConfig(UnlearnConfig):
    r"""MANU: training-free pruning of the neurons that fire more on the forget set than on the retain set.

    Args:
        prune_percent (`float`, defaults to `2.0`): percentage of each modality's scored neurons to prune (the
            authors' script: 2 %; Open-MMUnlearning's default: 10 %).
        vision_layers (`list[int]` or `None`): vision-tower layers whose MLP neurons are scored (negative counts from
            the end); ``None``: the last 3 (the authors'); ``[]``: none.
        language_layers (`list[int]` or `None`): the same for the language model's decoder layers.
        weight_abs, weight_freq, weight_var, weight_rms (`float`): weights of the four importance ratios (the
            authors': 2, 0, 2, 2).
        activation_threshold (`float`, defaults to `0.1`): |a| above which a neuron counts as firing (``I_freq``).
        epsilon (`float`, defaults to `1e-5`): added to the retain statistic before dividing.
        max_score_rows (`int` or `None`): score on at most this many rows of each set (the first ones); ``None``: all.
        max_steps (`int`, defaults to `1`): MANU trains nothing: its steps after the pruning are no-ops.
    """

    max_steps: int = field(default=1, metadata={"help": "MANU trains nothing: steps after the pruning are no-ops."})
    retain_loss_type: str | None = field(
        default=None, metadata={"help": "MANU needs the retain set to score neurons: None or 'nll' (no retain loss is "
                                        "trained: the steps are no-ops)."},
    )
    prune_percent: float = field(
        default=2.0, metadata={"help": "Percent of each modality's scored MLP neurons to prune (authors: 2)."}
    )
    vision_layers: list[int] | None = field(
        default=None, metadata={"help": "Vision-tower layers to score (negative from the end); None: the last 3."}
    )
    language_layers: list[int] | None = field(
        default=None, metadata={"help": "Language-model layers to score (negative from the end); None: the last 3."}
    )
    weight_abs: float = field(default=2.0, metadata={"help": "Weight of the mean |activation| ratio."})
    weight_freq: float = field(default=0.0, metadata={"help": "Weight of the firing-frequency ratio."})
    weight_var: float = field(default=2.0, metadata={"help": "Weight of the activation standard-deviation ratio."})
    weight_rms: float = field(default=2.0, metadata={"help": "Weight of the RMS-activation ratio."})
    activation_threshold: float = field(default=0.1, metadata={"help": "|a| above which a neuron fires (I_freq)."})
    epsilon: float = field(default=1e-5, metadata={"help": "Added to the retain statistic before dividing."})
    max_score_rows: int | None = field(
        default=None, metadata={"help": "Score on at most this many rows of each set; None: all."}
    )

    def __post_init__(self):
        super().__post_init__()
        require_in_range(self, "prune_percent", 0.0, 100.0, high_inclusive=True)
        require_non_negative(self, "weight_abs", "weight_freq", "weight_var", "weight_rms", "activation_threshold")
        require_positive(self, "epsilon")
        require_int_at_least(self, "max_score_rows", 1, allow_none=True)
        if self.retain_loss_type not in (None, "nll"):
            raise ValueError(f"retain_loss_type={self.retain_loss_type!r}: MANU scores neurons on the retain set, so "
                             "it needs one; use None or 'nll' (its steps train nothing either way).")
        if self.weight_abs + self.weight_freq + self.weight_var + self.weight_rms <= 0:
            raise ValueError("weight_abs, weight_freq, weight_var and weight_rms are all 0: every neuron would score 0. "
                             "Give at least one a positive weight (the authors': 2, 0, 2, 2).")

    @property
    def metric_weights(self) -> dict[str, float]:
        return {"abs": self.weight_abs, "freq": self.weight_freq, "var": self.weight_var, "rms": self.weight_rms}


# ----------------------------------------------------------------------------------------------------------------
# Which neurons: the first MLP projection of the chosen layers of each tower
# ----------------------------------------------------------------------------------------------------------------
def resolve_layer_indices(num_layers: int, layers: Sequence[int] | None, what: str) -> list[int]:
    """``layers`` as sorted non-negative indices; None: the last ``PAPER_LAYERS``."""
    return layer_indices(num_layers, layers, what, default=range(max(0, num_layers - PAPER_LAYERS), num_layers))


def first_projection(block: nn.Module) -> nn.Linear:
    """The first projection of a transformer block's MLP (its output dimension is the block's neurons)."""
    return mlp_projection(block, FIRST_PROJECTIONS, "first projection", "MANU")


def neuron_modules(model: nn.Module, vision_layers: Sequence[int] | None = None,
                   language_layers: Sequence[int] | None = None) -> dict[str, dict[str, nn.Linear]]:
    """``{"vision": {name: Linear}, "language": {name: Linear}}``: the projections whose output neurons MANU scores,
    keyed by their module names in the (unwrapped) model. A text-only model has no vision entries."""
    model = unwrap_model(model)
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[str, dict[str, nn.Linear]] = {VISION: {}, LANGUAGE: {}}
    towers = [(LANGUAGE, language_blocks(model), language_layers, "language_layers")]
    if is_vision_language_model(model):
        towers.insert(0, (VISION, vision_blocks(model), vision_layers, "vision_layers"))
    for modality, blocks, layers, what in towers:
        for i in resolve_layer_indices(len(blocks), layers, what):
            module = first_projection(blocks[i])
            found[modality][names[id(module)]] = module
    return found


# ----------------------------------------------------------------------------------------------------------------
# Statistics, scores, selection, pruning: pure functions of activations and tensors
# ----------------------------------------------------------------------------------------------------------------
class ActivationStatistics:
    """Running per-neuron sums of a set's activations at some projections (float64: std by difference of moments)."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self.count: dict[str, int] = {}

    def add(self, name: str, activations: torch.Tensor) -> None:
        """``activations``: (N, I), one row per valid position."""
        a = activations.detach().to(torch.float64)
        parts = {"abs": a.abs().sum(0), "freq": (a.abs() > self.threshold).sum(0).to(torch.float64),
                 "sum": a.sum(0), "sq": (a * a).sum(0)}
        if name not in self.sums:
            self.sums[name], self.count[name] = {k: torch.zeros_like(v, device="cpu") for k, v in parts.items()}, 0
        for k, v in parts.items():
            self.sums[name][k] += v.cpu()
        self.count[name] += a.shape[0]

    def metrics(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{metric: {name: (I,) float64}}`` for the metrics of ``METRICS``."""
        out: dict[str, dict[str, torch.Tensor]] = {m: {} for m in METRICS}
        for name, s in self.sums.items():
            n = self.count[name]
            if n == 0:
                raise ValueError(f"No activations were collected at {name}: the set had no valid position there.")
            mean, mean_sq = s["sum"] / n, s["sq"] / n
            out["abs"][name] = s["abs"] / n
            out["freq"][name] = s["freq"] / n
            out["var"][name] = (mean_sq - mean * mean).clamp_min(0).sqrt()  # the authors' "I_var" is a std
            out["rms"][name] = mean_sq.sqrt()
        return out


def importance_scores(forget: dict[str, dict[str, torch.Tensor]], retain: dict[str, dict[str, torch.Tensor]],
                      weights: dict[str, float], epsilon: float = 1e-5) -> dict[str, torch.Tensor]:
    """``{name: (I,)}``: sum over metrics of ``w_m * (forget_m / (retain_m + epsilon) - 1)``."""
    scores: dict[str, torch.Tensor] = {}
    for metric, w in weights.items():
        if w == 0:
            continue
        for name, f in forget[metric].items():
            term = w * (f / (retain[metric][name] + epsilon) - 1.0)
            scores[name] = scores[name] + term if name in scores else term
    return scores


def top_neurons(scores: dict[str, torch.Tensor], percent: float) -> dict[str, torch.Tensor]:
    """Bool masks (True: pruned) of the ``percent`` % highest scores over all the given modules together: exactly
    ``max(1, floor(percent / 100 * N))`` neurons for ``percent > 0`` (ties broken by position), none for 0."""
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    k = 0 if percent <= 0 else min(flat.numel(), max(1, int(percent / 100.0 * flat.numel())))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    if k:
        # A stable descending sort: equal scores go to the earlier module / neuron, so the pick is reproducible.
        chosen[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    masks, start = {}, 0
    for n in names:
        size = scores[n].numel()
        masks[n] = chosen[start:start + size].clone()
        start += size
    return masks


@torch.no_grad()
def silence_neurons(modules: dict[str, nn.Linear], masks: dict[str, torch.Tensor]) -> int:
    """Zero the weight rows (and bias entries) of the masked output neurons; returns how many were zeroed."""
    pruned = 0
    for name, mask in masks.items():
        linear = modules[name]
        if mask.shape != (linear.out_features,):
            raise ValueError(f"MANU mask for {name} has shape {tuple(mask.shape)}; the projection has "
                             f"{linear.out_features} output neurons.")
        rows = mask.to(linear.weight.device)
        linear.weight[rows] = 0
        if linear.bias is not None:
            linear.bias[rows] = 0
        pruned += int(mask.sum())
    return pruned


# ----------------------------------------------------------------------------------------------------------------
# Collecting activations and selecting neurons on a model
# ----------------------------------------------------------------------------------------------------------------
Batches = Callable[[list], Iterable[dict]]  # rows -> model-input batches on the model's device


@contextmanager
def _collecting(modules: dict[str, nn.Linear], stats: ActivationStatistics, valid: dict):
    """Hooks that add each module's output to ``stats``; ``valid["mask"]`` (a (B, T) bool tensor or None) selects
    the positions of language activations shaped (B, T, I)."""
    def hook(name):
        def collect(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            mask = valid.get("mask")
            if mask is not None and tuple(out.shape[:-1]) == tuple(mask.shape):
                stats.add(name, out[mask.to(out.device)])
            else:
                stats.add(name, out.reshape(-1, out.shape[-1]))
        return collect

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def set_statistics(model: nn.Module, batches: Iterable[dict], modules: dict[str, nn.Linear], threshold: float,
                   positions_from_attention_mask: bool) -> dict[str, dict[str, torch.Tensor]]:
    """Per-neuron statistics of ``modules``' outputs over ``batches`` (model inputs)."""
    stats, valid = ActivationStatistics(threshold), {}
    with _collecting(modules, stats, valid):
        for batch in batches:
            mask = batch.get("attention_mask")
            valid["mask"] = mask.bool() if positions_from_attention_mask and mask is not None else None
            model(**batch)
    return stats.metrics()


def row_kinds(rows) -> dict[str, list[int]]:
    """Indices of the rows with an image (``"image"``) and of the text-only rows (``"text"``), without decoding."""
    with_images = set(rows_with_images(rows))
    return {"image": sorted(with_images), "text": [i for i in range(len(rows)) if i not in with_images]}


def scoring_kinds(forget_kinds: dict[str, list[int]], retain_kinds: dict[str, list[int]]) -> dict[str, str]:
    """Which rows score each modality, the same kind in both sets so that the ratio compares like with like: vision
    neurons on image rows; language neurons on text-only rows when both sets have some (the authors' unimodal data),
    else on image rows when both have some (the built-in demo's forget set is image questions only), else on all."""
    def both(kind: str) -> bool:
        return bool(forget_kinds[kind]) and bool(retain_kinds[kind])

    return {VISION: "image", LANGUAGE: "text" if both("text") else "image" if both("image") else "all"}


def select_neurons(model: nn.Module, forget, retain, batches: Batches, config: MANUConfig) -> dict[str, torch.Tensor]:
    """MANU's pick on ``model``: ``{module name: bool (I,) mask}`` (True: prune), per modality the top
    ``config.prune_percent`` % of the scored neurons. ``batches(rows)`` turns a list of rows into model inputs."""
    if len(forget) == 0 or retain is None or len(retain) == 0:
        raise ValueError("MANU compares activations on the forget and retain sets: both must be non-empty.")
    modules = neuron_modules(model, config.vision_layers, config.language_layers)
    kinds = {"forget": row_kinds(forget), "retain": row_kinds(retain)}
    use = scoring_kinds(kinds["forget"], kinds["retain"])
    was_training = model.training
    model.eval()
    masks: dict[str, torch.Tensor] = {}
    try:
        for modality, group in modules.items():
            if modality == VISION and not kinds["forget"]["image"] and config.vision_layers is None:
                logger.info("MANU: no forget row has an image, so no vision neuron carries what is forgotten; "
                            "pruning the language model only.")
                continue
            if not group:
                continue
            per_set = []
            for name, rows in (("forget", forget), ("retain", retain)):
                keep = list(range(len(rows))) if use[modality] == "all" else kinds[name][use[modality]]
                keep = keep[:config.max_score_rows] if config.max_score_rows is not None else keep
                if not keep:
                    raise ValueError(f"MANU scores the {modality} neurons on the {name} rows with images, and the "
                                     f"{name} set has none. Add image rows, or set vision_layers=[] to prune the "
                                     "language model only.")
                per_set.append(set_statistics(model, batches([rows[i] for i in keep]), group,
                                              config.activation_threshold, modality == LANGUAGE))
            scores = importance_scores(per_set[0], per_set[1], config.metric_weights, config.epsilon)
            masks.update(top_neurons(scores, config.prune_percent))
    finally:
        model.train(was_training)
    return masks


def prune(model: nn.Module, processing_class, forget, retain, config: MANUConfig | None = None,
          batch_size: int = 4, **knobs) -> nn.Module:
    """Prune ``model`` in place with MANU and return it.

    Args:
        model: a vision-language model (or a text-only causal LM: language neurons only).
        processing_class: its processor or tokenizer (rows are collated with ``UnlearnDataCollator``).
        forget, retain: rows in the common schema (``question``, ``answer``, optional ``image``).
        config: a ``MANUConfig``; or pass its knobs (``prune_percent=...``, ...) as keyword arguments.
    """
    if config is None:
        config = MANUConfig(output_dir="manu", **knobs)
    elif knobs:
        raise ValueError(f"Pass either config= or MANU knobs, not both (got config and {sorted(knobs)}).")
    if hasattr(model, "peft_config"):
        raise ValueError("MANU zeroes rows of the base weights; merge the PEFT adapters first "
                         "(model = model.merge_and_unload()).")
    collator = UnlearnDataCollator(processing_class, answer_only=config.answer_only_loss, max_length=config.max_length)
    device = next(model.parameters()).device

    def batches(rows: list) -> Iterable[dict]:
        for start in range(0, len(rows), batch_size):
            batch = collator(rows[start:start + batch_size])
            yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    masks = select_neurons(model, forget, retain, batches, config)
    modules = {n: m for group in neuron_modules(model, config.vision_layers, config.language_layers).values()
               for n, m in group.items()}
    silence_neurons(modules, masks)
    return model


# ----------------------------------------------------------------------------------------------------------------
# The registry entry: prune at the first step, then no-op steps
# ----------------------------------------------------------------------------------------------------------------
class MANUTrainer(UnlearnTrainer):
    """MANU as a trainer: the pruning happens at the first training step (after the starting point is measured, so
    the run's before/after log shows what the pruning changed); every step then trains nothing. What was pruned is
    kept in the precomputed store (``manu.pruned:<module>``, in every checkpoint), so a resume does not prune again.

    One process or DDP (every rank scores the same rows; DDP's start-of-training broadcast keeps the replicas equal).
    DeepSpeed and FSDP keep their own copies of the weights: prune with ``hf_unlearn.methods.manu.prune`` first.
    """

    config_class = MANUConfig
    _name = "MANU"
    _method_tag = "manu"
    _paper = {
        "title": "Modality-Aware Neuron Pruning for Unlearning in Multimodal Large Language Models",
        "id": "2502.15910",
        "citation": "@inproceedings{liu2025manu,\n  title={Modality-Aware Neuron Pruning for Unlearning in Multimodal "
                    "Large Language Models},\n  author={Liu, Zheyuan and Dou, Guangyao and Yuan, Xiangchi and Zhang, "
                    "Chunhui and Tan, Zhaoxuan and Jiang, Meng},\n  booktitle={Findings of ACL},\n  year={2025}\n}",
    }

    def __init__(self, *args, **kwargs):
        if kwargs.get("peft_config") is not None:
            raise ValueError("MANU is training-free: it silences neurons of the base model, so a LoRA adapter would "
                             "hold nothing. Drop peft_config; the pruned model saves as a full model.")
        super().__init__(*args, **kwargs)
        if self.retain_dataset is None:
            raise ValueError("MANU scores neurons by comparing forget and retain activations: pass retain_dataset=.")
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError("MANU edits the weights once and trains nothing; DeepSpeed and FSDP hold their own copies "
                             "of them. Run it in one process (or DDP), or call hf_unlearn.methods.manu.prune(model, "
                             "processor, forget, retain) before sharding.")
        if hasattr(self.model, "peft_config"):
            raise ValueError("MANU zeroes rows of the base weights; merge the PEFT adapters first "
                             "(model = model.merge_and_unload()).")
        neuron_modules(self.model, self.args.vision_layers, self.args.language_layers)  # bad layers fail here

    @classmethod
    def from_method_data(cls, model, processing_class, data, args, *, mask=None, ref_model=None, peft_config=None):
        if mask is not None:
            raise ValueError("MANU prunes neurons it scores itself; it takes no saliency mask.")
        return cls(model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                   processing_class=processing_class, holdout_dataset=data.holdout, peft_config=peft_config)

    @property
    def pruned(self) -> dict[str, torch.Tensor]:
        """``{module name: bool mask}`` of the neurons pruned (empty before the first step)."""
        return {n[len(PRUNED_PREFIX):]: self.precomputed.rows(n)[0] for n in self.precomputed.names()
                if n.startswith(PRUNED_PREFIX)}

    def apply_pruning(self) -> None:
        """Score and prune once (the precomputed store remembers it, in every checkpoint)."""
        model = self.accelerator.unwrap_model(self.model)
        forget, retain = self.forget_dataset.dataset, self.retain_dataset.dataset  # the rows, without the index

        def batches(rows: list) -> Iterable[dict]:
            return (self.model_inputs(b) for b in self.eval_batches(rows))

        masks = select_neurons(model, forget, retain, batches, self.args)
        groups = neuron_modules(model, self.args.vision_layers, self.args.language_layers)
        for modality, group in groups.items():
            chosen = {n: masks[n] for n in group if n in masks}
            if not chosen:
                continue
            count = silence_neurons(group, chosen)
            total = sum(m.numel() for m in chosen.values())
            self.record_metric(f"manu_pruned_{modality}", float(count))
            self.record_metric(f"manu_pruned_{modality}_fraction", count / total)
            logger.info("MANU pruned %d of %d %s neurons.", count, total, modality)
        for name, mask in masks.items():
            self.precomputed.put(PRUNED_PREFIX + name, [mask])

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()  # as Trainer.training_step does (the per-term logs are taken in training mode)
        if not self.pruned:
            self.apply_pruning()
        # Nothing to train: no forward, no backward; the optimizer skips parameters without gradients.
        return torch.zeros((), device=self.args.device)


register_method(MethodSpec("manu", MANUTrainer, "MANU: prune the MLP neurons that fire more on forget than retain "
                                                "rows, per modality (training-free)."))
