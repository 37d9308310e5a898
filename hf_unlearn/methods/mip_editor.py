"""MIP-Editor: influential neuron path editing with representation misdirection (Li et al., AAAI 2026, arXiv
2511.06793; code ``PreckLi/MIP-Editor``).

1. **The influential path.** Layer by layer, the MLP neurons that carry the forget answers: at layer l, each neuron's
   attribution is the integrated gradient of the answers' log-likelihood with respect to its activation, taken along
   the straight path that scales the layer's activations *and the path neurons already chosen in the layers before*
   from 0 to their values together (so the choice at l accounts for the path so far). The ``path_neurons`` highest
   form the path at l. Language layers use the attribution itself ("inter-layer gradient integration"); vision-tower
   layers its square, the path-integrated Fisher information of the neuron ("Fisher integration").

       A_l(j) = (1/m) sum_{k=0}^{m-1} dJ/ds_j |_{s = k/m}      (vision: (1/m) sum_k (dJ/ds_j)^2)

   with the activations of layer l (and of the path neurons of layers < l) replaced by s * a (a from a clean
   forward), J the mean log-probability of the forget answer tokens and m = ``ig_steps``.
2. **Path editing by representation misdirection.** RMU (``rmu.py``) with only the path neurons' incoming weights
   trainable: the rows of the MLP's first projections (Llama ``gate_proj`` / ``up_proj``, CLIP ``fc1``) that produce
   the path neurons, held by an exact saliency mask (``mask_scope="all"``); forget activations at the steered layer
   are pushed onto c * u, retain activations kept at the frozen model's.

docs/methods/mip_editor.md says where we differ from the official code and from Open-MMUnlearning's port.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from trl.trainer.utils import selective_log_softmax

from .. import losses
from ..config_checks import require_int_at_least
from ..data.collators import UnlearnDataCollator
from ..data.rows import rows_with_images
from ..features import language_blocks, vision_blocks
from ..models import is_vision_language_model, layer_indices, mlp_projection
from ..trainers.registry import MethodSpec, register_method
from .rmu import RMUConfig, RMUTrainer, resolve_layers

logger = logging.getLogger(__name__)

# The MLP's output projection: its *input* is the vector of the block's neuron activations.
OUTPUT_PROJECTIONS = ("down_proj", "fc2", "c_proj")


@dataclass
class MIPEditorConfig(RMUConfig):
    r"""MIP-Editor: find the forget set's influential neuron path, then edit only its neurons with RMU.

    Inherits RMU's knobs (``steer_layer``, ``steering_coeff``, ``retain_weight``, ...). ``trainable_layers`` are the
    language layers the path covers (``None``: 0 .. ``steer_layer``, every layer that can move the steered output);
    ``trainable_params`` picks, inside a layer, the projections whose rows produce the neurons.

    Args:
        path_neurons (`int`, defaults to `5`): neurons per layer on the path (Open-MMUnlearning's ``path_topk``
            default; the official code's ``--topk`` per forget row, its default unknown to us).
        ig_steps (`int`, defaults to `5`): m, the Riemann steps of the path integral (left sum: alpha = k/m,
            k = 0..m-1; the official ``ig.py`` was not in the snapshot we could read).
        path_num_batches (`int` or `None`, defaults to `4`): forget batches the attributions are summed over;
            ``None``: all.
        vision_layers (`list[int]` or `None`): vision-tower layers on the path; ``None``: all (none when no forget
            row has an image: a text-only forget set has no vision path); ``[]``: none.
        vision_trainable_params (`str`): regex of the vision MLP projections whose path rows train.
    """

    trainable_params: str | None = field(
        default=r"^mlp\.(gate_proj|up_proj|fc1)\.",
        metadata={"help": "Regex, inside a language layer, of the projections whose path-neuron rows train (the "
                          "official code: up_proj and gate_proj)."},
    )
    mask_scope: str = field(
        default="all", metadata={"help": "'all': only the path rows move, under every loss term (the method).",
                                 "choices": ["forget", "all"]},
    )
    path_neurons: int = field(default=5, metadata={"help": "Neurons per layer on the influential path."})
    ig_steps: int = field(default=5, metadata={"help": "Riemann steps of the path integral (alpha = k/m)."})
    path_num_batches: int | None = field(
        default=4, metadata={"help": "Forget batches the path attributions are summed over; None: all."}
    )
    vision_layers: list[int] | None = field(
        default=None, metadata={"help": "Vision-tower layers on the path (negative from the end); None: all; []: none."}
    )
    vision_trainable_params: str = field(
        default=r"^mlp\.(fc1|gate_proj|up_proj)\.",
        metadata={"help": "Regex, inside a vision layer, of the projections whose path-neuron rows train."},
    )

    def __post_init__(self):
        super().__post_init__()
        require_int_at_least(self, "path_neurons", 1, "The path needs at least one neuron per layer.")
        require_int_at_least(self, "ig_steps", 1, "One step is the plain gradient x activation at alpha = 0.")
        require_int_at_least(self, "path_num_batches", 1, allow_none=True)
        if self.trainable_params is None:
            raise ValueError("trainable_params=None would train whole layers; MIP-Editor edits only the path "
                             r"neurons' rows. Pass a regex such as '^mlp\.(gate_proj|up_proj)\.'.")
        for name in ("trainable_params", "vision_trainable_params"):
            try:
                re.compile(getattr(self, name))
            except re.error as err:
                raise ValueError(f"{name}={getattr(self, name)!r} is not a valid regex ({err}).") from None


# ----------------------------------------------------------------------------------------------------------------
# The influential path
# ----------------------------------------------------------------------------------------------------------------
def output_projection(block: nn.Module) -> nn.Linear:
    """The MLP's output projection of a transformer block (its input: the block's neuron activations)."""
    return mlp_projection(block, OUTPUT_PROJECTIONS, "output projection", "MIP-Editor")


@contextmanager
def _replaced_activations(projections: list[nn.Linear], values: list[torch.Tensor | None]):
    """While active, the input of ``projections[i]`` is ``values[i]`` (None: left as computed)."""
    def hook(i):
        def replace(_module, args):
            return None if values[i] is None else (values[i], *args[1:])
        return replace

    handles = [p.register_forward_pre_hook(hook(i)) for i, p in enumerate(projections)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _clean_activations(model: nn.Module, batch: dict, projections: list[nn.Linear]) -> list[torch.Tensor]:
    seen: list[torch.Tensor | None] = [None] * len(projections)

    def hook(i):
        def capture(_module, args):
            seen[i] = args[0].detach()
        return capture

    handles = [p.register_forward_pre_hook(hook(i)) for i, p in enumerate(projections)]
    try:
        model(**batch)
    finally:
        for h in handles:
            h.remove()
    if any(a is None for a in seen):
        raise RuntimeError("A path layer did not run in the forward (a vision layer on a batch without images?).")
    return seen  # type: ignore[return-value]


def answer_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """J: the mean log-probability of the label tokens of a batch (minus ``model(...).loss``), in float32 or in the
    logits' own precision when finer (float64: the attributions' finite-difference test needs it)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    logits, labels = losses.shift_for_next_token(logits, labels)
    mask = labels != losses.IGNORE_INDEX
    logps = selective_log_softmax(logits, labels.masked_fill(~mask, 0))
    return (logps * mask).sum() / mask.sum().clamp(min=1)


