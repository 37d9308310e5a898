"""Per-GPU memory arithmetic for unlearning under DeepSpeed ZeRO-2, ZeRO-3 and ZeRO-3 + CPU offload.

Shared by ``hf-unlearn estimate-memory`` and ``docs/deepspeed.md`` (a test checks that the docs table is the
command's output). Model states follow DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs`` and
``estimate_zero3_model_states_mem_needs``, the functions behind ``..._all_cold``), split into their parts so that
frozen parameters (no gradient, no Adam state) and the unlearning extras can be added:

* bf16 working weights (2 B/param): replicated under ZeRO-2, 1/N under ZeRO-3, on the CPU with offload.
* per *trainable* parameter, partitioned 1/N: gradients (ZeRO-2: bf16 + fp32 partitions, 6 B; ZeRO-3: fp32, 4 B, as
  DeepSpeed counts them), fp32 master weights (4 B), Adam moments (8 B); on the CPU with offload.
* ZeRO-3 working set: the largest layer gathered with its gradient (4 B x its parameters), DeepSpeed's term.
* saliency masks: ZeRO-2 keeps full-shape ``bool`` masks on every GPU (the gradient hooks see full gradients), 1 B
  per masked-covered parameter; ZeRO-3 keeps only this rank's shard, bit-packed (the gradient partitions are masked
  after the reduce-scatter), 1 bit / N.
* exact-mask saved values: this rank's fp32 master values of *masked* entries, 4 B / N each (upper bound: every
  covered entry masked), held only when a fully masked step can move masked entries: momentum from earlier unmasked
  steps (MMUnlearner's alternate schedule) or weight decay with ``mask_scope="all"``. Two-pass steps
  (``mask_scope="forget"`` with a retain term) and fully masked steps without weight decay save nothing. With
  optimizer offload they live on the CPU.
* reference / teacher model: a copy (ZeRO-2: a bf16 stage-0 replica per GPU; ZeRO-3: sharded 1/N; offload: on the CPU)
  or precomputed (one float per forget row, on the CPU).

Computing the saliency mask first (``compute_saliency_mask``, the Fisher ratio) holds, per GPU (``mask_breakdown``):

* the bf16 weights: all of them on one GPU, 1/N under ZeRO-3 (the mask is computed across the same GPUs);
* gradients: on one GPU with gradient checkpointing every covered gradient until the backward ends (2 B each; without
  checkpointing each one is folded in as soon as it exists); under ZeRO-3 DeepSpeed's working set (the gathered
  largest layer and its gradient, 4 B x its parameters): each full gradient is cut to this rank's slice at once;
* the fp32 sums: the forget Fisher and one preserve sum per covered parameter (8 B), 1/N under ZeRO-3 (every rank
  keeps the sums of its own partition: ``saliency/sharded.py``); with ``fisher_device="cpu"`` in CPU RAM instead;
* the mask itself (bool, 1 B per covered parameter, 1/N under ZeRO-3) replaces the sums as they are freed, parameter
  by parameter; at the end every rank holds the whole mask in CPU RAM (1 B per covered parameter).

No optimizer, master weights or gradient partitions exist while the mask is computed (an inference engine gathers the
weights). Activations are not included: they depend on batch size, sequence length (576 image tokens per LLaVA-1.5
image) and gradient checkpointing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GIB = 2**30
SETUPS = ("zero2", "zero3", "zero3_offload")
SETUP_TITLES = {"zero2": "ZeRO-2", "zero3": "ZeRO-3", "zero3_offload": "ZeRO-3 + CPU offload"}
TRAINABLE_CHOICES = ("all", "language", "vision")


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of a model (shared parameters counted once)."""

    total: int
    language: int
    vision: int  # vision tower
    projector: int
    largest_layer: int  # most parameters held directly by one module (DeepSpeed's "largest layer")

    def trainable(self, which: str) -> int:
        """Parameters that train: ``all``, ``language`` (LM + lm_head) or ``vision`` (vision tower + projector)."""
        if which not in TRAINABLE_CHOICES:
            raise ValueError(f"trainable={which!r}; use one of {TRAINABLE_CHOICES}.")
        return {"all": self.total, "language": self.language, "vision": self.vision + self.projector}[which]


