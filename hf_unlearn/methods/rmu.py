"""RMU: representation misdirection for unlearning (Li et al., 2024, "The WMDP Benchmark", arXiv 2403.03218).

On forget rows the output h_l of decoder layer l (the residual stream after block l) is pulled toward c * u, a fixed
random unit vector u (entries uniform in [0, 1), normalised) scaled by the steering coefficient c; on retain rows it
is kept equal to the frozen starting model's h_l^ref:

    L = forget_weight * mean_f ||h_l(x_f) - c u||^2 / d  +  alpha * mean_r ||h_l(x_r) - h_l^ref(x_r)||^2 / d

(per position the mean over the hidden size d, as the reference code's ``mse_loss``; averaged over the positions that
predict answer tokens, then over rows). Only the chosen parameters of layers l-2..l train (the paper: the MLP down
projection), frozen in place before the optimizer exists.

The forward stops at layer l: nothing after it affects the loss (single process only; under DDP / DeepSpeed the full
forward runs so the wrapper sees it). The frozen copy shares every frozen weight with the policy, so it costs only
the trainable matrices; ``precompute_retain_activations=True`` instead stores h_l^ref of every retain row at the start
(``PrecomputedStore``: on CPU, in every checkpoint, so a resume needs no copy either) and holds no copy. On a vision-language model the steered layer is a language-model decoder layer and the
forget rows are VQA rows (image tokens pass through it; the answer positions are steered).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import TrainerCallback

from .. import losses
from ..config import UnlearnConfig
from ..config_checks import require_positive
from ..data.row_index import ROW_INDEX_KEY
from ..features import language_blocks
from ..models import unwrap_model
from ..trainers.base import UnlearnTrainer
from ..trainers.peft_setup import apply_peft_config
from ..trainers.registry import MethodSpec, register_method


@dataclass
class RMUConfig(UnlearnConfig):
    r"""RMU: representation misdirection (Li et al., 2024, WMDP, arXiv 2403.03218).

    On forget rows the output of decoder layer ``steer_layer`` is pulled toward c * u (u a fixed random unit vector,
    c = ``steering_coeff``); on retain rows it is kept equal to the frozen starting model's (weight ``retain_weight``,
    the paper's alpha). Only ``trainable_params`` of ``trainable_layers`` train. Both terms are the mean squared error
    over the hidden dimension, averaged over the positions that predict answer tokens (every text token with
    ``answer_only_loss=False``), then over rows. Defaults follow the paper's Zephyr-7B recipe.

    Args:
        steer_layer (`int` or `None`, defaults to `None`): decoder layer whose output is steered (negative counts from
            the end). ``None``: the paper's relative depth, layer 7 of 32, i.e. ``int(num_layers * 7 / 32)``.
        trainable_layers (`list[int]` or `None`, defaults to `None`): layers whose parameters train; ``None``: the
            paper's ``steer_layer - 2 .. steer_layer`` (clipped at 0). Layers after ``steer_layer`` cannot change
            its output, so they are rejected.
        trainable_params (`str` or `None`, defaults to ``"^mlp\.down_proj\."``): regex searched in each parameter's
            name relative to its layer (e.g. ``mlp.down_proj.weight``); the reference code trains only this matrix.
            ``None`` trains every parameter of the trainable layers.
        steering_coeff (`float`, defaults to `6.5`): c, the norm of the steering target (paper, Zephyr-7B: 6.5; its
            code default and OpenUnlearning's class default: 20; OpenUnlearning's yaml: 2). Scale it with the model's
            activation norm at ``steer_layer``.
        retain_weight (`float`, defaults to `1200.0`): alpha, weight of the retain activation match (paper, Zephyr).
        retain_loss_type (`str` or `None`): ``None`` or ``"nll"`` enable RMU's retain term (the activation match;
            with a retain set, the default), ``"none"`` disables it; ``"kl"`` is not supported.
        control_vector_seed (`int` or `None`, defaults to `None`): seed of u; ``None`` uses ``seed``.
        precompute_retain_activations (`bool`, defaults to `False`): compute the frozen model's activations on every
            retain row once at the start (kept on CPU) and hold no frozen copy afterwards.
        learning_rate (`float`, defaults to `5e-5`): the reference code's learning rate.
    """

    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate (RMU reference code: 5e-5)."})
    retain_weight: float = field(
        default=1200.0, metadata={"help": "alpha: weight of the retain activation match (paper, Zephyr-7B: 1200)."}
    )
    steer_layer: int | None = field(
        default=None,
        metadata={"help": "Decoder layer whose output is steered (negative counts from the end). None: "
                          "int(num_layers * 7 / 32), the paper's layer 7 of 32."},
    )
    trainable_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Decoder layers that train; None: steer_layer-2 .. steer_layer (the paper)."},
    )
    trainable_params: str | None = field(
        default=r"^mlp\.down_proj\.",
        metadata={"help": "Regex searched in parameter names relative to their layer; None: every parameter of the "
                          "trainable layers. Default: the MLP down projection (the reference code)."},
    )
    steering_coeff: float = field(
        default=6.5, metadata={"help": "c: norm of the random steering target c*u (paper, Zephyr-7B: 6.5)."}
    )
    control_vector_seed: int | None = field(
        default=None, metadata={"help": "Seed of the random unit vector u; None uses `seed`."}
    )
    precompute_retain_activations: bool = field(
        default=False,
        metadata={"help": "Compute the frozen model's retain activations once at the start (CPU); hold no copy."},
    )

    def __post_init__(self):
        super().__post_init__()
        require_positive(self, "steering_coeff")
        if self.retain_loss_type == "kl":
            raise ValueError("RMUConfig does not support retain_loss_type='kl': RMU's retain term matches the frozen "
                             "model's activations at steer_layer. Use 'nll' (enables it) or 'none'.")
        if self.trainable_layers is not None and len(self.trainable_layers) == 0:
            raise ValueError("trainable_layers is empty: nothing would train. Pass layer indices or None.")
        if self.stop_forget_loss_above is not None:
            raise ValueError("RMU computes no forget NLL during training (it stops the forward at steer_layer), so "
                             "stop_forget_loss_above cannot apply; unset it.")

_DISTRIBUTED_WRAPPERS = frozenset({"DistributedDataParallel", "DeepSpeedEngine", "FullyShardedDataParallel"})
PAPER_LAYER, PAPER_DEPTH = 7, 32  # Zephyr-7B: layer 7 of 32


class _StopForward(Exception):
    """Raised by the capture hook once the steered layer has run: the rest of the forward is not needed."""


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: positions whose next token is scored, i.e. the hidden states that produce the answer."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != losses.IGNORE_INDEX
    return mask


def control_vector(dim: int, coeff: float, seed: int) -> torch.Tensor:
    """c * u with u uniform in [0, 1)^dim, normalised to unit length (the paper's random direction), fp32 (dim,)."""
    u = torch.rand(dim, generator=torch.Generator().manual_seed(seed))
    return coeff * u / u.norm()


def resolve_layers(num_layers: int, steer_layer: int | None,
                   trainable_layers: list[int] | None) -> tuple[int, list[int]]:
    """The steered layer and the trainable layers as non-negative indices, validated."""
    def normalise(i: int, what: str) -> int:
        if not -num_layers <= i < num_layers:
            raise ValueError(f"{what}={i} is out of range for a model with {num_layers} decoder layers; use "
                             f"0..{num_layers - 1} or -{num_layers}..-1.")
        return i % num_layers

    if steer_layer is None:  # the paper's relative depth
        steer = num_layers * PAPER_LAYER // PAPER_DEPTH
    else:
        steer = normalise(steer_layer, "steer_layer")
    if trainable_layers is None:
        layers = [i for i in (steer - 2, steer - 1, steer) if i >= 0]
    else:
        layers = sorted({normalise(i, "trainable_layers entry") for i in trainable_layers})
    after = [i for i in layers if i > steer]
    if after:
        raise ValueError(f"trainable_layers {after} come after steer_layer={steer}: they cannot change its output, so "
                         f"they would never learn. Use layers <= {steer}.")
    return steer, layers


def rmu_trainable_parameter_names(model: nn.Module, layers: list[int], pattern: str | None) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the parameters RMU trains: those of ``layers`` whose name inside
    the layer matches ``pattern`` (all when None). On a PEFT model only parameters that require grad (adapters)."""
    blocks = language_blocks(model)
    regex = re.compile(pattern) if pattern is not None else None
    peft = hasattr(model, "peft_config")
    wanted = {id(p) for i in layers for name, p in blocks[i].named_parameters()
              if (regex is None or regex.search(name)) and (p.requires_grad or not peft)}
    names = [name for name, p in model.named_parameters() if id(p) in wanted]
    if not names:
        inside = [name for name, _ in blocks[layers[-1]].named_parameters()]
        raise ValueError(f"No parameter of layers {layers} matches trainable_params={pattern!r}"
                         + (" among those that require grad (PEFT adapters)" if peft else "")
                         + f". Parameter names inside a layer: {inside[:12]}. Pass a regex that matches some, or "
                         "None to train every parameter of the trainable layers"
                         + ("; or put adapters on the modules RMU trains (e.g. LoraConfig(target_modules=['down_proj'])"
                            ", `lora_target_modules: [down_proj]` in hf-unlearn run)." if peft else "."))
    return names


RETAIN_ACTIVATION = "retain.activation"  # the stored frozen-model activations (PrecomputedStore)


class _PrecomputeRetainCallback(TrainerCallback):
    def __init__(self, trainer: RMUTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.precompute_retain_activations(resumed=state.global_step > 0)


class RMUTrainer(UnlearnTrainer):
    """RMU: steer layer-l activations on forget rows to c * u, keep them on retain rows. See the module docstring.

    Args (beyond ``UnlearnTrainer``'s):
        ref_model: the frozen model whose retain activations are matched (a model or a path). Default: the starting
            model (a frozen copy sharing the frozen weights; PEFT: the base with adapters off).

    Attributes set at init: ``steer_layer_index``, ``trainable_layer_indices``, ``trainable_names`` (every other
    parameter of the model is frozen in place).
    """

    config_class = RMUConfig
    reference_shares_frozen = True  # frozen weights are the same in policy and reference: only the trained ones copy
    _name = "RMU"
    _method_tag = "rmu"
    _paper = {
        "title": "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning",
        "id": "2403.03218",
        "citation": "@inproceedings{li2024wmdp,\n  title={The {WMDP} Benchmark: Measuring and Reducing Malicious Use "
                    "With Unlearning},\n  author={Li, Nathaniel and Pan, Alexander and Gopal, Anjali and Yue, Summer "
                    "and others},\n  booktitle={ICML},\n  year={2024}\n}",
    }

    def __init__(self, model, args=None, data_collator=None, train_dataset=None, retain_dataset=None, *pos,
                 ref_model=None, **kwargs):
        args = self._coerce_args(args, model)
        model = apply_peft_config(model, kwargs.pop("peft_config", None), args)  # first, as TRL: freezing reads it
        # Layers and the trainable set, frozen before the reference copy and the optimizer exist
        self.steer_layer_index, self.trainable_layer_indices = resolve_layers(
            len(language_blocks(model)), args.steer_layer, args.trainable_layers)
        args.steer_layer, args.trainable_layers = self.steer_layer_index, self.trainable_layer_indices
        self.trainable_names = self.select_trainable_names(model, args)
        keep = set(self.trainable_names)
        peft = hasattr(model, "peft_config")
        for name, p in model.named_parameters():
            if name not in keep:
                p.requires_grad_(False)
            elif not peft:
                p.requires_grad_(True)
        super().__init__(model, args, data_collator, train_dataset, retain_dataset, *pos, ref_model=ref_model,
                         **kwargs)
        if args.precompute_retain_activations and self.retain_dataset is not None:
            self.add_callback(_PrecomputeRetainCallback(self))
        self._control: torch.Tensor | None = None
        self._layer_cache: dict[int, nn.Module] = {}

    def select_trainable_names(self, model, args) -> list[str]:
        """The parameters that train (``trainable_params`` of the trainable layers); every other one is frozen in
        place before the reference copy and the optimizer exist. MIP-Editor picks its own (its influential path)."""
        return rmu_trainable_parameter_names(model, self.trainable_layer_indices, args.trainable_params)

    # ------------------------------------------------------------------------------------------------------------
    # Reference
    # ------------------------------------------------------------------------------------------------------------
    def needs_reference(self, args) -> bool:
        if not self.uses_retain(args):
            return False
        return not args.precompute_retain_activations or self.given_reference is not None

    # ------------------------------------------------------------------------------------------------------------
    # Activations
    # ------------------------------------------------------------------------------------------------------------
    def _steered_layer(self, model) -> nn.Module:
        key = id(unwrap_model(model))
        if key not in self._layer_cache:
            self._layer_cache[key] = language_blocks(model)[self.steer_layer_index]
        return self._layer_cache[key]

    def layer_output(self, model, inputs: dict) -> torch.Tensor:
        """h_l for a model batch, (B, T, D); the forward stops after layer l unless a distributed wrapper runs it."""
        # An interrupted forward is safe for a plain module; DDP / DeepSpeed / FSDP expect complete ones.
        stop = type(model).__name__ not in _DISTRIBUTED_WRAPPERS and not self.is_deepspeed_enabled
        captured: list[torch.Tensor] = []

        def hook(module, args, output):
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)
            if stop:
                raise _StopForward

        handle = self._steered_layer(model).register_forward_hook(hook)
        try:
            model(**inputs)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"Decoder layer {self.steer_layer_index} ran {len(captured)} times in one forward; RMU "
                               "expects exactly one pass.")
        return captured[0]

    @torch.no_grad()
    def reference_layer_output(self, model, inputs: dict) -> torch.Tensor:
        with self.reference.active(model, self.accelerator.unwrap_model) as ref:
            return self.layer_output(ref, inputs)

    def control_vector(self, dim: int) -> torch.Tensor:
        """The steering target c * u (fp32, (D,)), fixed for the whole run by ``control_vector_seed`` / ``seed``."""
        if self._control is None or self._control.shape[0] != dim:
            seed = self.args.control_vector_seed if self.args.control_vector_seed is not None else self.args.seed
            self._control = control_vector(dim, self.args.steering_coeff, seed)
        return self._control

    @torch.no_grad()
    def precompute_retain_activations(self, resumed: bool = False) -> None:
        """Store the frozen model's h_l at the answer positions of every retain row (``retain.activation``), then
        drop the frozen copy."""
        if RETAIN_ACTIVATION in self.precomputed or not self.uses_retain():
            return
        self.check_starting_model(resumed, "retain activations", "precompute_retain_activations=True")
        model = self.model
        was_training = model.training
        model.eval()
        rows: list[torch.Tensor] = []
        with self.starting_model(model) as frozen:  # the given frozen model, the PEFT base, or the starting model
            for batch in self.eval_batches(self.retain_dataset):
                inputs = self.model_inputs(batch)
                h = self.layer_output(frozen, inputs)
                mask = answer_positions(inputs["labels"])
                rows.extend(h[b][mask[b]] for b in range(h.shape[0]))
        self.precomputed.put(RETAIN_ACTIVATION, rows)
        self.reference.drop()
        model.train(was_training)

    def _retain_target(self, model, retain: dict, inputs: dict, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if RETAIN_ACTIVATION not in self.precomputed:
            return self.reference_layer_output(model, inputs)
        stored = self.precomputed.gather(RETAIN_ACTIVATION, retain[ROW_INDEX_KEY], like=h)
        if stored.shape[0] != int(mask.sum()):
            raise RuntimeError(f"{stored.shape[0]} stored retain activations for {int(mask.sum())} answer positions: "
                               "the collator changed since they were precomputed.")
        target = torch.zeros_like(h)
        target[mask] = stored
        return target

    # ------------------------------------------------------------------------------------------------------------
    # Losses
    # ------------------------------------------------------------------------------------------------------------
    def forget_loss(self, model, forget):
        inputs = self.model_inputs(forget)
        h = self.layer_output(model, inputs)  # (B, T, D)
        if model.training and torch.is_grad_enabled() and not h.requires_grad:
            raise RuntimeError(f"The output of decoder layer {self.steer_layer_index} carries no gradient, so RMU "
                               "cannot learn: something (a custom forward, reentrant checkpointing of an outer module) "
                               "detached it. Disable gradient checkpointing or use "
                               "gradient_checkpointing_kwargs={'use_reentrant': False}.")
        mask = answer_positions(inputs["labels"])
        target = self.control_vector(h.shape[-1]).to(h.device)
        loss = losses.masked_activation_mse(h, target, mask)
        return loss, {"forget_activation_mse": loss.item(),
                      "forget_activation_norm": h[mask].float().norm(dim=-1).mean().item() if mask.any() else 0.0}

    def retain_loss(self, model, retain):
        inputs = self.model_inputs(retain)
        h = self.layer_output(model, inputs)
        mask = answer_positions(inputs["labels"])
        loss = losses.masked_activation_mse(h, self._retain_target(model, retain, inputs, h, mask), mask)
        return loss, {"retain_activation_mse": loss.item()}


register_method(MethodSpec("rmu", RMUTrainer, "RMU: steer a decoder layer's forget activations to a random vector, "
                                              "keep retain activations."))
