"""SMFA: Sculpted Memory Forgetting Adapter (Zeng et al. 2025, "Towards Benign Memory Forgetting for Selective
Multimodal Large Language Model Unlearning", arXiv 2511.20196).

Two LoRA adapters train side by side on the same frozen starting model, in the same steps:

* the **memory forgetting adapter** (MFA) learns to *refuse* the forget questions (NLL of a refusal answer, the forget
  rows' images kept) while still answering the retain questions (NLL of their answers);
* the **retaining anchor** (RA) learns the retain answers only.

When training ends, every adapted weight gets the MFA's delta *sculpted* by the anchor's: with per-matrix deltas
``D_f = s B_f A_f`` and ``D_r = s B_r A_r`` and ``rho = ||D_f||_F / (||D_r||_F + 1e-12)``, an entry of ``D_f`` is zeroed
where it points against the anchor *and* dominates it::

    masked_ij = (D_f_ij * D_r_ij < 0)  and  (|D_f_ij| > anchor_k * rho * |D_r_ij|)
    W_ij     <- W_ij + (0 if masked_ij else D_f_ij)

and the adapters are removed: the result is a plain model (no adapter to load; the sculpted delta is not low-rank).
Open-MMUnlearning's rule (``src/model/__init__.py: _sculpt_smfa_delta``); docs/methods/smfa.md says where we differ
from its trainer (``src/trainer/unlearn/smfa.py``) and why. ``peft_config=`` (a ``peft.LoraConfig``) sets both
adapters; without it ``lora_r`` / ``lora_alpha`` / ``lora_dropout`` / ``lora_target_modules`` build one.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..config import UnlearnConfig
from ..config_checks import require_non_negative
from ..trainers.base import UnlearnTrainer
from ..trainers.peft_setup import is_peft_model
from ..trainers.registry import MethodSpec, register_method
from .idkpo import CHOSEN_BATCH_KEY, RefusalPairCollator, RefusalRows

FORGET_ADAPTER = "smfa_forget"  # the memory forgetting adapter (MFA)
ANCHOR_ADAPTER = "smfa_anchor"  # the retaining anchor (RA)
ADAPTERS = (FORGET_ADAPTER, ANCHOR_ADAPTER)
# Open-MMUnlearning's "all" preset: attention and MLP projections (a name ending matches in every tower).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NORM_EPSILON = 1e-12  # keeps rho finite where the anchor did not move a matrix (Open-MMUnlearning's value)


@dataclass
class SMFAConfig(UnlearnConfig):
    r"""SMFA: a refusal adapter and a retain anchor adapter, the first sculpted by the second, merged when training ends.

    Args:
        anchor_k (`float`, defaults to `5.0`): how far the forget delta must dominate the anchor's (rescaled to the
            forget delta's norm) before a conflicting entry is dropped; 0 drops every entry whose sign conflicts with
            the anchor's, a large value drops none (Open-MMUnlearning: 5 for its image adapter, 10 for its text one).
        refusal_column, refusals: the refusal answers the forget adapter learns (as IdkPO's: a column of the forget
            set, or one drawn per row from a list, seeded).
    """

    retain_loss_type: str | None = field(
        default=None, metadata={"help": "SMFA's anchor and forget adapter learn the retain answers: None or 'nll'."}
    )
    anchor_k: float = field(
        default=5.0, metadata={"help": "Drop a forget-delta entry that conflicts in sign with the anchor's and exceeds "
                                       "anchor_k x the anchor's (rescaled) entry; 0: every conflicting entry."}
    )
    refusal_column: str | None = field(
        default=None, metadata={"help": "Forget-set column with each row's refusal answer; None: draw from refusals."}
    )
    refusals: list[str] | None = field(
        default=None, metadata={"help": "Refusal answers to draw from (seeded per row); None: the built-in list."}
    )

    def __post_init__(self):
        super().__post_init__()
        require_non_negative(self, "anchor_k")
        if self.retain_loss_type not in (None, "nll"):
            raise ValueError(f"retain_loss_type={self.retain_loss_type!r}: SMFA trains its retaining anchor (and its "
                             "forget adapter) on the retain answers, so it needs a retain set; use None or 'nll'.")
        if self.refusals is not None and (not self.refusals or not all(isinstance(r, str) and r.strip()
                                                                        for r in self.refusals)):
            raise ValueError("refusals must be a non-empty list of non-empty strings, or None for the built-in list.")
        if self.refusal_column is not None and self.refusals is not None:
            raise ValueError("Pass refusal_column (one refusal per row) or refusals (a list to draw from), not both.")


def default_lora_config():
    """Both adapters' LoRA settings when no ``peft_config`` is given: Open-MMUnlearning's ``configs/peft/lora.yaml``."""
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(DEFAULT_TARGETS))


# ----------------------------------------------------------------------------------------------------------------
# The sculpting: a pure function of two deltas
# ----------------------------------------------------------------------------------------------------------------
def sculpt_delta(forget_delta: torch.Tensor, anchor_delta: torch.Tensor, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The forget delta with its entries that conflict with the anchor's and dominate it zeroed, and that mask.

    ``masked = (D_f * D_r < 0) & (|D_f| > k * rho * |D_r|)`` with ``rho = ||D_f|| / (||D_r|| + 1e-12)``: the anchor is
    rescaled to the forget delta's norm, so ``k`` compares the two deltas' *shapes*, not their sizes."""
    f, r = forget_delta.float(), anchor_delta.float()
    rho = torch.linalg.vector_norm(f) / (torch.linalg.vector_norm(r) + NORM_EPSILON)
    masked = (f * r < 0) & (f.abs() > k * rho * r.abs())
    return f.masked_fill(masked, 0.0), masked