def count_parameters(model) -> ParameterCounts:
    """Count a model's parameters by group (works on the ``meta`` device: nothing is allocated)."""
    from ..models import LANGUAGE, PROJECTOR, VISION, parameter_groups

    groups = parameter_groups(model)
    seen: set[int] = set()
    sums = {LANGUAGE: 0, VISION: 0, PROJECTOR: 0, None: 0}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        sums[groups.get(name, LANGUAGE)] += p.numel()
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    total = sum(sums.values())
    # Parameters of no recognised group in a vision-language model (rare) count as language here.
    return ParameterCounts(total=total, language=sums[LANGUAGE] + sums[None], vision=sums[VISION],
                           projector=sums[PROJECTOR], largest_layer=largest)


def load_config(model_id_or_path: str):
    """``AutoConfig`` from a local ``config.json`` (file or folder) or a Hub id (needs the network)."""
    from transformers import AutoConfig, PretrainedConfig

    path = os.path.expanduser(model_id_or_path)
    if os.path.isfile(path):
        try:
            config_dict, _ = PretrainedConfig.get_config_dict(path)
        except OSError as error:  # not JSON: often the run's YAML, whose `model:` is what to pass
            raise ValueError(_not_a_model_config(path)) from error
        model_type = config_dict.get("model_type") if isinstance(config_dict, dict) else None
        if model_type is None:
            raise ValueError(f"{path} has no `model_type`: it is not a transformers config.json.")
        try:
            return AutoConfig.for_model(**config_dict)
        except ValueError as error:
            import transformers

            raise ValueError(f"{path}: model_type {model_type!r} is not known to transformers "
                             f"{transformers.__version__}; check the config, or upgrade transformers.") from error
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        where = "the folder has no config.json" if os.path.isdir(path) else (
            "it is not a local file or folder, and the Hugging Face Hub could not be reached (offline?)")
        raise ValueError(
            f"Could not load a model config from {model_id_or_path!r}: {where}. Pass a local config.json (e.g. "
            f"examples/deepspeed/llava-1.5-13b-config.json) or a folder containing one. ({type(error).__name__})"
        ) from error


def _not_a_model_config(path: str) -> str:
    try:
        import yaml

        with open(path, encoding="utf-8") as f:
            run = yaml.safe_load(f)
    except Exception:  # noqa: BLE001 - neither JSON nor YAML: say so below
        run = None
    if isinstance(run, dict) and ("method" in run or "model" in run):
        model = run.get("model")
        example = f" (here: hf-unlearn estimate-memory {model})" if isinstance(model, str) and model else ""
        return (f"{path} is an hf-unlearn run config, not a model config: pass the run's `model:` (a config.json, a "
                f"model folder or a Hub id){example}.")
    return f"{path} is not a JSON model config (config.json); pass a config.json, a model folder or a Hub model id."


