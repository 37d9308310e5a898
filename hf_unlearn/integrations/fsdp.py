"""Every FSDP2 special case of hf_unlearn (accelerate's FSDP plugin with ``fsdp_version: 2``, torch ``fully_shard``).

Why this module exists (measured on 2 CPU processes with gloo, torch 2.13, accelerate 1.15; docs/distributed.md):

* ``fully_shard`` replaces every parameter by a ``DTensor`` shard and reduces gradients inside ``backward``:
  saliency masks bind to the shards in ``hf_unlearn/masking/fsdp.py``.
* A rank whose batch has no image skips the vision tower. FSDP2 all-gathers each unit's weights in its forward and
  reduce-scatters its gradients in backward, so a unit that one rank runs and another skips leaves the collectives
  unmatched (gloo: ``Connection reset by peer`` in ``all_gather_single``). Keep the vision tower out of the wrapped
  units (wrap the decoder layers only: ``fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer``; it then belongs to
  the root unit every forward runs), and ``prepare_training`` turns on ``set_reduce_scatter_unused_params`` so the
  ranks reduce-scatter the same parameters (zeros where unused) and ``enable_input_require_grads`` so a text-only
  batch still has a backward through the language model's units. ``check_units_run_on_every_rank`` and
  ``check_gradient_agreement`` refuse what would still hang, with the fix.
* Frozen references (NPO, KL_Min) are sharded with TRL's ``prepare_fsdp`` (one unit: every forward all-gathers it
  whole, whatever the batch holds), or precomputed (no second model). VKD keeps its teacher replicated (it runs only
  on batches with images) or precomputes its features.
* accelerate enables its FSDP plugin only on accelerators: with ``use_cpu=True`` a run asked for FSDP silently trains
  with DDP. ``allow_fsdp_on_cpu`` lifts that gate so the FSDP2 code paths run on CPU machines (tests, ``--tiny``).

Collectives: ``gather_full_params``, ``check_gradient_agreement`` and every forward and backward of a sharded model;
every rank runs the same steps, so they line up.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from transformers import TrainerCallback

__all__ = [
    "FSDPTrainingCallback",
    "allow_fsdp_on_cpu",
    "flat_shards",
    "check_gradient_agreement",
    "check_units_run_on_every_rank",
    "gather_full_params",
    "is_dtensor",
    "is_fsdp2_module",
    "local_tensor",
    "prepare_for_inference",
    "prepare_training",
]


def is_fsdp2_module(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def is_dtensor(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 (DTensor) parameter or gradient; the tensor itself otherwise."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def flat_shards(param) -> tuple[int, list[tuple[int, int]], object]:
    """``(this rank, [(start, stop) of every rank], process group)``: rank r's shard of an FSDP2 parameter is the flat
    slice ``[start_r, stop_r)`` of the full parameter (``fully_shard`` splits dim 0 into ``ceil(dim0 / N)``-row
    chunks, as ``torch.chunk`` does, the last ones short or empty). Only ``fully_shard``'s 1-D ``Shard(0)`` layout."""
    from torch.distributed.tensor import Shard

    mesh, placements = param.device_mesh, tuple(param.placements)
    if mesh.ndim != 1 or placements != (Shard(0),):
        raise NotImplementedError(
            f"Sharded saliency scores support FSDP2's 1-D Shard(0) layout (fully_shard over one mesh dimension), got "
            f"placements {placements} on a {mesh.ndim}-D mesh (HSDP?). Pass sharded=False to compute_saliency_mask.")
    rows = param.shape[0]
    per_row = param.numel() // rows if rows else 0
    chunk = -(-rows // mesh.size())
    ranges = [(min(r * chunk, rows) * per_row, min((r + 1) * chunk, rows) * per_row) for r in range(mesh.size())]
    return mesh.get_local_rank(), ranges, mesh.get_group()


# ----------------------------------------------------------------------------------------------------------------
# CPU machines
# ----------------------------------------------------------------------------------------------------------------
def allow_fsdp_on_cpu() -> None:
    """Let accelerate's FSDP plugin run with ``use_cpu=True`` (2+ processes, gloo). Call before the Trainer exists.

    accelerate 1.15's ``AcceleratorState`` switches to ``DistributedType.FSDP`` only for GPU-like distributed types
    (``MULTI_GPU``, ``MULTI_NPU``, ...), not ``MULTI_CPU``: with ``use_cpu=True`` the plugin is dropped and the Trainer
    wraps the model in DDP, silently. torch's ``fully_shard`` itself runs on CPU with gloo. This keeps the plugin and
    the FSDP distributed type when one was asked for; nothing changes where accelerate already uses FSDP. Idempotent.
    """
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    if getattr(AcceleratorState.__init__, "_hf_unlearn_cpu_fsdp", False):
        return
    original = AcceleratorState.__init__

    @functools.wraps(original)
    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        if fsdp_plugin is not None:
            self.fsdp_plugin = fsdp_plugin
            self._hf_unlearn_cpu_fsdp = True
        # Every later AcceleratorState() (e.g. inside get_state_dict) copies PartialState's MULTI_CPU back: keep FSDP.
        if getattr(self, "_hf_unlearn_cpu_fsdp", False) and getattr(self, "fsdp_plugin", None) is not None:
            self.distributed_type = DistributedType.FSDP

    __init__._hf_unlearn_cpu_fsdp = True
    AcceleratorState.__init__ = __init__


# ----------------------------------------------------------------------------------------------------------------
# Policy and reference models
# ----------------------------------------------------------------------------------------------------------------
def _units(model: nn.Module) -> list[str]:
    """Names of the submodules wrapped as their own FSDP2 unit (the root excluded)."""
    from torch.distributed.fsdp import FSDPModule

    return [name for name, m in model.named_modules() if name and isinstance(m, FSDPModule)]


def check_units_run_on_every_rank(model: nn.Module) -> None:
    """Refuse FSDP2 units inside the vision tower or projector: batches without images skip them on some ranks."""
    from ..models import get_projector, get_vision_tower

    vision = [m for m in (get_vision_tower(model), get_projector(model)) if m is not None]
    if not vision:
        return
    inside = {id(sub) for m in vision for sub in m.modules()}
    named = dict(model.named_modules())
    bad = [name for name in _units(model) if id(named[name]) in inside]
    if bad:
        raise ValueError(
            f"FSDP2 wraps {len(bad)} module(s) of the vision tower / projector as their own unit (e.g. {bad[:2]}). A "
            "rank whose batch has no image (text-only retain rows) skips them while another rank runs them, and the "
            "all-gathers stop matching (a hang). Wrap only the language model's decoder layers, e.g. "
            "`fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer` (accelerate config) or "
            "fsdp_config={'transformer_layer_cls_to_wrap': ['LlamaDecoderLayer']}; the vision tower then stays in the "
            "root unit, which every forward runs."
        )


def prepare_training(model: nn.Module) -> None:
    """Once the Trainer has sharded the policy (``on_train_begin``): make every rank's passes run the same units.

    * ``check_units_run_on_every_rank``: no unit inside the vision tower / projector.
    * ``set_reduce_scatter_unused_params(True)``: a rank whose batch left the vision tower without gradient still
      reduce-scatters it (zeros), like the other ranks (FSDP2's ``find_unused_parameters``).
    * ``enable_input_require_grads()``: a loss computed from the outputs of a text-only batch while only the vision
      tower trains still has a gradient path, through the language model's units like the other ranks' (without it
      that rank runs no backward at all, and the others wait forever in theirs). ``check_gradient_agreement``
      catches what is left.
    """
    if not is_fsdp2_module(model):
        return
    check_units_run_on_every_rank(model)
    model.set_reduce_scatter_unused_params(True)
    if hasattr(model, "enable_input_require_grads") and not getattr(model, "_hf_unlearn_input_grads", False):
        model.enable_input_require_grads()
        model._hf_unlearn_input_grads = True


def check_gradient_agreement(has_gradient: bool, device) -> None:
    """Every rank's pass must, or must not, reach a trainable parameter (a collective, once per pass).

    A rank whose loss has no gradient path runs no backward through the units while another rank does: FSDP2's
    backward all-gathers and reduce-scatters would not match (a hang). With ``enable_input_require_grads`` every loss
    computed from the model's outputs has a path; what is left is a loss that is not computed from them at all (VKD's
    retain term on a batch without images while ``retain_nll_weight=0``).
    """
    from .ranks import all_ranks_agree

    if not all_ranks_agree([has_gradient], device):
        raise ValueError(
            "Under FSDP2 this step's loss reaches the trainable parameters on some ranks and not on others (e.g. "
            "VKD's retain feature term on a batch without images, while retain_nll_weight=0): the ranks' backward "
            "passes would run different FSDP2 units and their collectives would never match. Give every retain row "
            "an image (text-only rows carry no signal for that term), set a retain term that every row has (VKD: "
            "retain_nll_weight > 0), or launch with DDP."
        )


def prepare_for_inference(model: nn.Module, accelerator) -> nn.Module:
    """Shard a frozen reference / teacher model like the policy (TRL's ``prepare_fsdp``: one unit, eval mode)."""
    from trl.models.utils import prepare_fsdp

    model.eval().requires_grad_(False)
    return prepare_fsdp(model, accelerator)


class FSDPTrainingCallback(TrainerCallback):
    """``on_train_begin``, once the Trainer has sharded the policy: ``prepare_training``. (Saliency masks on the
    shards: ``hf_unlearn/masking/fsdp.py``.)"""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        prepare_training(self.trainer.model_wrapped)


# ----------------------------------------------------------------------------------------------------------------
# Full weights (tests, debugging, export)
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def gather_full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: full fp32 CPU tensor}`` on every rank from a sharded model. A collective: call it on every rank."""
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        value = param.full_tensor() if is_dtensor(param) else param
        out[name] = value.detach().float().cpu().clone()
    return out
