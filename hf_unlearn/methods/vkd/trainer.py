"""VKD: unlearning visual knowledge by distilling intermediate features into the vision side, LLM frozen.

hf_unlearn's reading of "MLLM Machine Unlearning via Visual Knowledge Distillation" (Wang et al., arXiv 2512.11325;
no public code). Only the vision tower and projector train; the language model and ``lm_head`` are frozen before the
optimizer exists and stay bit-identical. A frozen teacher (a copy of the starting model by default, sharing the
frozen language-model weights instead of copying them) gives features at a feature site (``hf_unlearn.features``).

Loss per step:
    forget_weight * (forget_output + push_away_weight * forget_feature)                         on forget batches
  + retain_weight * (feature_match_weight * mean d(f_s, f_t) + retain_nll_weight * NLL)        on retain batches
where forget_output is NPO or GA on the forget answers (or nothing), d is a per-token distance divided by the
teacher's feature scale (``normalize_distance``), and forget_feature is (``forget_feature_loss``)

* ``"stranger"`` (the default with ``holdout_dataset=``): mean d(f_s(x_f), f_t(x_h)), each forget image's features
  pulled onto the teacher's features of a never-seen image x_h of the holdout set. A model that never learnt the
  forget people sees strangers in their images; this teaches exactly that, and the target is a feature the frozen
  language model already reads as "unknown person" (measured on the benchmark: docs/methods/vkd.md);
* ``"random_target"`` (the default without a holdout set): mean d(f_s, c * u), the forget features pulled towards a
  fixed random direction u whose norm is ``target_scale`` times the teacher features' RMS norm (RMU's
  representation misdirection, Li et al. 2024). Its gradient is large from the first step, where the student still
  equals its teacher;
* ``"hinge"``: mean max(0, margin - d(f_s, f_t)), the forget features pushed ``margin`` away from the teacher's.
  d = 0 is its stationary point, so it only acts once the output term has moved the features.

Unless an output term needs it, the language model does not run: the vision sites need only the vision tower and
projector. The vision side trains at ``learning_rate * vision_lr_scale`` (``lr_scale.py`` says why).

The stranger targets are the teacher's features of the holdout images, computed once at the start of training from
the starting model. Precomputing (``precompute_teacher_features=True``) stores the teacher's features of every forget
and retain row at the start of training and holds no teacher afterwards. Both are per-row values of the trainer's
``PrecomputedStore`` (``trainers/reference.py``), looked up with each batch's row index and kept in every checkpoint,
so resuming needs no teacher. They are derived from forget images: keep checkpoints private (the Hub push allowlist
never includes them).
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import nn
from transformers import TrainerCallback

from ... import losses
from ...data.row_index import ROW_INDEX_KEY
from ...data.rows import rows_with_images
from ...features import extract_features, feature_module, features_per_row, vision_blocks
from ...integrations.fsdp import is_fsdp2_module
from ...models import get_projector, get_vision_tower, parameter_group, unwrap_model, vision_parameter_names
from ...trainers.base import UnlearnTrainer
from ...trainers.lr_scale import ScaledLearningRateMixin
from ...trainers.peft_setup import apply_peft_config
from ...trainers.reference import REFERENCE_LOG_PROBS
from ...trainers.registry import MethodSpec, register_method, saliency_mask_for
from .config import VKDConfig

logger = logging.getLogger(__name__)

# Wrappers that must see every forward: they gather weights in it (ZeRO-3, FSDP) or reduce gradients through its
# hooks. DDP is not one: hf_unlearn averages DDP gradients itself (integrations/ddp.py).
_DISTRIBUTED_WRAPPERS = frozenset({"DeepSpeedEngine", "FullyShardedDataParallel"})


# ----------------------------------------------------------------------------------------------------------------
# Trainable set
# ----------------------------------------------------------------------------------------------------------------
def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def vkd_trainable_parameter_names(model: nn.Module, trainable_vision_blocks: int | None = None) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the parameters VKD trains.

    The vision tower and projector; with ``trainable_vision_blocks=N`` only the last N vision blocks, the modules
    after them (e.g. CLIP ``post_layernorm``) and the projector. On a PEFT model only parameters that already
    require grad (the adapters) count.
    """
    names = vision_parameter_names(model, include_projector=True)
    if trainable_vision_blocks is not None:
        blocks = vision_blocks(model)
        n, k = len(blocks), trainable_vision_blocks
        if not 0 <= k <= n:
            raise ValueError(f"trainable_vision_blocks={k}, but the vision tower has {n} blocks; use 0..{n} or None.")
        keep = {id(p) for block in list(blocks)[n - k:] for p in block.parameters()}
        projector = get_projector(model)
        if projector is not None:
            keep |= {id(p) for p in projector.parameters()}
        # Top-level children of the vision tower registered after the one holding the blocks run after them.
        tower = get_vision_tower(model)
        block_ids = {id(p) for p in blocks.parameters()}
        after = False
        for child in tower.children():
            child_ids = {id(p) for p in child.parameters()}
            if after:
                keep |= child_ids
            if child_ids & block_ids:
                after = True
        params = dict(model.named_parameters())
        names = [name for name in names if id(params[name]) in keep]
    if _is_peft(model):
        params = dict(model.named_parameters())
        names = [name for name in names if params[name].requires_grad]
    return names