def layer_attribution(model: nn.Module, batches: Iterable[dict], projections: list[nn.Linear], layer: int,
                      path: dict[int, torch.Tensor], steps: int, fisher: bool = False) -> torch.Tensor:
    """A_layer (see the module docstring), summed over ``batches``: (I,) on the CPU, float32.

    ``projections`` are the output projections of the tower's layers in order; ``path`` maps each earlier layer to
    the indices of its path neurons (scaled together with layer ``layer``); J = ``answer_log_likelihood``."""
    total = None
    for batch in batches:
        clean = _clean_activations(model, batch, projections[: layer + 1])
        width = clean[layer].shape[-1]
        for k in range(steps):
            alpha = k / steps
            scale = torch.full((width,), alpha, dtype=clean[layer].dtype, device=clean[layer].device,
                               requires_grad=True)
            values: list[torch.Tensor | None] = []
            for i, a in enumerate(clean):
                if i == layer:
                    values.append(a * scale)
                else:  # earlier layers: held at their clean values, the path neurons scaled with this layer
                    s = torch.ones(a.shape[-1], dtype=a.dtype, device=a.device)
                    s[path[i].to(a.device)] = alpha
                    values.append(a * s)
            with torch.enable_grad(), _replaced_activations(projections[: layer + 1], values):
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                (grad,) = torch.autograd.grad(answer_log_likelihood(logits, batch["labels"]), scale)
            term = (grad * grad if fisher else grad).detach().float().cpu() / steps
            total = term if total is None else total + term
    if total is None:
        raise ValueError("No forget batch to attribute the path on.")
    return total


