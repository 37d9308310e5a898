"""``UnlearnTrainer``: a ``transformers.Trainer`` whose training loss is an unlearning objective.

Swap ``Trainer`` for a subclass (``GATrainer``, ``NPOTrainer``, ``MMUnlearnerTrainer``, ``VKDTrainer``) and pass the
forget set as ``train_dataset`` and, usually, ``retain_dataset=``. Each optimizer step sees a forget batch and a
retain batch paired by ``ForgetRetainDataset``. Evaluation computes the plain LM loss on whatever rows it is given.
A subclass implements ``forget_loss``; the retain term, reference model, masks, logging and stopping live here.
``peft_config=`` wraps the model with a PEFT adapter first, as TRL's trainers do (``trainers/peft_setup.py``,
docs/lora.md).
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import fields

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from .. import losses
from ..config import UnlearnConfig
from ..config_checks import check_training_numbers
from ..data.collators import PairedCollator, UnlearnDataCollator
from ..data.pairing import ForgetRetainDataset, PairingEpochCallback
from ..data.row_index import ROW_INDEX_KEY, IndexedRows, RowIndexCollator
from ..data.rows import rows_with_images, validate_rows
from ..disk import explain_disk_errors
from ..integrations.launchers import unlearning_step
from ..integrations.zero3_kernels import restore_kernelized_layers
from ..masking import TrainingStart, build_masker
from ..models import PROJECTOR, VISION, is_vision_language_model, parameter_groups
from .callbacks import UnlearningEvalCallback
from .checkpointing import SafeCheckpointMixin
from .divergence import DivergenceGuard, UnlearningDivergedError
from .forward_restore import forward_restored
from .model_card import ModelCardMixin
from .peft_setup import apply_peft_config
from .reference import FrozenReference, PrecomputedStore
from .registry import saliency_mask_for
from .step_budget import check_trains_some_steps
from .step_plan import StepPlan


class _MaskRestore:
    """The saliency mask's weight editor: masked entries saved before and put back after every optimizer step whose
    passes were all masked (masking/__init__.py)."""

    def __init__(self, trainer: UnlearnTrainer):
        self.trainer = trainer

    def before_step(self) -> None:
        if self.trainer.step_plan.fully_masked:
            self.trainer.masker.snapshot()

    def after_step(self) -> None:
        if self.trainer.step_plan.fully_masked:
            self.trainer.masker.restore()


class _StepCallback(TrainerCallback):
    """Drives the step: the plan starts at each optimizer step, the masker binds to the launcher when training starts,
    and the weight editors run around every optimizer step in the trainer's written order (``weight_editors``)."""

    def __init__(self, trainer: UnlearnTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.masker is not None:
            trainer.masker.begin_training(TrainingStart(
                optimizer=kwargs.get("optimizer"), resumed=state.global_step > 0, accelerator=trainer.accelerator,
                model=trainer.model_wrapped, fully_masked=lambda: trainer.step_plan.fully_masked))
        for editor in trainer.weight_editors():
            getattr(editor, "begin_training", lambda: None)()

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer.step_plan.start_step()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for editor in self.trainer.weight_editors():
            editor.before_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        for editor in self.trainer.weight_editors():
            editor.after_step()

    def on_train_end(self, args, state, control, **kwargs):
        for editor in self.trainer.weight_editors():
            getattr(editor, "end_training", lambda: None)()


class _StopOnForgetLossCallback(TrainerCallback):
    """Stop once a step's mean forget NLL passes ``args.stop_forget_loss_above`` (GA diverges if left alone)."""

    def __init__(self, trainer: UnlearnTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        value = self.trainer.last_forget_nll
        if value is not None and value > args.stop_forget_loss_above:
            self.trainer.stopped_early_at = (state.global_step, value)
            control.should_training_stop = True
            control.should_save = True
        return control


class UnlearnTrainer(SafeCheckpointMixin, ModelCardMixin, Trainer):
    """Base class of every unlearning trainer. See the module docstring."""

    config_class = UnlearnConfig
    _tag_names = ["hf_unlearn", "unlearning"]
    _name = "Unlearning"
    _method_tag = "unlearning"
    _paper: dict | None = None
    # Subclasses that need pi_ref on forget batches (NPO) set this.
    needs_reference_on_forget = False
    # Methods that train part of the model copy only that part for their reference (the rest is shared, frozen).
    reference_shares_frozen = False
    reference_argument = "ref_model"  # the keyword users pass it as (VKD: teacher_model)
    # SaliencyMaskConfig keyword arguments of the mask ``from_method_data`` computes when none is given (None: none).
    default_mask: dict | None = None

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        args: TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        retain_dataset=None,
        eval_dataset=None,
        processing_class=None,
        ref_model: PreTrainedModel | str | None = None,
        saliency_mask=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        holdout_dataset=None,
        peft_config=None,
        **kwargs,
    ):
        # Args (checked again here: TrainingArguments can be changed after __post_init__ validated them)
        args = self._coerce_args(args, model)
        check_training_numbers(args)

        # PEFT: wrapped first, as TRL's trainers do; the reference is then the base with adapters off
        model = apply_peft_config(model, peft_config, args)
        if args.retain_loss_type is None:
            args.retain_loss_type = "nll" if retain_dataset is not None else "none"

        # Data: the forget set is the training set; retain rows are paired with it
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError(
                "The forget set (`train_dataset`) is empty: there is nothing to unlearn. Pass the rows to forget."
            )
        if self.uses_retain(args) and retain_dataset is None:
            raise ValueError(
                f"{type(self).__name__} with retain_loss_type={args.retain_loss_type!r} needs `retain_dataset=`; "
                "pass one, or set retain_loss_type='none'."
            )
        if retain_dataset is not None and len(retain_dataset) == 0:
            raise ValueError("`retain_dataset` is empty; pass retain rows or `retain_dataset=None`.")
        if retain_dataset is not None and not self.uses_retain(args):
            warnings.warn(f"`retain_dataset` is given but {type(self).__name__} has retain_loss_type='none': the "
                          "retain rows are not used. Drop `retain_dataset`, or set retain_loss_type='nll' or 'kl'.",
                          stacklevel=2)
        if holdout_dataset is not None and len(holdout_dataset) == 0:
            raise ValueError("`holdout_dataset` is empty; pass rows the model never saw or `holdout_dataset=None`.")
        if data_collator is None:
            if processing_class is None:
                raise ValueError("Pass `processing_class` (tokenizer or processor) or a `data_collator`.")
            data_collator = UnlearnDataCollator(
                processing_class, answer_only=args.answer_only_loss, max_length=args.max_length
            )
        # Rows are checked before batching, whatever the collator: a user's collator would train `answer=None` as
        # " None". Datasets in a format of their own (no answer/completion/messages column) are left to it.
        ours = isinstance(data_collator, UnlearnDataCollator)
        validate_rows(train_dataset, "forget set", require_known_format=ours)
        validate_rows(retain_dataset if self.uses_retain(args) else None, "retain set", require_known_format=ours)
        validate_rows(holdout_dataset, "holdout set", require_known_format=ours)
        # Every row carries its index through the batch (values stored per row are looked up with it); the method's
        # own row and collator wrappers go in first, before the Trainer sees either.
        forget_rows = train_dataset
        train_dataset = IndexedRows(self.wrap_forget_rows(train_dataset, args))
        retain_dataset = IndexedRows(retain_dataset) if retain_dataset is not None else None
        self.row_collator = RowIndexCollator(self.wrap_collator(data_collator))
        self.forget_dataset, self.retain_dataset = train_dataset, retain_dataset
        self.holdout_dataset = holdout_dataset  # never trained on: the probe's target (trainers/callbacks.py)
        self.pairing = ForgetRetainDataset(
            train_dataset, retain_dataset if self.uses_retain(args) else None, anchor=args.pairing_anchor,
            seed=args.seed,
        )
        check_trains_some_steps(args, len(self.pairing), anchor=args.pairing_anchor)  # zero steps: an error, not a copy

        # Reference model (frozen starting point) for KL retain terms and NPO. Under ZeRO-3, models built after an
        # earlier zero.Init may miss kernels' attention wrappers (transformers >= 5.25): put them back first.
        zero3 = is_deepspeed_zero3_enabled()
        if zero3:
            restore_kernelized_layers(model, ref_model if isinstance(ref_model, nn.Module) else None)
        self.given_reference = ref_model  # None: the starting model is the reference
        self.reference = FrozenReference()
        if self.needs_reference(args):
            self.reference = FrozenReference.build(
                model, ref_model, share_frozen=self.reference_shares_frozen and not args.deepspeed, zero3=zero3,
                what=self.reference_argument)
            if zero3:
                restore_kernelized_layers(self.reference.model)
        self.precomputed = PrecomputedStore()  # values computed once from the starting model, kept in checkpoints

        # Saliency mask: checked against the model now; its masker is built once the launcher is known (below)
        self.saliency_mask = saliency_mask
        masks = self._resolve_mask(model, saliency_mask) if saliency_mask is not None else None
        self.masker = None
        self.step_plan = StepPlan()

        callbacks = list(callbacks or []) + [PairingEpochCallback(self.pairing), _StepCallback(self)]
        self.divergence_guard = DivergenceGuard(self) if args.divergence_guard else None
        self.method_weight_editors: list = []  # a method's own edits after each step (MMUnlearner's retain guard)
        if args.stop_forget_loss_above is not None:
            callbacks.append(_StopOnForgetLossCallback(self))
        # One probe for metrics logging, the holdout stop rule, the no-op warning and the before/after log.
        self.unlearning_eval = next((c for c in callbacks if isinstance(c, UnlearningEvalCallback)), None)
        if self.unlearning_eval is None:
            self.unlearning_eval = UnlearningEvalCallback()
            callbacks.append(self.unlearning_eval)
        self.unlearning_eval.bind(self, args)
        self.unlearning_report: dict | None = None  # filled at the end of train(); shown in the model card

        super().__init__(
            model=model, args=args, data_collator=PairedCollator(self.row_collator), train_dataset=self.pairing,
            eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
            optimizers=optimizers, **kwargs,
        )

        # The masker of this launcher: gradient hooks before DeepSpeed or FSDP2 wrap the model at train(), and the
        # parameters the mask does not cover frozen before the optimizer exists
        if masks is not None:
            launcher = "deepspeed" if self.is_deepspeed_enabled else "fsdp" if self.is_fsdp_enabled else "local"
            self.masker = build_masker(model, masks, launcher, freeze_uncovered=args.freeze_unmasked_parameters)
        self._check_forget_rows_reach_trainable(model, forget_rows, masks)

        # Prepare the reference model for inference the way the policy is distributed
        if self.ref_model is not None:
            self.ref_model = self._prepare_for_inference(self.ref_model)
        if self.is_fsdp_enabled:  # FSDP2: reduce-scatter alignment, once the policy is sharded
            from ..integrations.fsdp import FSDPTrainingCallback

            self.add_callback(FSDPTrainingCallback(self))
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names + [self._method_tag])

        self._metrics: dict[str, list[float]] = defaultdict(list)
        self.last_forget_nll: float | None = None
        self.stopped_early_at: tuple[int, float] | None = None

    # ------------------------------------------------------------------------------------------------------------
    # Configuration helpers
    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def _coerce_args(cls, args: TrainingArguments | None, model) -> UnlearnConfig:
        """Accept the user's existing ``TrainingArguments`` (drop-in swap) and lift them to our config class."""
        if args is None:
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or "model"
            return cls.config_class(output_dir=f"{os.path.basename(name) or 'model'}-{cls._method_tag}")
        if isinstance(args, cls.config_class):
            return args
        values = {f.name: getattr(args, f.name) for f in fields(TrainingArguments) if f.init and hasattr(args, f.name)}
        # Raw VLM rows need their columns; a user's Trainer script that kept the default would break here.
        if not isinstance(args, UnlearnConfig):
            values["remove_unused_columns"] = False
        else:
            values.update({f.name: getattr(args, f.name) for f in fields(UnlearnConfig) if f.init})
        return cls.config_class(**values)

    def _check_forget_rows_reach_trainable(self, model, forget_rows, masks) -> None:
        """Refuse a run whose forget rows cannot move anything: every parameter that may move is on the vision side
        (VKD's frozen LLM, a vision-only mask, adapters on the vision tower only) and no forget row has an image, so
        the forget loss would have a zero gradient and the run would save the starting model as the unlearned one."""
        movable = [n for n, p in model.named_parameters()
                   if p.requires_grad and (masks is None or n not in masks or bool(masks[n].any()))]
        if not movable or not is_vision_language_model(model):
            return
        groups = parameter_groups(model)
        if any(groups.get(n) not in (VISION, PROJECTOR) for n in movable):
            return
        if not isinstance(forget_rows, (list, tuple)) and not hasattr(forget_rows, "column_names"):
            return  # rows of another kind of dataset: not read here
        if rows_with_images(forget_rows):
            return
        raise ValueError(
            f"{type(self).__name__} can only move vision-side parameters here (vision tower / projector: "
            f"{len(movable)} trainable after freezing and masking), but no forget row has an image: text rows never "
            "pass through the vision tower, so the forget loss would have no gradient and nothing would be "
            "unlearned. Give the forget rows their images (`image` / `images` columns, docs/data_formats.md), or "
            "train language-side parameters (a mask with target_modules='language' or 'all', adapters on the "
            "language model, or a method that trains the LLM)."
        )

    def uses_retain(self, args: UnlearnConfig | None = None) -> bool:
        args = args or self.args
        return args.retain_loss_type != "none"

    def needs_reference(self, args: UnlearnConfig) -> bool:
        return args.retain_loss_type == "kl" or self.needs_reference_on_forget

    @property
    def ref_model(self) -> nn.Module | None:
        """The frozen reference / teacher model (``None``: the PEFT base serves, or it was dropped)."""
        return self.reference.model

    @ref_model.setter
    def ref_model(self, value: nn.Module | None) -> None:
        self.reference.model = value

    def wrap_forget_rows(self, dataset, args: UnlearnConfig):
        """The forget rows as the method trains on them (IdkPO adds each row's refusal). Called before the Trainer
        exists."""
        return dataset

    def wrap_collator(self, collator):
        """The row collator as the method needs it (IdkPO collates refusals too). Called before the Trainer exists."""
        return collator

    def _prepare_for_inference(self, model: nn.Module) -> nn.Module:
        if self.is_deepspeed_enabled:
            from ..integrations.deepspeed import prepare_for_inference

            return prepare_for_inference(model, self.accelerator)
        if self.is_fsdp_enabled:
            from ..integrations.fsdp import prepare_for_inference

            return prepare_for_inference(model, self.accelerator)
        return self.accelerator.prepare_model(model, evaluation_mode=True)

    @classmethod
    def from_method_data(cls, model, processing_class, data, args: UnlearnConfig, *, mask=None, ref_model=None,
                         peft_config=None):
        """A trainer on a registry ``MethodData`` (``MethodSpec.build_trainer``): forget and holdout rows as given,
        the retain rows unless ``retain_loss_type="none"``, a saliency mask from ``mask`` (a ``SaliencyMask``, or
        ``SaliencyMaskConfig`` keyword arguments over ``cls.default_mask``) computed on the data's preserve sets
        (after ``peft_config`` wrapped the model: a mask then covers the adapter factors).
        Subclasses that take other rows (VKD: retain rows with images) override it."""
        model = apply_peft_config(model, peft_config, args)
        retain = data.retain if args.retain_loss_type != "none" else None
        return cls(model, args=args, train_dataset=data.forget, retain_dataset=retain,
                   processing_class=processing_class, ref_model=ref_model, holdout_dataset=data.holdout,
                   saliency_mask=saliency_mask_for(model, processing_class, data, mask, cls.default_mask))

    @staticmethod
    def _resolve_mask(model, saliency_mask) -> dict[str, torch.Tensor]:
        if hasattr(saliency_mask, "masks_for"):  # a SaliencyMask: validated, keyed by this model's own names
            return saliency_mask.masks_for(model)
        if not isinstance(saliency_mask, dict):
            raise TypeError("`saliency_mask` must be a SaliencyMask or a dict {parameter name: bool tensor}.")
        not_bool = [f"{n}: {m.dtype if torch.is_tensor(m) else type(m).__name__}" for n, m in saliency_mask.items()
                    if not (torch.is_tensor(m) and m.dtype == torch.bool)]
        if not_bool:  # a float mask would be cast to bool: every non-zero score would count as selected
            raise TypeError(f"`saliency_mask` values must be bool tensors (True: the entry may move); got "
                            f"{', '.join(not_bool[:3])}{' ...' if len(not_bool) > 3 else ''}. Threshold scores first "
                            "(`scores > t`) or pass a SaliencyMask (compute_saliency_mask).")
        from ..integrations.deepspeed import param_shape  # ZeRO-3 partitioned parameters have shape [0]

        shapes = {n: param_shape(p) for n, p in model.named_parameters()}
        problems = [f"{n}: not a parameter of the model" for n in saliency_mask if n not in shapes]
        problems += [f"{n}: mask {tuple(m.shape)} vs parameter {tuple(shapes[n])}"
                     for n, m in saliency_mask.items() if n in shapes and m.shape != shapes[n]]
        if problems:
            raise ValueError("The saliency mask does not match the model:\n  " + "\n  ".join(problems))
        return saliency_mask

    def weight_editors(self) -> list:
        """What edits the weights around each optimizer step, in this order after the step: the mask restore (masked
        entries back: the step as the mask defines it), the method's own (MMUnlearner's retain-loss guard may shrink
        or undo that update), then the divergence guard (checks the weights that stay, and puts the whole step back
        if they are broken). Each has ``before_step()`` / ``after_step()`` (and optionally ``begin_training()`` /
        ``end_training()``)."""
        editors = [_MaskRestore(self)] if self.masker is not None else []
        editors += self.method_weight_editors
        return editors + ([self.divergence_guard] if self.divergence_guard is not None else [])

    # ------------------------------------------------------------------------------------------------------------
    # Reference forward passes
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_logits(self, model, inputs: dict) -> torch.Tensor:
        """Logits of the frozen reference (a separate model, or the PEFT base with adapters disabled)."""
        with self.reference.active(model, self.accelerator.unwrap_model) as ref:
            return ref(**inputs).logits

    @contextmanager
    def starting_model(self, model):
        """The model whose values count as "the starting model's" (precomputed before the first step): the frozen
        reference when one is held, else ``model`` itself (not moved yet)."""
        if self.reference.available:
            with self.reference.active(model, self.accelerator.unwrap_model) as ref:
                yield ref
        else:
            yield model

    def check_starting_model(self, resumed: bool, what: str, option: str) -> None:
        """Before precomputing ``what`` at train begin: a resumed run without them stored has no starting model."""
        if resumed and not self.reference.available:
            raise ValueError(
                f"Resuming with {option}, but the checkpoint holds no {what} and no {self.reference_argument} was "
                "given: the starting model is gone and the checkpoint's weights are not it. Pass "
                f"{self.reference_argument}=<the original model path> (used once, then dropped)."
            )

    def eval_batches(self, rows, desc: str | None = None):
        """``rows`` (a dataset or list of rows) in evaluation batches, collated and on the device. ``desc`` shows a
        bar: passes before step 0 take minutes on a 7B model and would look like a hang."""
        bs = self.args.per_device_eval_batch_size
        starts = range(0, len(rows), bs)
        if desc is not None:
            starts = tqdm(starts, desc=desc, unit="batch",
                          disable=self.args.disable_tqdm or not self.is_world_process_zero())
        for start in starts:
            yield self._prepare_inputs(self.row_collator([rows[i] for i in range(start, min(start + bs, len(rows)))]))

    # ------------------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def model_inputs(batch: dict) -> dict:
        """The batch without the per-row values our trainers attach (they are not model arguments)."""
        return {k: v for k, v in batch.items() if k != ROW_INDEX_KEY}

    def forget_loss(self, model, forget: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The forget objective for one batch (before ``forget_weight``) and values to log. Subclasses implement."""
        raise NotImplementedError

    def retain_loss(self, model, retain: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The retain objective: NLL on retain answers, or KL to the reference model."""
        inputs = self.model_inputs(retain)
        outputs = model(**inputs)
        if self.args.retain_loss_type == "kl":
            kl = losses.kl_to_reference(outputs.logits, self.reference_logits(model, inputs), inputs["labels"])
            return kl, {"retain_kl": kl.item(), "retain_nll": outputs.loss.item()}
        return outputs.loss, {"retain_nll": outputs.loss.item()}

    def retain_weight(self) -> float:
        """The retain term's weight at this step (``args.retain_weight``; PDU adapts it as a dual variable)."""
        return self.args.retain_weight

    def loss_parts(self) -> tuple[str, ...]:
        """Which terms this optimizer step uses (MMUnlearner alternates forget and retain steps)."""
        parts = ("forget",) if self.args.forget_weight > 0 else ()
        return parts + (("retain",) if self.uses_retain() and self.args.retain_weight > 0 else ())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "forget" not in inputs:  # evaluation (or plain rows): the ordinary LM loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        parts = self.step_plan.computed_parts or self.loss_parts()  # direct calls (tests) have no plan
        total = 0.0
        logs: dict[str, float] = {}
        if "forget" in parts:
            forget, forget_logs = self.forget_loss(model, inputs["forget"])
            total = total + self.args.forget_weight * forget
            logs.update(forget_logs, forget_loss=forget.item())
            self.last_forget_nll = forget_logs.get("forget_nll", self.last_forget_nll)
        if "retain" in parts and "retain" in inputs:
            retain, retain_logs = self.retain_loss(model, inputs["retain"])
            total = total + self.retain_weight() * retain
            logs.update(retain_logs, retain_loss=retain.item())
        if not torch.is_tensor(total):
            raise ValueError("This step has no loss term: both forget_weight and retain_weight are 0.")
        if not torch.isfinite(total):
            what = f"the loss became {total.item()} at step {self.state.global_step + 1} with terms {logs}"
            if self.divergence_guard is not None:
                self.divergence_guard.on_nonfinite_loss(what)  # puts back the last good weights and raises
            raise UnlearningDivergedError(
                f"Unlearning diverged: {what}. Training stopped before this step touched the weights (the weights "
                "themselves may be broken: divergence_guard=False). Lower `learning_rate`, set "
                "`stop_forget_loss_above`, use a bounded forget loss (NPOTrainer), or add a retain term."
            )
        if self.is_fsdp_enabled and model.training:  # FSDP2: the ranks' backward passes must visit the same units
            from ..integrations.fsdp import check_gradient_agreement

            check_gradient_agreement(total.requires_grad, self.args.device)
        if model.training and not total.requires_grad:
            # E.g. a text-only retain batch while only the vision tower trains: nothing to learn from it, but the
            # Trainer (and DeepSpeed's step accounting) still needs a backward pass.
            anchor = next(p for p in model.parameters() if p.requires_grad)
            total = total + 0.0 * anchor.sum()
        for key, value in logs.items():
            self._metrics[key].append(value)
        return (total, None) if return_outputs else total

    # ------------------------------------------------------------------------------------------------------------
    # Training step: masks
    # ------------------------------------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        if "forget" not in inputs:
            return super().training_step(model, inputs, num_items_in_batch)
        # The step's passes touch different parameters on different ranks (a text-only retain row skips the vision
        # tower): each launcher's fix (DDP, ZeRO, FSDP2) lives in integrations/launchers.py. One process: a no-op.
        with unlearning_step(self, model, inputs):
            return self._unlearning_step(model, inputs, num_items_in_batch)

    def _unlearning_step(self, model, inputs, num_items_in_batch=None):
        plan = self.step_plan
        plan.parts = self.loss_parts()
        if self.masker is None or self.args.mask_scope == "all" or plan.parts == ("forget",) or "retain" not in inputs:
            # One backward pass: with a mask, its whole gradient is masked (masked entries restored after the step).
            return self._backward_pass(model, inputs, num_items_in_batch, part=None, masked=True, last=True)
        # The mask restricts the forget gradient only: two backward passes, masked then unmasked.
        loss = 0.0
        for i, part in enumerate(plan.parts):
            loss = loss + self._backward_pass(model, inputs, num_items_in_batch, part, masked=part == "forget",
                                              last=i == len(plan.parts) - 1)
        return loss

    def _backward_pass(self, model, inputs, num_items_in_batch, part: str | None, masked: bool, last: bool):
        with self.step_plan.run_pass(part, masked):
            if self.masker is None:
                return super().training_step(model, inputs, num_items_in_batch)
            if not masked:
                self.masker.unmasked_step()  # masked entries move on this step: saved values go stale
            self.masker.active = masked
            try:
                with self.masker.pass_context():
                    if self.is_deepspeed_enabled:  # a non-last pass accumulates: the engine steps after the last
                        from ..integrations.deepspeed import defer_step_unless

                        with defer_step_unless(self.accelerator, last):
                            return super().training_step(model, inputs, num_items_in_batch)
                    return super().training_step(model, inputs, num_items_in_batch)
            finally:
                self.masker.active = True

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints: the precomputed values travel with each checkpoint (written atomically: SafeCheckpointMixin);
    # weights reloaded with key conversion
    # ------------------------------------------------------------------------------------------------------------
    def _save_checkpoint_extras(self, folder: str) -> None:
        super()._save_checkpoint_extras(folder)
        self.precomputed.save(folder)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        resume_from_checkpoint = self.resolve_resume_checkpoint(resume_from_checkpoint)  # a complete one, or None
        if resume_from_checkpoint:  # e.g. NPO's reference log-probs of the *starting* model: not recomputable now
            self.precomputed.load(resume_from_checkpoint)
        # A full or read-only disk is named as such, with the folder (torch.save's own error names neither).
        with forward_restored(self.model), explain_disk_errors(self.args.output_dir):
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        with explain_disk_errors(output_dir or self.args.output_dir):
            return super().save_model(output_dir, _internal_call)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # transformers 5.23 saves some architectures (LLaVA) under legacy key names and Trainer's resume loads them
        # raw: nothing matches and training silently restarts from the starting weights. from_pretrained converts.
        model = model if model is not None else self.model
        has_weights = any(os.path.isfile(os.path.join(resume_from_checkpoint, name))
                          for name in ("model.safetensors", "model.safetensors.index.json"))
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled  # their own checkpoint formats
        if not sharded and isinstance(model, PreTrainedModel) and has_weights:
            dtype = next(model.parameters()).dtype
            loaded = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype)
            model.load_state_dict(loaded.state_dict())
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    # ------------------------------------------------------------------------------------------------------------
    # Logging
    # ------------------------------------------------------------------------------------------------------------
    def record_metric(self, key: str, value: float) -> None:
        """Log ``value`` under ``key`` with the next training log (averaged with the other values since the last)."""
        self._metrics[key].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self._metrics:  # training logs: add each loss term under its own name
            logs = {**logs, **{k: sum(v) / len(v) for k, v in self._metrics.items() if v}}
            self._metrics.clear()
        if "train_runtime" in logs:  # the end-of-training log also says what moved (<set>_nll_before/_after)
            logs.update(self.unlearning_eval.final_logs())
        super().log(logs, start_time)