class SMFATrainer(UnlearnTrainer):
    """Refusal adapter (MFA) + retaining anchor (RA), sculpted and merged into the base at the end of ``train()``.

    Until ``train()`` the model is the plain starting model; during it, a ``PeftModel`` carrying both adapters (the
    forget adapter active outside the loss, so the probe measures the unsculpted MFA); after it, the plain model with
    the sculpted delta merged. Checkpoints hold both adapters (``<checkpoint>/smfa_forget``, ``/smfa_anchor``).
    """

    config_class = SMFAConfig
    _name = "SMFA"
    _method_tag = "smfa"
    _paper = {
        "title": "Towards Benign Memory Forgetting for Selective Multimodal Large Language Model Unlearning",
        "id": "2511.20196",
        "citation": "@article{zeng2025benign,\n  title={Towards Benign Memory Forgetting for Selective Multimodal Large "
                    "Language Model Unlearning},\n  author={Zeng, Zhen and Gu, Leijiang and Duan, Zhangling and Li, "
                    "Feng and Shi, Zenglin and Snoek, Cees G. M. and Wang, Meng},\n  journal={arXiv preprint "
                    "arXiv:2511.20196},\n  year={2025}\n}",
    }

    def __init__(self, model, args=None, data_collator=None, train_dataset=None, retain_dataset=None, *positional,
                 peft_config=None, **kwargs):
        # Adapters: SMFA's own two, built at train() from peft_config (or default_lora_config())
        if peft_config is not None:
            from peft import LoraConfig

            if not isinstance(peft_config, LoraConfig):
                raise TypeError(f"SMFA's `peft_config` must be a `peft.LoraConfig` (both of its adapters use it), got "
                                f"{type(peft_config).__name__}.")
            if getattr(peft_config, "use_dora", False):
                raise ValueError("SMFA sculpts additive LoRA deltas; a DoRA adapter (use_dora=True) is not one. Use "
                                 "a plain LoraConfig.")
        if is_peft_model(model):
            raise ValueError("SMFA trains two adapters of its own on the starting model and merges the sculpted "
                             "result; the model already has adapters. Merge them first (`model.merge_and_unload()`).")
        if kwargs.get("saliency_mask") is not None:
            raise ValueError("SMFA does not take a saliency_mask: its anchor-guided masking decides what the forget "
                             "adapter changes, and its adapters are not the parameters a mask covers.")
        if retain_dataset is None:
            raise ValueError("SMFA needs `retain_dataset=`: its retaining anchor is trained on the retain answers "
                             "(and the forget adapter keeps them). Pass retain rows.")
        super().__init__(model, args, data_collator, train_dataset, retain_dataset, *positional, **kwargs)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError("SMFA attaches its adapters when train() starts and merges them when it ends; DeepSpeed "
                             "and FSDP shard the model before that. Run SMFA in one process.")
        self.lora_config = peft_config if peft_config is not None else default_lora_config()
        self.masked_fraction: float | None = None  # share of adapted entries the anchor dropped (after train())

    @classmethod
    def from_method_data(cls, model, processing_class, data, args, *, mask=None, ref_model=None, peft_config=None):
        if mask is not None:
            raise ValueError("SMFA does not take a saliency mask (`mask=`): its anchor-guided masking is its own.")
        retain = data.retain if args.retain_loss_type != "none" else None
        return cls(model, args=args, train_dataset=data.forget, retain_dataset=retain,
                   processing_class=processing_class, ref_model=ref_model, holdout_dataset=data.holdout,
                   peft_config=peft_config)

    # ------------------------------------------------------------------------------------------------------------
    # Rows: each forget row carries its refusal (IdkPO's wrappers); the collated refusal batch rides along
    # ------------------------------------------------------------------------------------------------------------
    def wrap_forget_rows(self, dataset, args):
        return RefusalRows(dataset, args.refusal_column, args.refusals, args.seed)

    def wrap_collator(self, collator):
        return RefusalPairCollator(collator)

    @staticmethod
    def model_inputs(batch: dict) -> dict:
        return {k: v for k, v in UnlearnTrainer.model_inputs(batch).items() if k != CHOSEN_BATCH_KEY}

    # ------------------------------------------------------------------------------------------------------------
    # Adapters: attached when train() starts, sculpted into the base when it ends
    # ------------------------------------------------------------------------------------------------------------
    @property
    def adapters_attached(self) -> bool:
        return is_peft_model(self.model)

    def attach_adapters(self) -> None:
        """Wrap the model with both adapters (``train()`` does it first; tests call it to compute a loss)."""
        from peft import get_peft_model

        peft_model = get_peft_model(self.model, self.lora_config, adapter_name=FORGET_ADAPTER)
        peft_model.add_adapter(ANCHOR_ADAPTER, self.lora_config)
        self._adapter_params = [p for n, p in peft_model.named_parameters() if ".lora_" in n]
        dtype = self._adapter_params[0].dtype  # get_peft_model keeps adapters in fp32; add_adapter may not
        for p in self._adapter_params:
            p.data = p.data.to(dtype)
        if self.args.gradient_checkpointing and hasattr(peft_model, "enable_input_require_grads"):
            peft_model.enable_input_require_grads()
        self.model = self.model_wrapped = peft_model
        self._use(FORGET_ADAPTER)

    def _use(self, adapter: str) -> None:
        """Make ``adapter`` the one forwards go through; both stay trainable (one optimizer over both)."""
        self.model.set_adapter(adapter)
        for p in self._adapter_params:
            p.requires_grad_(True)  # set_adapter freezes the inactive one

    @contextmanager
    def _through(self, adapter: str):
        self._use(adapter)
        try:
            yield
        finally:
            self._use(FORGET_ADAPTER)

    @torch.no_grad()
    def sculpt_into_base(self) -> None:
        """Add each adapted weight's sculpted forget delta to it, remove the adapters, keep the plain model."""
        from peft.tuners.lora import LoraLayer

        peft_model, masked, total = self.model, 0, 0
        for module in peft_model.modules():
            if not isinstance(module, LoraLayer) or FORGET_ADAPTER not in module.lora_A:
                continue
            sculpted, mask = sculpt_delta(module.get_delta_weight(FORGET_ADAPTER),
                                          module.get_delta_weight(ANCHOR_ADAPTER), self.args.anchor_k)
            weight = module.get_base_layer().weight
            weight.add_(sculpted.to(weight.device, weight.dtype))
            masked, total = masked + int(mask.sum()), total + mask.numel()
        base = peft_model.unload()  # the LoRA layers replaced by their base layers, nothing merged by PEFT
        if hasattr(base, "peft_config"):  # PEFT leaves its config on the unwrapped model: it has no adapter now
            del base.peft_config
        self.model = self.model_wrapped = base
        self.masked_fraction = masked / total if total else 0.0
        self.record_metric("smfa_masked_fraction", self.masked_fraction)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if not self.adapters_attached:
            self.attach_adapters()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def log(self, logs, start_time=None):
        if "train_runtime" in logs and self.adapters_attached:
            # The end-of-training log: sculpt now, so its before/after probe measures the model SMFA returns.
            self.sculpt_into_base()
            self.unlearning_eval.forget_cached_probe()  # this step's cached probe measured the unsculpted adapter
        super().log(logs, start_time)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self.adapters_attached:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        for adapter in ADAPTERS:
            path = os.path.join(resume_from_checkpoint, adapter, "adapter_model.safetensors")
            if not os.path.isfile(path):
                raise ValueError(f"{resume_from_checkpoint} has no {adapter} adapter ({path}): it is not a checkpoint "
                                 "of an SMFA run. Resume from one of SMFA's checkpoints or start a new run.")
            set_peft_model_state_dict(self.model, load_file(path), adapter_name=adapter)
        self._use(FORGET_ADAPTER)

    # ------------------------------------------------------------------------------------------------------------
    # The objective: refusals through the forget adapter; retain answers through both adapters
    # ------------------------------------------------------------------------------------------------------------
    def forget_loss(self, model, forget):
        if CHOSEN_BATCH_KEY not in forget:
            raise ValueError("SMFA forget batches need their refusal answers; pass the forget set as train_dataset so "
                             "the trainer can attach them (a custom data_collator must collate plain rows).")
        with self._through(FORGET_ADAPTER):
            refusal = model(**forget[CHOSEN_BATCH_KEY]).loss
            with torch.no_grad():  # the forget answers' NLL: what the stop rule and the no-op check read
                forget_nll = model(**self.model_inputs(forget)).loss
        return refusal, {"forget_nll": forget_nll.item(), "refusal_nll": refusal.item()}

    def retain_loss(self, model, retain):
        inputs = self.model_inputs(retain)
        with self._through(FORGET_ADAPTER):
            kept = model(**inputs).loss
        with self._through(ANCHOR_ADAPTER):
            anchor = model(**inputs).loss
        return kept + anchor, {"retain_nll": kept.item(), "anchor_nll": anchor.item()}


register_method(MethodSpec("smfa", SMFATrainer, "SMFA: a refusal LoRA adapter sculpted by a retain-anchor adapter "
                                                "(entries that fight the anchor dropped), merged into the base."))