def influential_path(model: nn.Module, batches: list[dict], blocks: nn.ModuleList, layers: list[int],
                     neurons: int, steps: int, fisher: bool = False) -> dict[int, torch.Tensor]:
    """``{layer: indices of its path neurons}``, chosen layer after layer (``layers`` ascending) on ``batches``."""
    projections = [output_projection(blocks[i]) for i in range(max(layers) + 1)] if layers else []
    path: dict[int, torch.Tensor] = {}
    for layer in range(max(layers) + 1 if layers else 0):
        scores = layer_attribution(model, batches, projections, layer, path, steps, fisher)
        k = min(neurons, scores.numel())
        # The path runs through every layer up to the last chosen one (the joint path needs them); only the
        # requested layers are returned for editing.
        path[layer] = torch.sort(scores, descending=True, stable=True).indices[:k].sort().values
    return {layer: path[layer] for layer in layers}


def path_mask(model: nn.Module, blocks: nn.ModuleList, path: dict[int, torch.Tensor], pattern: str) \
        -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask}``: the rows producing the path neurons in the parameters of each path layer whose
    name inside the layer matches ``pattern`` (every other entry held)."""
    names = {id(p): n for n, p in model.named_parameters()}
    regex = re.compile(pattern)
    masks: dict[str, torch.Tensor] = {}
    for layer, idx in path.items():
        width = output_projection(blocks[layer]).in_features
        matched = [(n, p) for n, p in blocks[layer].named_parameters() if regex.search(n)]
        if not matched:
            inside = [n for n, _ in blocks[layer].named_parameters()]
            raise ValueError(f"No parameter of layer {layer} matches {pattern!r}; names inside a layer: {inside}.")
        for local, p in matched:
            if p.shape[0] != width:
                raise ValueError(f"{local} of layer {layer} has {p.shape[0]} output rows, not the {width} MLP neurons: "
                                 "the regex must select the projections that produce the neurons (gate/up, fc1).")
            mask = torch.zeros(p.shape, dtype=torch.bool)
            mask[idx] = True
            masks[names[id(p)]] = mask
    return masks


# ----------------------------------------------------------------------------------------------------------------
# The trainer: RMU on the path rows
# ----------------------------------------------------------------------------------------------------------------
class MIPEditorTrainer(RMUTrainer):
    """MIP-Editor: the influential path is found at construction (on the starting model, the forget rows), then RMU
    trains only its rows. Attributes: ``path`` (``{"language": {layer: indices}, "vision": {...}}``) and
    ``path_mask`` (the saliency mask it trains under). A resume rebuilds the same path from the starting model, as
    ``Trainer``'s resume expects the model it started from."""

    config_class = MIPEditorConfig
    _name = "MIP-Editor"
    _method_tag = "mip_editor"
    _paper = {
        "title": "Cross-Modal Unlearning via Influential Neuron Path Editing in Multimodal Large Language Models",
        "id": "2511.06793",
        "citation": "@inproceedings{li2026mipeditor,\n  title={Cross-Modal Unlearning via Influential Neuron Path "
                    "Editing in Multimodal Large Language Models},\n  author={Li, Kunhao and Li, Wenhao and Wu, Di "
                    "and Yang, Lei and Bai, Jun and Jia, Ju and Xue, Jason},\n  booktitle={AAAI},\n  year={2026}\n}",
    }

    def __init__(self, model, args=None, data_collator=None, train_dataset=None, retain_dataset=None, *pos,
                 ref_model=None, saliency_mask=None, **kwargs):
        if saliency_mask is not None:
            raise ValueError("MIP-Editor trains the rows of its influential path under a mask it builds itself; it "
                             "takes no saliency_mask.")
        if kwargs.get("peft_config") is not None or hasattr(model, "peft_config"):
            raise ValueError("MIP-Editor edits the influential neurons' own weight rows: a LoRA adapter cannot hold "
                             "a row-restricted edit. Drop peft_config (the path is a few rows per layer: the edit "
                             "is small without an adapter), or use RMU with peft_config.")
        args = self._coerce_args(args, model)
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError("The forget set (`train_dataset`) is empty: there is nothing to unlearn. Pass the rows "
                             "to forget.")
        steer, _ = resolve_layers(len(language_blocks(model)), args.steer_layer, None)
        if args.trainable_layers is None:  # every layer that can move the steered output
            args.trainable_layers = list(range(steer + 1))
        processing_class = kwargs.get("processing_class")
        if data_collator is None and processing_class is None:
            raise ValueError("Pass `processing_class` (tokenizer or processor) or a `data_collator`.")
        collator = data_collator or UnlearnDataCollator(processing_class, answer_only=args.answer_only_loss,
                                                        max_length=args.max_length)
        self.path, self.path_mask = self.find_path(model, train_dataset, collator, args)
        super().__init__(model, args, data_collator, train_dataset, retain_dataset, *pos, ref_model=ref_model,
                         saliency_mask=self.path_mask, **kwargs)
        for modality, layers in self.path.items():
            count = sum(len(i) for i in layers.values())
            self.record_metric(f"mip_path_{modality}_neurons", float(count))

    def find_path(self, model, rows, collator, args) -> tuple[dict[str, dict[int, torch.Tensor]], dict]:
        """The influential path of each tower on the forget rows, and the mask of the rows that produce it."""
        steer, layers = resolve_layers(len(language_blocks(model)), args.steer_layer, args.trainable_layers)
        device = next(model.parameters()).device
        batch_size = args.per_device_train_batch_size

        def batches(indices: list[int]) -> list[dict]:
            out = []
            for start in range(0, len(indices), batch_size):
                if args.path_num_batches is not None and len(out) >= args.path_num_batches:
                    break
                batch = collator([rows[i] for i in indices[start:start + batch_size]])
                out.append({k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)})
            return out

        was_training = model.training
        model.eval()
        try:
            lang = language_blocks(model)
            path = {"language": influential_path(model, batches(list(range(len(rows)))), lang, layers,
                                                 args.path_neurons, args.ig_steps)}
            mask = path_mask(model, lang, path["language"], args.trainable_params)
            with_images = rows_with_images(rows) if is_vision_language_model(model) else []
            if args.vision_layers not in (None, []) and not with_images:
                raise ValueError(f"vision_layers={args.vision_layers}: the vision path is attributed on forget rows "
                                 "with images and the forget set has none; set vision_layers=[] (or leave it None, "
                                 "which takes a text-only path for text-only rows).")
            if args.vision_layers != [] and with_images:  # None: every vision layer, when there are images to read
                vis = vision_blocks(model)
                path["vision"] = influential_path(model, batches(with_images), vis,
                                                  layer_indices(len(vis), args.vision_layers, "vision_layers"), args.path_neurons,
                                                  args.ig_steps, fisher=True)
                mask.update(path_mask(model, vis, path["vision"], args.vision_trainable_params))
        finally:
            model.train(was_training)
        logger.info("MIP-Editor path: %s", {m: {k: len(v) for k, v in p.items()} for m, p in path.items()})
        return path, mask

    def select_trainable_names(self, model, args) -> list[str]:
        return list(self.path_mask)


register_method(MethodSpec("mip_editor", MIPEditorTrainer, "MIP-Editor: RMU on the rows of the forget set's "
                                                           "influential neuron path (vision and language)."))