def count_parameters_from_config(config) -> ParameterCounts:
    """Build the model on the ``meta`` device from its config and count its parameters."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else AutoModelForCausalLM
    with init_empty_weights():
        model = auto.from_config(config)
    return count_parameters(model)


# ----------------------------------------------------------------------------------------------------------------
# Arithmetic
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryPlan:
    """What trains and what the run holds besides the model states."""

    num_gpus: int = 8
    trainable: str = "all"
    masked: bool = True  # a saliency mask covers every trainable parameter
    weight_bytes: int = 2  # bf16 / fp16 working weights

    def __post_init__(self):
        if self.num_gpus < 1:
            raise ValueError(f"num_gpus must be >= 1, got {self.num_gpus}.")
        if self.trainable not in TRAINABLE_CHOICES:
            raise ValueError(f"trainable={self.trainable!r}; use one of {TRAINABLE_CHOICES}.")


ROWS = (
    ("weights", "weights (bf16)"),
    ("gradients", "gradients (ZeRO-2: bf16 + fp32, ZeRO-3: fp32)"),
    ("master", "fp32 master weights"),
    ("adam", "Adam moments (fp32 m, v)"),
    ("working", "ZeRO-3 gathered largest layer (+ grad)"),
    ("mask", "saliency masks (ZeRO-2: bool, full shape; ZeRO-3: own shard, 1 bit/param)"),
    ("reference", "reference / teacher copy"),
    ("snapshot", "exact-mask saved values (masked entries, fp32, 1/N; upper bound)"),
)


def breakdown(counts: ParameterCounts, plan: MemoryPlan, setup: str) -> dict[str, float]:
    """Bytes per GPU by component (``ROWS`` keys) for one setup, plus ``mask_bit`` and ``cpu`` (bytes per node)."""
    if setup not in SETUPS:
        raise ValueError(f"setup={setup!r}; use one of {SETUPS}.")
    n, p, t, w = plan.num_gpus, counts.total, counts.trainable(plan.trainable), plan.weight_bytes
    m = t if plan.masked else 0
    offload = setup == "zero3_offload"
    grad_bytes = 6 if setup == "zero2" else 4
    rows = {
        "weights": w * p if setup == "zero2" else (0 if offload else w * p / n),
        "gradients": 0 if offload else grad_bytes * t / n,
        "master": 0 if offload else 4 * t / n,
        "adam": 0 if offload else 8 * t / n,
        "working": 0 if setup == "zero2" else 4 * counts.largest_layer,
        "mask": m if setup == "zero2" else m / (8 * n),
        "snapshot": 0 if offload else 4 * m / n,
        "reference": w * p if setup == "zero2" else (0 if offload else w * p / n),
    }
    rows["cpu"] = deepspeed_estimate(counts, plan.num_gpus, setup)[0]
    return rows


def deepspeed_estimate(counts: ParameterCounts, num_gpus: int, setup: str,
                       total_params: int | None = None) -> tuple[int, int]:
    """``(cpu bytes per node, gpu bytes per GPU)`` from DeepSpeed's estimators (every parameter trainable)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    total = counts.total if total_params is None else total_params
    if setup == "zero2":
        return estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=num_gpus, cpu_offload=False)
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
        total, counts.largest_layer, num_gpus_per_node=num_gpus, cpu_offload=setup == "zero3_offload",
        cpu_offload_params=setup == "zero3_offload", zero_init=True)
    return cpu, gpu


def model_states(rows: dict[str, float]) -> float:
    """The model-state part of a breakdown (what DeepSpeed's estimators count)."""
    return sum(rows[k] for k in ("weights", "gradients", "master", "adam", "working"))


MASK_TARGETS = ("vision", "language")
MASK_ROWS = (
    ("weights", "weights (bf16; ZeRO-3: 1/N)"),
    ("gradients", "gradients (one GPU, gradient checkpointing: every covered one, bf16; ZeRO-3: gathered largest "
                  "layer + grad)"),
    ("sums", "Fisher sums (fp32, forget + preserve; ZeRO-3: own partition)"),
)


def mask_breakdown(counts: ParameterCounts, target: str, num_gpus: int, sharded: bool,
                   weight_bytes: int = 2) -> dict[str, float]:
    """Bytes per GPU (``MASK_ROWS`` keys) of computing the Fisher-ratio mask over ``target`` (``"vision"``: tower +
    projector; ``"language"``: language model + lm_head), on one GPU or sharded under ZeRO-3 over ``num_gpus``."""
    if target not in MASK_TARGETS:
        raise ValueError(f"target={target!r}; use one of {MASK_TARGETS}.")
    covered, n = counts.trainable(target), (num_gpus if sharded else 1)
    return {
        "weights": weight_bytes * counts.total / n,
        "gradients": 4 * counts.largest_layer if sharded else weight_bytes * covered,
        "sums": 8 * covered / n,
    }