def freeze_for_vkd(model: nn.Module, trainable_vision_blocks: int | None = None) -> list[str]:
    """Freeze everything VKD does not train (language model, ``lm_head``, excluded vision blocks) in place.

    Returns the trainable names. Call it before ``compute_saliency_mask`` so a mask covers only trainable
    parameters; ``VKDTrainer`` calls it itself.
    """
    trainable = set(vkd_trainable_parameter_names(model, trainable_vision_blocks))
    if not trainable:
        raise ValueError(
            "VKD has no parameter to train: no vision-tower or projector parameter "
            + ("requires grad on this PEFT model; target vision modules with the adapter (e.g. "
               "target_modules=r'.*vision_tower.*\\.(q_proj|v_proj)')." if _is_peft(model) else "was found.")
        )
    peft = _is_peft(model)
    for name, p in model.named_parameters():
        if name in trainable:
            if not peft:
                p.requires_grad_(True)
        else:
            p.requires_grad_(False)
    return [name for name, _ in model.named_parameters() if name in trainable]


class _TeacherSetupCallback(TrainerCallback):
    """Measure the feature scale and (optionally) precompute teacher features once the model is prepared."""

    def __init__(self, trainer: VKDTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.prepare_teacher(resumed=state.global_step > 0)


# Names of the values VKD stores once from the starting teacher (PrecomputedStore; kept in every checkpoint).
FORGET_TEACHER, STRANGER = "forget.teacher", "holdout.teacher"


def _rms(features: torch.Tensor | None) -> float:
    """Root-mean-square entry of a feature tensor (1.0 when there are no features)."""
    return features.float().pow(2).mean().sqrt().item() if features is not None and features.numel() else 1.0


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------
class VKDTrainer(ScaledLearningRateMixin, UnlearnTrainer):
    """Visual knowledge distillation with a frozen LLM. See the module docstring and ``VKDConfig``.

    Args (beyond ``UnlearnTrainer``'s):
        teacher_model: the frozen teacher, a model or a path (``from_pretrained``). Default: a frozen copy of the
            starting model (PEFT: the base with adapters off). It also serves as the NPO reference.
        ref_model: an alias of ``teacher_model`` (the base class's name); pass one or the other.
        saliency_mask: a mask over trainable visual parameters only (see ``freeze_for_vkd``).
    """

    config_class = VKDConfig
    reference_shares_frozen = True  # the frozen language model is identical in student and teacher: shared
    reference_argument = "teacher_model"
    _name = "VKD"
    _method_tag = "vkd"
    _paper = {
        "title": "MLLM Machine Unlearning via Visual Knowledge Distillation",
        "id": "2512.11325",
        "citation": "@article{wang2025vkd,\n  title={MLLM Machine Unlearning via Visual Knowledge Distillation},\n  "
                    "author={Wang, Yuhang and Niu, Zhenxing and Ji, Haoxuan and He, Guangyu and Gao, Haichang and "
                    "Hua, Gang},\n  journal={arXiv preprint arXiv:2512.11325},\n  year={2025}\n}",
    }

    def __init__(self, model, args=None, data_collator=None, train_dataset=None, retain_dataset=None,
                 eval_dataset=None, processing_class=None, teacher_model=None, ref_model=None, saliency_mask=None,
                 **kwargs):
        if teacher_model is not None and ref_model is not None:
            raise ValueError("Pass the teacher as `teacher_model=` or `ref_model=`, not both.")
        teacher_model = teacher_model if teacher_model is not None else ref_model
        args = self._coerce_args(args, model)
        model = apply_peft_config(model, kwargs.pop("peft_config", None), args)  # first, as TRL: freezing reads it
        holdout = kwargs.get("holdout_dataset")
        if args.forget_feature_loss is None:
            args.forget_feature_loss = "stranger" if holdout is not None else "random_target"
        if args.forget_feature_loss == "stranger" and args.push_away_weight > 0 and (
                holdout is None or not rows_with_images(holdout)):
            raise ValueError(
                "forget_feature_loss='stranger' pulls forget-image features onto the teacher's features of never-seen "
                "images, taken from `holdout_dataset=`, but " + ("no holdout set was given" if holdout is None else
                                                                 "the holdout set has no row with an image")
                + ". Pass holdout rows with images of people (or objects) the model never saw, or use "
                "forget_feature_loss='random_target'."
            )
        if (args.forget_weight > 0 and args.forget_loss_type == "none" and args.forget_feature_loss == "hinge"
                and teacher_model is None):
            raise ValueError(
                "forget_loss_type='none' with the starting model as teacher cannot unlearn: the student starts equal "
                "to the teacher, where the push-away hinge max(0, margin - d) has zero gradient (d = 0 is its "
                "stationary point for mse, cosine and smooth_l1). Use forget_feature_loss='random_target' (acts from "
                "the first step), forget_loss_type='npo' or 'ga' (the output term moves the features, the hinge then "
                "pushes them past the margin), or pass a different teacher_model."
            )

        # Check everything first, then freeze before the optimizer exists: the LLM never enters it, so it stays
        # bit-identical.
        self.trainable_names = vkd_trainable_parameter_names(model, args.trainable_vision_blocks)
        self._check_feature_site(model, args)
        if saliency_mask is not None:
            self._check_mask(model, saliency_mask, args)
        self.trainable_names = freeze_for_vkd(model, args.trainable_vision_blocks)

        self.feature_scale: float | None = 1.0 if (args.distance == "cosine" or not args.normalize_distance) else None
        self.feature_rms: float | None = None  # RMS entry of the teacher's forget features: the random target's norm
        self._forget_target: torch.Tensor | None = None
        self._modules: dict[int, nn.Module] = {}
        super().__init__(
            model, args, data_collator=data_collator,
            train_dataset=train_dataset, retain_dataset=retain_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, ref_model=teacher_model,
            saliency_mask=saliency_mask, **kwargs,
        )
        if self.uses_retain() and self.args.feature_match_weight == 0 and self.args.retain_nll_weight == 0:
            raise ValueError("The retain term is empty: feature_match_weight=0 and retain_nll_weight=0. Set one, or "
                             "retain_loss_type='none'.")
        self.add_callback(_TeacherSetupCallback(self))
        self.check_lr_scale_supported()

    @classmethod
    def from_method_data(cls, model, processing_class, data, args, *, mask=None, ref_model=None, peft_config=None):
        # VKD trains the vision side only; text-only retain rows never reach it, so it gets the image rows.
        model = apply_peft_config(model, peft_config, args)
        return cls(model, args=args, train_dataset=data.forget, retain_dataset=data.retain_images,
                   processing_class=processing_class, teacher_model=ref_model, holdout_dataset=data.holdout,
                   saliency_mask=saliency_mask_for(model, processing_class, data, mask))

    # The vision side is all VKD trains: it moves at learning_rate * vision_lr_scale (lr_scale.py).
    def lr_scale(self) -> float:
        return self.args.vision_lr_scale

    def lr_scaled_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------------------------------------
    # Set-up checks
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_feature_site(model, args: VKDConfig) -> None:
        feature_module(model, args.feature_site, args.feature_layer)  # raises on a bad site or layer
        if args.feature_site != "vision_layer":
            return
        blocks = vision_blocks(model)
        n, k = len(blocks), args.feature_layer % len(blocks)
        if args.trainable_vision_blocks is not None and k < n - args.trainable_vision_blocks:
            raise ValueError(
                f"feature_site='vision_layer' at block {k} lies before the trainable blocks (the last "
                f"{args.trainable_vision_blocks} of {n}): its features cannot move. Pick feature_layer >= "
                f"{n - args.trainable_vision_blocks}, more trainable_vision_blocks, or feature_site='projector'."
            )
        vfl = getattr(unwrap_model(model).config, "vision_feature_layer", None)
        if isinstance(vfl, int) and k > (vfl % (n + 1)) - 1:
            logger.warning("VKD feature block %d runs after the layer the language model reads "
                           "(vision_feature_layer=%d): its features do not reach the LLM. Use feature_layer=%d.",
                           k, vfl, (vfl % (n + 1)) - 1)

    def _check_mask(self, model, saliency_mask, args: VKDConfig) -> None:
        masks = self._resolve_mask(model, saliency_mask)
        trainable = set(self.trainable_names)
        outside = [name for name in masks if name not in trainable]
        if outside:
            groups = dict(Counter(parameter_group(name) or "other" for name in outside))
            raise ValueError(
                f"The saliency mask covers {len(outside)} parameters that VKD keeps frozen (by group: {groups}; e.g. "
                f"{outside[:3]}). VKD trains only the vision tower and projector"
                + (f" (last {args.trainable_vision_blocks} blocks)" if args.trainable_vision_blocks is not None
                   else "")
                + ". Compute the mask on the trainable visual parameters: call "
                "hf_unlearn.freeze_for_vkd(model, trainable_vision_blocks) before compute_saliency_mask "
                "(with target_modules='vision'), or drop those entries."
            )

    def _prepare_for_inference(self, model):
        # The teacher runs only on batches with images; sharded by FSDP2, the ranks would call its all-gathers
        # unequally (a text-only batch on one rank). A replica per rank, or precompute_teacher_features=True.
        if self.is_fsdp_enabled:
            return self.accelerator.prepare_model(model, evaluation_mode=True)
        return super()._prepare_for_inference(model)

    def needs_reference(self, args) -> bool:
        # Precomputing from the starting model needs no second model; a given teacher is used once, then dropped.
        if args.precompute_teacher_features:
            return self.given_reference is not None
        return True

    # ------------------------------------------------------------------------------------------------------------
    # Teacher
    # ------------------------------------------------------------------------------------------------------------
    def _feature_module(self, model) -> nn.Module:
        key = id(unwrap_model(model))
        if key not in self._modules:
            self._modules[key] = feature_module(model, self.args.feature_site, self.args.feature_layer)
        return self._modules[key]

    def _features(self, model, inputs: dict, need_outputs: bool):
        # The vision-only pass calls get_image_features on the unwrapped model; a DeepSpeed / FSDP wrapper must see
        # the forward (see _DISTRIBUTED_WRAPPERS), so such a wrapped student always runs through the wrapper.
        full = need_outputs or type(model).__name__ in _DISTRIBUTED_WRAPPERS or is_fsdp2_module(model)
        feats, outputs = extract_features(model, inputs, self.args.feature_site, self.args.feature_layer,
                                          need_outputs=full, module=self._feature_module(model))
        return feats, (outputs if need_outputs else None)

    @torch.no_grad()
    def teacher_pass(self, model, inputs: dict, need_outputs: bool = False, starting: bool = False):
        """Teacher ``(features, outputs)`` for a model batch: the teacher (or the PEFT base with adapters off); with
        ``starting`` (before the first step) the starting model itself when no teacher is held."""
        if starting:
            context = self.starting_model(model)
        else:
            context = self.reference.active(model, self.accelerator.unwrap_model)
        with context as teacher:
            return self._features(teacher, inputs, need_outputs)

    @torch.no_grad()
    def prepare_teacher(self, resumed: bool = False) -> None:
        """At train begin: the stranger targets and (if asked) the teacher's features of every row, stored once from
        the starting model; the feature scale."""
        args = self.args
        missing = [what for what, needed in ((STRANGER, self.uses_stranger_target()),
                                             (FORGET_TEACHER, args.precompute_teacher_features))
                   if needed and what not in self.precomputed]
        if missing:
            self.check_starting_model(resumed, "teacher features", "VKD (its stored teacher features)")
        if STRANGER in missing:
            self.precomputed.put(STRANGER, self._compute_stranger_features())
        if FORGET_TEACHER in missing:
            self.precompute_teacher_features()
        if args.precompute_teacher_features:
            self.reference.drop()  # everything needed from the teacher is stored
        need_rms = self.feature_rms is None and args.forget_feature_loss == "random_target"
        if self.feature_scale is None or need_rms:
            feats = self._teacher_reference_features()  # one teacher pass for both statistics
            if self.feature_scale is None:
                self.feature_scale = self._measure_feature_scale(feats)
                self._metrics["feature_scale"].append(self.feature_scale)
            if need_rms:
                self.feature_rms = _rms(feats)

    @torch.no_grad()
    def precompute_teacher_features(self) -> None:
        """Store the teacher's features of every forget / retain row (and the NPO reference log-probs)."""
        args, model = self.args, self.model
        was_training = model.training
        model.eval()
        npo = args.forget_loss_type == "npo" and args.forget_weight > 0
        ref_logps: list[torch.Tensor] = []
        sides = [("forget", self.forget_dataset, npo)]
        if self.uses_retain() and args.feature_match_weight > 0:
            sides.append(("retain", self.retain_dataset, False))
        for side, dataset, need_outputs in sides:
            rows: list[torch.Tensor] = []
            for batch in self.eval_batches(dataset, desc=f"VKD teacher features ({side})"):
                inputs = self.model_inputs(batch)
                feats, outputs = self.teacher_pass(model, inputs, need_outputs, starting=True)
                rows.extend(features_per_row(feats, inputs, model))
                if need_outputs:
                    logps, _ = losses.sequence_log_probs(outputs.logits, inputs["labels"])
                    ref_logps.extend(logps.float())
            self.precomputed.put(f"{side}.teacher", rows)
        if npo:
            self.precomputed.put(REFERENCE_LOG_PROBS, ref_logps)
        model.train(was_training)

    @torch.no_grad()
    def _measure_feature_scale(self, feats: torch.Tensor | None = None) -> float:
        """Mean distance of the teacher's forget-image features from zero (retain images if the forget set has none)."""
        t = feats if feats is not None else self._teacher_reference_features()
        if t is None:
            return 1.0
        scale = losses.feature_distance(torch.zeros_like(t), t, self.args.distance).mean().item()
        if not scale > 0:
            raise ValueError(f"The teacher's features at {self.args.feature_site!r} are all zero; pick "
                             "another feature_site or set normalize_distance=False.")
        return scale

    @torch.no_grad()
    def _teacher_reference_features(self) -> torch.Tensor | None:
        """The teacher's features of the forget images (retain images if the forget set has none), (N, D) fp32."""
        for side in ("forget", "retain"):
            if f"{side}.teacher" in self.precomputed:
                feats = [f for f in self.precomputed.rows(f"{side}.teacher") if f.numel()]
            else:
                dataset = self.forget_dataset if side == "forget" else self.retain_dataset
                if dataset is None or not self.reference.available:
                    continue  # no retain set, or the teacher was dropped after precomputing
                feats = []
                for batch in self.eval_batches(dataset, desc="VKD teacher feature scale"):
                    f, _ = self.teacher_pass(self.model, self.model_inputs(batch))
                    if f is not None:
                        feats.append(f)
            if feats:
                return torch.cat([f.float() for f in feats])
        return None

    def uses_stranger_target(self) -> bool:
        return self.args.forget_feature_loss == "stranger" and self.args.push_away_weight > 0

    @torch.no_grad()
    def _compute_stranger_features(self) -> list[torch.Tensor]:
        """The starting teacher's features of every holdout image, one (tokens, D) tensor per image row."""
        was_training = self.model.training
        self.model.eval()
        rows: list[torch.Tensor] = []
        holdout = [self.holdout_dataset[i] for i in rows_with_images(self.holdout_dataset)]
        for batch in self.eval_batches(holdout, desc="VKD stranger targets"):
            inputs = self.model_inputs(batch)
            feats, _ = self.teacher_pass(self.model, inputs, starting=True)
            rows.extend(features_per_row(feats, inputs, self.model))
        self.model.train(was_training)
        return rows

    def stranger_target(self, forget: dict, like: torch.Tensor) -> torch.Tensor:
        """The stranger features of a forget batch: forget row i gets holdout image (i * 7919) mod H. A fixed
        assignment (the same target at every step), spread so that one person's rows, adjacent in most datasets,
        get different strangers."""
        rows = self.precomputed.rows(STRANGER)
        target = torch.cat([rows[(i * 7919) % len(rows)] for i in forget[ROW_INDEX_KEY].tolist()])
        if target.shape != like.shape:
            raise ValueError(
                f"Stranger features {tuple(target.shape)} and forget features {tuple(like.shape)} differ: the holdout "
                "images must give as many image tokens as the forget images (same image size / resolution).")
        return target.to(like)

    def forget_target(self, like: torch.Tensor) -> torch.Tensor:
        """The random target feature (D,) of ``forget_feature_loss='random_target'``, on ``like``'s device."""
        if self._forget_target is None:
            if self.feature_rms is None:
                self.feature_rms = _rms(self._teacher_reference_features())
            rms = self.feature_rms * self.args.target_scale
            self._forget_target = losses.random_feature_target(like.shape[-1], rms, seed=self.args.seed)
        return self._forget_target.to(like)

    def _teacher_features_for(self, side: str, model, batch: dict, inputs: dict, like: torch.Tensor) -> torch.Tensor:
        if f"{side}.teacher" in self.precomputed:
            return self.precomputed.gather(f"{side}.teacher", batch[ROW_INDEX_KEY]).to(like.device)
        feats, _ = self.teacher_pass(model, inputs)
        return feats

    def feature_distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Per-token distance (N,), in units of the teacher's feature scale when ``normalize_distance``."""
        if student.shape != teacher.shape:
            raise ValueError(
                f"Student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} at "
                f"{self.args.feature_site!r} differ: the teacher must have the student's architecture and sizes."
            )
        if self.feature_scale is None:
            self.feature_scale = self._measure_feature_scale()
        return losses.feature_distance(student, teacher, self.args.distance) / self.feature_scale

    # ------------------------------------------------------------------------------------------------------------
    # Losses
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _zero(model) -> torch.Tensor:
        # A batch without images and without an output term has nothing to learn; the base class then anchors the
        # step's loss to a trainable parameter so the backward pass still runs.
        return torch.zeros((), device=next(model.parameters()).device)

    def forget_loss(self, model, forget):
        args = self.args
        inputs = self.model_inputs(forget)
        need_outputs = args.forget_loss_type != "none"
        feats, outputs = self._features(model, inputs, need_outputs)
        loss, logs = self._zero(model), {}
        if need_outputs:
            nll = outputs.loss
            logs["forget_nll"] = nll.item()
            if args.forget_loss_type == "ga":
                term = losses.gradient_ascent_loss(nll)
            else:
                logps, _ = losses.sequence_log_probs(outputs.logits, inputs["labels"])
                if REFERENCE_LOG_PROBS in self.precomputed:
                    ref_logps = self.precomputed.gather(REFERENCE_LOG_PROBS, forget[ROW_INDEX_KEY], like=logps)
                else:
                    _, ref_out = self.teacher_pass(model, inputs, need_outputs=True)
                    ref_logps, _ = losses.sequence_log_probs(ref_out.logits, inputs["labels"])
                term = losses.npo_loss(logps, ref_logps, args.beta)
                logs["log_ratio"] = (logps - ref_logps).mean().item()
            loss = loss + term
            logs["forget_output_loss"] = term.item()
        if args.push_away_weight > 0 and feats is not None:
            d = self.feature_distance(feats, self._teacher_features_for("forget", model, forget, inputs, feats))
            if args.forget_feature_loss == "hinge":
                term = losses.hinge_push_away(d, args.margin)
            elif args.forget_feature_loss == "stranger":  # onto the teacher's view of a never-seen image
                term = self.feature_distance(feats, self.stranger_target(forget, feats)).mean()
            else:  # random_target: towards c * u, a gradient from the first step
                term = self.feature_distance(feats, self.forget_target(feats).expand_as(feats)).mean()
            loss = loss + args.push_away_weight * term
            logs.update(push_away=term.item(), forget_feature_distance=d.mean().item())
        return loss, logs

    def retain_loss(self, model, retain):
        args = self.args
        inputs = self.model_inputs(retain)
        need_outputs = args.retain_nll_weight > 0
        feats, outputs = self._features(model, inputs, need_outputs)
        loss, logs = self._zero(model), {}
        if need_outputs:
            loss = loss + args.retain_nll_weight * outputs.loss
            logs["retain_nll"] = outputs.loss.item()
        if args.feature_match_weight > 0 and feats is not None:
            d = self.feature_distance(feats, self._teacher_features_for("retain", model, retain, inputs, feats))
            match = d.mean()
            loss = loss + args.feature_match_weight * match
            logs["feature_match"] = match.item()
        return loss, logs


register_method(MethodSpec("vkd", VKDTrainer, "VKD: vision-side feature distillation with NPO, language model frozen."))
