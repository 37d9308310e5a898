"""Training configurations: ``UnlearnConfig`` extends ``TrainingArguments``; each method adds its own knobs.

Every field carries ``metadata={"help": ...}`` so ``HfArgumentParser`` and ``hf-unlearn run --config`` expose it.
Defaults are conservative (issue reports across unlearning repos: aggressive GA defaults collapse the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

RETAIN_LOSS_TYPES = ("none", "nll", "kl")
MASK_SCOPES = ("forget", "all")


@dataclass
class UnlearnConfig(TrainingArguments):
    r"""Arguments shared by every unlearning trainer.

    > Parameters that control the objective

    Args:
        forget_weight (`float`, defaults to `1.0`): weight of the forget term.
        retain_loss_type (`str` or `None`, defaults to `None`): retain term, ``"none"``, ``"nll"`` (GA_Diff-style
            descent on retain answers) or ``"kl"`` (KL to the reference model on retain batches, KL_Min-style).
            ``None`` picks ``"nll"`` when a retain set is given and ``"none"`` otherwise.
        retain_weight (`float`, defaults to `1.0`): weight of the retain term.
        answer_only_loss (`bool`, defaults to `True`): take losses on answer tokens only (else on all text tokens).
        max_length (`int` or `None`): truncate answers so sequences fit (prompts, image tokens included, never cut).

    > Parameters that control pairing and stopping

    Args:
        pairing_anchor (`str`, defaults to `"forget"`): which split an epoch runs over; the other is cycled.
        stop_forget_loss_above (`float` or `None`): stop once the mean forget NLL of a step exceeds this value
            (gradient ascent diverges if left alone).
        divergence_guard (`bool`, defaults to `True`): keep an optimizer step only if the loss and the updated
            weights are finite and the weight norm changed by at most ``max_weight_norm_change``; on a failure put
            back the last good weights (bit for bit), save nothing more and raise ``UnlearningDivergedError``
            (``hf_unlearn.trainers.divergence``; holds one copy of the trainable weights).
        max_weight_norm_change (`float` or `None`, defaults to `1.0`): the largest relative change
            ``| ||w_new|| - ||w_old|| | / ||w_old||`` of the trainable weights' norm in one step (a lower bound of the
            update's size; 1.0: the norm more than doubled). ``None``: only non-finite weights fail.

    > Parameters that control saliency masks

    Args:
        mask_scope (`str`, defaults to `"forget"`): the mask restricts the forget gradient only (MMUnlearner) or
            ``"all"`` gradients.
        freeze_unmasked_parameters (`bool`, defaults to `True`): with a mask, freeze every parameter the mask does
            not cover (e.g. the language model under a vision mask).
    """

    # Conservative defaults that differ from TrainingArguments.
    learning_rate: float = field(default=1e-5, metadata={"help": "Initial AdamW learning rate."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep raw columns (image/question/answer): the unlearning collator needs them."},
    )
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})

    # Objective
    forget_weight: float = field(default=1.0, metadata={"help": "Weight of the forget term."})
    retain_loss_type: str | None = field(
        default=None,
        metadata={"help": "Retain term: 'none', 'nll' (GA_Diff) or 'kl' (KL_Min). None: 'nll' if a retain set "
                          "is given, else 'none'.", "choices": [None, *RETAIN_LOSS_TYPES]},
    )
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain term."})
    answer_only_loss: bool = field(
        default=True, metadata={"help": "Losses on answer tokens only (default) or on every text token."}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Maximum sequence length; answers are truncated, prompts never."}
    )
    # Pairing and stopping
    pairing_anchor: str = field(
        default="forget",
        metadata={"help": "'forget': an epoch is one pass over the forget set (retain rows cycled); 'retain': the "
                          "reverse.", "choices": ["forget", "retain"]},
    )
    stop_forget_loss_above: float | None = field(
        default=None, metadata={"help": "Stop training once a step's mean forget NLL exceeds this value."}
    )
    divergence_guard: bool = field(
        default=True,
        metadata={"help": "Check each step's loss and updated weights; on divergence restore the last good weights, "
                          "save nothing more and raise UnlearningDivergedError."},
    )
    max_weight_norm_change: float | None = field(
        default=1.0,
        metadata={"help": "Largest relative change of the trainable weights' norm in one optimizer step the divergence "
                          "guard accepts (1.0: the norm more than doubled; None: only non-finite weights fail)."},
    )
    # Saliency masks
    mask_scope: str = field(
        default="forget",
        metadata={"help": "The saliency mask restricts the forget gradient only ('forget') or every gradient "
                          "('all').", "choices": list(MASK_SCOPES)},
    )
    freeze_unmasked_parameters: bool = field(
        default=True, metadata={"help": "With a mask, freeze the parameters it does not cover."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.retain_loss_type is not None and self.retain_loss_type not in RETAIN_LOSS_TYPES:
            raise ValueError(f"retain_loss_type={self.retain_loss_type!r} is not one of {RETAIN_LOSS_TYPES}.")
        if self.pairing_anchor not in ("forget", "retain"):
            raise ValueError(f"pairing_anchor={self.pairing_anchor!r}; use 'forget' or 'retain'.")
        if self.mask_scope not in MASK_SCOPES:
            raise ValueError(f"mask_scope={self.mask_scope!r} is not one of {MASK_SCOPES}.")
        for name in ("forget_weight", "retain_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.max_weight_norm_change is not None and not self.max_weight_norm_change > 0:
            raise ValueError(f"max_weight_norm_change must be > 0 or None, got {self.max_weight_norm_change}.")


@dataclass
class GAConfig(UnlearnConfig):
    r"""Gradient ascent on the forget set. ``retain_loss_type="nll"`` gives GA_Diff, ``"kl"`` gives KL_Min."""


@dataclass
class NPOConfig(UnlearnConfig):
    r"""Negative Preference Optimization.

    Args:
        beta (`float`, defaults to `0.1`): inverse temperature of the NPO loss (OpenUnlearning default; MLLMU-Bench
            and MMUnlearner use 0.4).
        precompute_ref_log_probs (`bool`, defaults to `False`): compute the reference log-probabilities of every
            forget example once at the start of training, then drop the reference model (no second model in memory).
    """

    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature beta (> 0)."})
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "Compute reference log-probs of the forget set once; hold no reference model afterwards."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")


@dataclass
class MMUnlearnerConfig(UnlearnConfig):
    r"""MMUnlearner: masked forgetting of visual knowledge with retain descent (Huo et al., ACL 2025 Findings).

    > Parameters that control the schedule

    Args:
        schedule (`str`, defaults to `"alternate"`): ``"alternate"`` is the reference loop: every ``forget_every``-th
            optimizer step is a masked forget step, the others are retain steps. ``"joint"`` takes
            L = forget_weight * L_f + retain_weight * L_r at every step, the mask on the forget gradient only
            (``mask_scope="forget"``) or on both (``"all"``).
        forget_every (`int`, defaults to `2`): one forget step every k steps in the alternate schedule.
        forget_loss_type (`str`, defaults to `"ga"`): ``"ga"`` (gradient ascent, the paper) or ``"npo"`` (bounded).
        beta (`float`, defaults to `0.4`): NPO inverse temperature when ``forget_loss_type="npo"``.

    > Parameters that control the retain-loss guard (geometry constraint)

    Args:
        retain_guard_max_loss (`float` or `None`): after a forget update, if the retain probe loss exceeds this
            value, apply ``retain_guard_action``. ``None`` disables the guard.
        retain_guard_action (`str`, defaults to `"shrink"`): ``"shrink"`` scales the update by
            ``retain_guard_shrink`` (repeatedly, up to 4 times) or ``"rollback"`` undoes it.
        retain_guard_shrink (`float`, defaults to `0.5`): factor applied to the update when shrinking.
    """

    retain_loss_type: str | None = field(
        default="nll", metadata={"help": "Retain term: 'nll' (the paper's retain descent), 'kl' or 'none'."}
    )
    schedule: str = field(
        default="alternate",
        metadata={"help": "'alternate' (forget step every k steps, others retain) or 'joint' (summed objective).",
                  "choices": ["alternate", "joint"]},
    )
    forget_every: int = field(default=2, metadata={"help": "Alternate schedule: one forget step every k steps."})
    forget_loss_type: str = field(
        default="ga", metadata={"help": "Forget loss: 'ga' (paper) or 'npo' (bounded).", "choices": ["ga", "npo"]}
    )
    beta: float = field(default=0.4, metadata={"help": "NPO beta when forget_loss_type='npo'."})
    retain_guard_max_loss: float | None = field(
        default=None, metadata={"help": "Retain probe loss above which a forget update is shrunk or rolled back."}
    )
    retain_guard_action: str = field(
        default="shrink", metadata={"help": "'shrink' or 'rollback'.", "choices": ["shrink", "rollback"]}
    )
    retain_guard_shrink: float = field(default=0.5, metadata={"help": "Update scale factor when shrinking."})

    def __post_init__(self):
        super().__post_init__()
        if self.schedule not in ("alternate", "joint"):
            raise ValueError(f"schedule={self.schedule!r}; use 'alternate' or 'joint'.")
        if self.forget_every < 1:
            raise ValueError(f"forget_every must be >= 1, got {self.forget_every}.")
        if self.forget_loss_type not in ("ga", "npo"):
            raise ValueError(f"forget_loss_type={self.forget_loss_type!r}; use 'ga' or 'npo'.")
        if self.retain_guard_action not in ("shrink", "rollback"):
            raise ValueError(f"retain_guard_action={self.retain_guard_action!r}; use 'shrink' or 'rollback'.")
        if not 0 < self.retain_guard_shrink < 1:
            raise ValueError(f"retain_guard_shrink must be in (0, 1), got {self.retain_guard_shrink}.")
        if self.schedule == "alternate" and self.retain_loss_type == "none":
            raise ValueError("schedule='alternate' alternates forget and retain steps: it needs a retain term "
                             "(retain_loss_type='nll' or 'kl').")


VKD_FEATURE_SITES = ("vision_layer", "projector", "llm_hidden")
VKD_DISTANCES = ("mse", "cosine", "smooth_l1")
VKD_FORGET_LOSS_TYPES = ("ga", "npo", "none")


@dataclass
class VKDConfig(UnlearnConfig):
    r"""VKD: visual knowledge distillation with a frozen language model (hf_unlearn's reading of Wang et al., 2025).

    Only the vision tower and projector train; the language model and ``lm_head`` are frozen. A frozen teacher (the
    starting model by default) supplies intermediate features: forget-image features are pushed at least ``margin``
    away from the teacher's, retain-image features are pulled onto them. See ``docs/methods/vkd.md`` for which of
    these choices the paper leaves open.

    > Parameters that control the features

    Args:
        feature_site (`str`, defaults to `"projector"`): where features are compared: ``"vision_layer"`` (output of
            vision block ``feature_layer``), ``"projector"`` (projector / Qwen2-VL merger output) or ``"llm_hidden"``
            (output of decoder layer ``feature_layer`` at the image-token positions; runs the frozen LLM).
        feature_layer (`int`, defaults to `-1`): block index for ``vision_layer`` / ``llm_hidden`` (negative counts
            from the end). LLaVA-1.5 feeds the LM from ``vision_feature_layer=-2``: use -2 there.
        distance (`str`, defaults to `"mse"`): per-token distance ``"mse"``, ``"cosine"`` (1 - cos) or ``"smooth_l1"``.
        normalize_distance (`bool`, defaults to `True`): divide distances by the teacher's feature scale (the mean
            distance of the teacher's forget features from the zero vector, measured once at the start), so
            ``margin`` and the weights mean the same on any model. A no-op for ``cosine`` (the scale is 1).

    > Parameters that control the objective

    Args:
        forget_loss_type (`str`, defaults to `"npo"`): output-level term on forget answers: ``"npo"``, ``"ga"`` or
            ``"none"`` (features only; the language model never runs on forget batches then). The hinge alone
            cannot start from a student equal to its teacher (d = 0 is where its gradient vanishes), so ``"none"``
            needs a ``teacher_model`` that differs from the starting model.
        beta (`float`, defaults to `0.1`): NPO inverse temperature.
        push_away_weight (`float`, defaults to `1.0`): weight of the hinge max(0, margin - d(f_s, f_t)) on forget
            images.
        margin (`float`, defaults to `1.0`): hinge margin, in normalized units when ``normalize_distance``: 1.0 asks
            forget features to be as far from the teacher's as the teacher's are from zero.
        feature_match_weight (`float`, defaults to `10.0`): weight of d(f_s, f_t) on retain images (in normalized
            units a retain drift of 0.1 costs as much as a fully violated forget hinge).
        retain_nll_weight (`float`, defaults to `0.0`): weight of the output NLL on retain answers (reaches the
            vision side through the image tokens; text-only retain rows give it no gradient).
        retain_loss_type (`str` or `None`): ``"nll"`` (the default with a retain set) enables VKD's retain terms
            above, ``"none"`` disables them; ``"kl"`` is not supported.

    > Parameters that control what trains and the teacher

    Args:
        trainable_vision_blocks (`int` or `None`, defaults to `None`): train only the last N vision blocks (plus the
            modules after them and the projector); ``None`` trains the whole vision tower and projector, 0 only the
            projector.
        precompute_teacher_features (`bool`, defaults to `False`): compute the teacher's features (and NPO reference
            log-probs) for every forget and retain row once at the start, keep them on CPU and hold no teacher
            model afterwards.
    """

    feature_site: str = field(
        default="projector",
        metadata={"help": "Feature site: 'vision_layer', 'projector' or 'llm_hidden' (at image tokens).",
                  "choices": list(VKD_FEATURE_SITES)},
    )
    feature_layer: int = field(
        default=-1, metadata={"help": "Block index for vision_layer / llm_hidden; negative counts from the end."}
    )
    distance: str = field(
        default="mse", metadata={"help": "Feature distance: 'mse', 'cosine' or 'smooth_l1'.",
                                 "choices": list(VKD_DISTANCES)},
    )
    normalize_distance: bool = field(
        default=True,
        metadata={"help": "Divide distances by the teacher's feature scale (mean distance of its forget features "
                          "from zero), making margin and weights scale-free."},
    )
    forget_loss_type: str = field(
        default="npo", metadata={"help": "Output-level forget term: 'npo', 'ga' or 'none'.",
                                 "choices": list(VKD_FORGET_LOSS_TYPES)},
    )
    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature beta (> 0)."})
    push_away_weight: float = field(
        default=1.0, metadata={"help": "Weight of the hinge max(0, margin - d) on forget-image features."}
    )
    margin: float = field(
        default=1.0, metadata={"help": "Hinge margin (normalized units when normalize_distance)."}
    )
    feature_match_weight: float = field(
        default=10.0, metadata={"help": "Weight of the feature distance to the teacher on retain images."}
    )
    retain_nll_weight: float = field(
        default=0.0, metadata={"help": "Weight of the output NLL on retain answers (0 = feature matching only)."}
    )
    trainable_vision_blocks: int | None = field(
        default=None,
        metadata={"help": "Train only the last N vision blocks (+ projector); None = whole vision tower."},
    )
    precompute_teacher_features: bool = field(
        default=False,
        metadata={"help": "Compute teacher features once at the start (kept on CPU); hold no teacher afterwards."},
    )

    def __post_init__(self):
        super().__post_init__()
        for name, allowed in (("feature_site", VKD_FEATURE_SITES), ("distance", VKD_DISTANCES),
                              ("forget_loss_type", VKD_FORGET_LOSS_TYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}.")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")
        for name in ("push_away_weight", "margin", "feature_match_weight", "retain_nll_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.trainable_vision_blocks is not None and self.trainable_vision_blocks < 0:
            raise ValueError(f"trainable_vision_blocks must be None or >= 0, got {self.trainable_vision_blocks}.")
        if self.retain_loss_type == "kl":
            raise ValueError("VKDConfig does not support retain_loss_type='kl': VKD's retain term is feature matching "
                             "(feature_match_weight) plus an optional retain NLL (retain_nll_weight). Use 'nll' or "
                             "'none'.")
        if self.forget_weight > 0 and self.forget_loss_type == "none" and self.push_away_weight == 0:
            raise ValueError("The forget term is empty: forget_loss_type='none' and push_away_weight=0. Set one, or "
                             "forget_weight=0.")