def format_mask_report(counts: ParameterCounts, num_gpus: int) -> list[str]:
    """The mask-computation table of ``format_report``: vision and language masks, one GPU and ZeRO-3 side by side,
    against DeepSpeed's training estimate for ZeRO-3 on the same GPUs."""
    targets = [t for t in MASK_TARGETS if counts.trainable(t)]
    columns = [(t, sharded) for t in targets for sharded in (False, True)]
    tables = {c: mask_breakdown(counts, c[0], num_gpus, c[1]) for c in columns}
    _, training = deepspeed_estimate(counts, num_gpus, "zero3")
    b = 1e9
    lines = [
        "",
        "Saliency mask computation (Fisher ratio, compute_saliency_mask), before training: covered "
        + ", ".join(f"{t} {counts.trainable(t) / b:.2f}B" for t in targets) + f"; ZeRO-3 over the same {num_gpus} "
        "GPUs, each rank keeping the sums of its own partition",
        "",
        "| GiB per GPU | " + " | ".join(f"{t} mask, {'ZeRO-3' if sharded else 'one GPU'}" for t, sharded in columns)
        + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for key, label in MASK_ROWS:
        lines.append(f"| {label} | " + " | ".join(_gib(tables[c][key]) for c in columns) + " |")
    lines.append("| **total** | " + " | ".join(f"**{_gib(sum(tables[c].values()))}**" for c in columns) + " |")
    lines.append('| total, sums in CPU RAM (`fisher_device="cpu"`) | '
                 + " | ".join(_gib(sum(tables[c].values()) - tables[c]["sums"]) for c in columns) + " |")
    lines.append("| / DeepSpeed's ZeRO-3 training estimate | "
                 + " | ".join(f"{sum(tables[c].values()) / training:.2f}x" for c in columns) + " |")
    lines += ["", "The mask (bool) replaces the sums as they are freed; every rank ends with the whole mask in CPU RAM ("
              + ", ".join(f"{t} {_gib(counts.trainable(t))} GiB" for t in targets) + ")."]
    return lines


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def format_report(name: str, counts: ParameterCounts, plan: MemoryPlan, setups=SETUPS) -> str:
    """The markdown report printed by ``hf-unlearn estimate-memory`` and embedded in ``docs/deepspeed.md``."""
    tables = {s: breakdown(counts, plan, s) for s in setups}
    b = 1e9
    lines = [
        f"Model: {name}",
        f"Parameters: {counts.total / b:.2f}B total = language {counts.language / b:.2f}B + vision "
        f"{counts.vision / b:.2f}B + projector {counts.projector / b:.2f}B; largest layer "
        f"{counts.largest_layer / 1e6:.1f}M",
        f"Trainable: {plan.trainable} ({counts.trainable(plan.trainable) / b:.2f}B), saliency mask: "
        f"{'on the trainable parameters' if plan.masked else 'none'}, {plan.num_gpus} GPUs, bf16 weights, AdamW",
        "",
        "| GiB per GPU | " + " | ".join(SETUP_TITLES[s] for s in setups) + " |",
        "|---|" + "---:|" * len(setups),
    ]

    def row(label: str, values) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    for key, label in ROWS:
        row(label, [_gib(tables[s][key]) for s in setups])
    totals = (("**total, reference copy** (NPO, KL retain, VKD teacher)", ("mask", "reference")),
              ("**total, precomputed reference** (nothing saved)", ("mask",)),
              ("**total, saved values** (alternate schedule; weight decay + `mask_scope=\"all\"`)",
               ("mask", "snapshot")))
    for label, extras in totals:
        row(label, [f"**{_gib(model_states(t) + sum(t[k] for k in extras))}**" for t in tables.values()])
    row("DeepSpeed estimator, all parameters trainable",
        [_gib(deepspeed_estimate(counts, plan.num_gpus, s)[1]) for s in setups])
    row("CPU RAM per node, DeepSpeed estimator (all trainable)", [_gib(t["cpu"]) for t in tables.values()])
    lines += format_mask_report(counts, plan.num_gpus)
    lines.append("")
    lines.append("Activations are not included (batch, sequence length, gradient checkpointing).")
    return "\n".join(lines)
