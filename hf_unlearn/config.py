"""Training configurations: ``UnlearnConfig`` extends ``TrainingArguments``; each method adds its own knobs.

Every field carries ``metadata={"help": ...}`` so ``HfArgumentParser`` and ``hf-unlearn run --config`` expose it.
Defaults are conservative (issue reports across unlearning repos: aggressive GA defaults collapse the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .config_checks import check_training_numbers, require_finite, require_non_negative, require_positive

RETAIN_LOSS_TYPES = ("none", "nll", "kl")
MASK_SCOPES = ("forget", "all")
MMUNLEARNER_FORGET_LOSS_TYPES = ("ga", "npo", "unlikelihood")


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

    > Parameters that control the unlearning probe (``UnlearningEvalCallback``, docs/stopping.md)

    Args:
        stop_at_holdout (`bool` or `None`): stop once the forget rows look like the holdout rows (``holdout_dataset=``,
            rows of the same kind the model never saw). ``None``: on when a holdout set is given.
        stop_criterion (`str`, defaults to `"nll"`): ``"nll"``: mean forget NLL >= mean holdout NLL -
            ``stop_nll_margin``; ``"auc"``: loss-attack AUC (forget vs holdout) <= 0.5 + ``stop_auc_delta``.
        probe_steps (`int` or `None`): probe (with accuracy), log and check the stop rule every k steps. ``None``:
            every 10 steps with the stop rule (NLL and AUC only), otherwise only at evaluations, at
            ``noop_check_steps`` and at the start and end.
        probe_rows (`int`, defaults to `32`): rows per set in the probe (a fixed subset seeded by ``seed``); 0
            turns the probe off (no stop rule, no no-op warning, no before/after log).
        noop_check_steps, noop_min_nll_change: warn once if the forget NLL moved less than ``noop_min_nll_change``
            after ``noop_check_steps`` steps (0 skips the check).

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
    # The unlearning probe: logging, target-driven stop, no-op warning (trainers/callbacks.py)
    stop_at_holdout: bool | None = field(
        default=None,
        metadata={"help": "Stop once the forget rows look like the holdout rows (holdout_dataset=). None: on when a "
                          "holdout set is given."},
    )
    stop_criterion: str = field(
        default="nll",
        metadata={"help": "'nll': stop when mean forget NLL >= mean holdout NLL - stop_nll_margin; 'auc': when the "
                          "loss-attack AUC (forget vs holdout) <= 0.5 + stop_auc_delta.", "choices": ["nll", "auc"]},
    )
    stop_nll_margin: float = field(
        default=0.0, metadata={"help": "stop_criterion='nll': stop this close (in NLL) below the holdout NLL."}
    )
    stop_auc_delta: float = field(
        default=0.05, metadata={"help": "stop_criterion='auc': stop once the AUC is at most 0.5 + this."}
    )
    probe_steps: int | None = field(
        default=None,
        metadata={"help": "Probe (with accuracy), log and check the stop rule every k steps. None: every 10 steps "
                          "with the stop rule (NLL and AUC only), else only at evaluations."},
    )
    probe_rows: int = field(
        default=32, metadata={"help": "Rows per set in the probe (seeded fixed subset); 0 turns the probe off."}
    )
    noop_check_steps: int = field(
        default=10, metadata={"help": "Warn if the forget NLL hardly moved after this many steps (0: no check)."}
    )
    noop_min_nll_change: float = field(
        default=0.02, metadata={"help": "Smallest forget-NLL change after noop_check_steps that is not a no-op."}
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
        # Numbers fail here, where they are set, not steps into training (config_checks.py says why each).
        check_training_numbers(self)
        require_non_negative(self, "forget_weight", "retain_weight", "stop_nll_margin", "stop_auc_delta", "probe_rows",
                             "noop_check_steps", "noop_min_nll_change")
        require_finite(self, "stop_forget_loss_above")
        if self.max_weight_norm_change is not None and not self.max_weight_norm_change > 0:
            raise ValueError(f"max_weight_norm_change must be > 0 or None, got {self.max_weight_norm_change}.")
        if self.max_length is not None and not (isinstance(self.max_length, int) and self.max_length >= 1):
            raise ValueError(f"max_length must be an integer >= 1 or None, got {self.max_length!r}.")
        if self.stop_criterion not in ("nll", "auc"):
            raise ValueError(f"stop_criterion={self.stop_criterion!r}; use 'nll' or 'auc'.")
        if self.probe_steps is not None and self.probe_steps < 1:
            raise ValueError(f"probe_steps must be >= 1 or None, got {self.probe_steps}.")


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
        require_positive(self, "beta")


@dataclass
class MMUnlearnerConfig(UnlearnConfig):
    r"""MMUnlearner: masked forgetting of visual knowledge with retain descent (Huo et al., ACL 2025 Findings).

    The defaults forget on a memorised model under the user's own learning rate (docs/methods/mmunlearner.md says
    why each differs from the reference loop); ``schedule="alternate", masked_lr_scale=1.0, forget_weight=1.0`` is
    the reference loop.

    > Parameters that control the schedule

    Args:
        schedule (`str`, defaults to `"joint"`): ``"joint"`` takes L = forget_weight * L_f + retain_weight * L_r at
            every step, the mask on the forget gradient only (``mask_scope="forget"``) or on both (``"all"``).
            ``"alternate"`` is the reference loop: every ``forget_every``-th optimizer step is a masked forget step,
            the others are retain steps (half the forget steps, each dragged by the retain steps' Adam momentum).
        forget_every (`int`, defaults to `2`): one forget step every k steps in the alternate schedule.
        forget_weight (`float`, defaults to `3.0`): weight of the forget term. Ascent's gradient on a memorised
            answer is proportional to 1 - p, near 0; once retain rows drift the retain term's is not, and Adam
            follows the larger one.
        masked_lr_scale (`float`, defaults to `10.0`): the parameters the mask covers train at
            ``learning_rate * masked_lr_scale`` (``trainers/lr_scale.py``).
        forget_loss_type (`str`, defaults to `"ga"`): ``"ga"`` (gradient ascent, the paper), ``"npo"`` (bounded) or
            ``"unlikelihood"`` (bounded, -log(1 - p): its gradient does not vanish on memorised answers).
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
    forget_weight: float = field(
        default=3.0, metadata={"help": "Weight of the forget term (the reference loop: 1.0)."}
    )
    schedule: str = field(
        default="joint",
        metadata={"help": "'alternate' (forget step every k steps, others retain) or 'joint' (summed objective).",
                  "choices": ["alternate", "joint"]},
    )
    forget_every: int = field(default=2, metadata={"help": "Alternate schedule: one forget step every k steps."})
    forget_loss_type: str = field(
        default="ga", metadata={"help": "Forget loss: 'ga' (paper), 'npo' (bounded) or 'unlikelihood' (bounded, "
                                        "-log(1 - p): no vanishing gradient on memorised answers).",
                                "choices": list(MMUNLEARNER_FORGET_LOSS_TYPES)}
    )
    beta: float = field(default=0.4, metadata={"help": "NPO beta when forget_loss_type='npo'."})
    retain_guard_max_loss: float | None = field(
        default=None, metadata={"help": "Retain probe loss above which a forget update is shrunk or rolled back."}
    )
    retain_guard_action: str = field(
        default="shrink", metadata={"help": "'shrink' or 'rollback'.", "choices": ["shrink", "rollback"]}
    )
    retain_guard_shrink: float = field(default=0.5, metadata={"help": "Update scale factor when shrinking."})
    masked_lr_scale: float = field(
        default=10.0,
        metadata={"help": "Learning rate of the parameters the saliency mask covers = learning_rate x this: Adam "
                          "moves each weight by about the learning rate per step, so moving a masked subset of the "
                          "vision side needs larger steps than full-model training (1.0: learning_rate as given)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.schedule not in ("alternate", "joint"):
            raise ValueError(f"schedule={self.schedule!r}; use 'alternate' or 'joint'.")
        if self.forget_every < 1:
            raise ValueError(f"forget_every must be >= 1, got {self.forget_every}.")
        if self.forget_loss_type not in MMUNLEARNER_FORGET_LOSS_TYPES:
            raise ValueError(f"forget_loss_type={self.forget_loss_type!r}; use one of {MMUNLEARNER_FORGET_LOSS_TYPES}.")
        if self.retain_guard_action not in ("shrink", "rollback"):
            raise ValueError(f"retain_guard_action={self.retain_guard_action!r}; use 'shrink' or 'rollback'.")
        require_positive(self, "masked_lr_scale", "beta")
        require_finite(self, "retain_guard_max_loss")
        if not 0 < self.retain_guard_shrink < 1:
            raise ValueError(f"retain_guard_shrink must be in (0, 1), got {self.retain_guard_shrink}.")
        if self.schedule == "alternate" and self.retain_loss_type == "none":
            raise ValueError("schedule='alternate' alternates forget and retain steps: it needs a retain term "
                             "(retain_loss_type='nll' or 'kl').")


VKD_FEATURE_SITES = ("vision_layer", "projector", "llm_hidden")
VKD_DISTANCES = ("mse", "cosine", "smooth_l1")
VKD_FORGET_LOSS_TYPES = ("ga", "npo", "none")
VKD_FORGET_FEATURE_LOSSES = ("stranger", "random_target", "hinge")


@dataclass
class VKDConfig(UnlearnConfig):
    r"""VKD: visual knowledge distillation with a frozen language model (hf_unlearn's reading of Wang et al., 2025).

    Only the vision tower and projector train; the language model and ``lm_head`` are frozen. A frozen teacher (the
    starting model by default) supplies intermediate features: forget-image features are pulled towards the teacher's
    features of never-seen faces (or a fixed random target, or pushed ``margin`` away from the teacher's), retain-image
    features are pulled onto the teacher's. See ``docs/methods/vkd.md`` for which of these choices the paper leaves
    open and how the defaults were measured.

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
            with ``forget_feature_loss="hinge"`` needs a ``teacher_model`` that differs from the starting model.
        beta (`float`, defaults to `0.1`): NPO inverse temperature.
        forget_feature_loss (`str` or `None`, defaults to `None`): the forget-image feature term. ``"stranger"``: mean
            d(f_s(x_f), f_t(x_h)), each forget image's features pulled onto the teacher's features of a never-seen
            image of the same kind (a row of ``holdout_dataset=``; forget row i gets holdout image (i * 7919) mod H,
            so the rows of one person get different strangers): the model is taught to see a stranger, which is what
            a model never trained on the forget set sees. ``"random_target"``: mean d(f_s, c * u), towards a fixed
            random direction u (entries uniform in [0, 1), normalised, seeded by ``seed``) with an RMS entry of
            ``target_scale`` times the teacher's forget features' (representation misdirection, as RMU, Li et al.
            2024, arXiv 2403.03218). Both have a gradient from the first step. ``"hinge"``: mean max(0, margin -
            d(f_s, f_t)), pushed away from the teacher's features; zero gradient at the start. ``None``:
            ``"stranger"`` when a holdout set is given (the benchmark's tuning protocol chose it,
            docs/methods/vkd.md), else ``"random_target"``.
        push_away_weight (`float`, defaults to `1.0`): weight of the forget feature term.
        target_scale (`float`, defaults to `1.0`): the random target's norm relative to the teacher's features.
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
        vision_lr_scale (`float`, defaults to `10.0`): the vision tower and projector train at
            ``learning_rate * vision_lr_scale`` (``trainers/lr_scale.py``: Adam moves each weight by about the
            learning rate per step, and VKD moves only the vision side).
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
    forget_feature_loss: str | None = field(
        default=None,
        metadata={"help": "Forget-image feature term: 'stranger' (pull forget features onto the teacher's features of "
                          "never-seen holdout images; needs holdout_dataset=), 'random_target' (towards a fixed random "
                          "direction of the teacher features' norm, as RMU) or 'hinge' (push them margin away from the "
                          "teacher's; zero gradient at the start). None: 'stranger' with a holdout set, else "
                          "'random_target'.",
                  "choices": list(VKD_FORGET_FEATURE_LOSSES)},
    )
    push_away_weight: float = field(
        default=1.0, metadata={"help": "Weight of the forget feature term (forget_feature_loss) on forget images."}
    )
    target_scale: float = field(
        default=1.0,
        metadata={"help": "forget_feature_loss='random_target': the target's norm in units of the teacher's forget "
                          "features' RMS norm (RMU's steering coefficient)."},
    )
    margin: float = field(
        default=1.0, metadata={"help": "forget_feature_loss='hinge': margin (normalized units when "
                                       "normalize_distance)."}
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
    vision_lr_scale: float = field(
        default=10.0,
        metadata={"help": "Learning rate of the vision tower and projector (all VKD trains) = learning_rate x this: "
                          "Adam moves each weight by about the learning rate per step, so moving only the vision "
                          "side needs larger steps than full-model training (1.0: learning_rate as given)."},
    )

    def __post_init__(self):
        super().__post_init__()
        for name, allowed in (("feature_site", VKD_FEATURE_SITES), ("distance", VKD_DISTANCES),
                              ("forget_loss_type", VKD_FORGET_LOSS_TYPES),
                              ("forget_feature_loss", (None, *VKD_FORGET_FEATURE_LOSSES))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}.")
        require_positive(self, "beta")
        require_non_negative(self, "push_away_weight", "margin", "feature_match_weight", "retain_nll_weight",
                             "target_scale")
        require_positive(self, "vision_lr_scale")
        if self.trainable_vision_blocks is not None and self.trainable_vision_blocks < 0:
            raise ValueError(f"trainable_vision_blocks must be None or >= 0, got {self.trainable_vision_blocks}.")
        if self.retain_loss_type == "kl":
            raise ValueError("VKDConfig does not support retain_loss_type='kl': VKD's retain term is feature matching "
                             "(feature_match_weight) plus an optional retain NLL (retain_nll_weight). Use 'nll' or "
                             "'none'.")
        if self.forget_weight > 0 and self.forget_loss_type == "none" and self.push_away_weight == 0:
            raise ValueError("The forget term is empty: forget_loss_type='none' and push_away_weight=0. Set one, or "
                             "forget_weight=0.")


# ------------------------------------------------------------------------------------------------------------------
# Text-LLM methods with OpenUnlearning parity: SimNPO, RMU, IdkPO, UNDIAL (docs/methods/<name>.md)
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class SimNPOConfig(UnlearnConfig):
    r"""SimNPO: reference-free, length-normalised NPO (Fan et al., 2024, arXiv 2410.07163).

    L = -(2/beta) mean log sigmoid(-(beta/|y|) log pi(y|x) - gamma) on forget answers, plus the retain term.
    Defaults are the authors' TOFU forget10 recipe (also OpenUnlearning's): beta 4.5, gamma 0, forget weight 0.125.

    Args:
        beta (`float`, defaults to `4.5`): inverse temperature applied to the mean answer NLL.
        gamma (`float`, defaults to `0.0`): reward margin, the paper's gamma: subtracted *after* scaling by beta.
            OpenUnlearning's ``delta`` sits inside beta(.): delta_OU = gamma / beta.
        forget_weight (`float`, defaults to `0.125`): the authors' ``npo_coeff`` for TOFU forget10 (0.1375 forget05).
    """

    forget_weight: float = field(
        default=0.125, metadata={"help": "Weight of the SimNPO term (the authors' npo_coeff; TOFU forget10: 0.125)."}
    )
    beta: float = field(default=4.5, metadata={"help": "SimNPO inverse temperature beta (> 0)."})
    gamma: float = field(
        default=0.0,
        metadata={"help": "Reward margin gamma of the paper (>= 0), subtracted after beta scaling; OpenUnlearning's "
                          "delta equals gamma / beta."},
    )

    def __post_init__(self):
        super().__post_init__()
        require_positive(self, "beta")
        require_non_negative(self, "gamma")  # a margin


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


@dataclass
class IdkPOConfig(UnlearnConfig):
    r"""IdkPO: DPO toward refusals (TOFU's "IDK" preference optimisation, Maini et al. 2024; Zhang et al. 2024).

    Each forget row is a preference pair: chosen = a refusal ("I don't know"-style answer), rejected = the forget
    answer. L = -mean log sigmoid(beta * [(log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected)]), the
    standard DPO loss (OpenUnlearning multiplies it by 2/beta: set ``forget_weight=2/beta`` to reproduce its scale).

    Args:
        beta (`float`, defaults to `0.1`): DPO inverse temperature.
        refusal_column (`str` or `None`, defaults to `None`): a forget-set column holding each row's refusal; ``None``
            draws one per row from ``refusals``.
        refusals (`list[str]` or `None`, defaults to `None`): the refusals to draw from; ``None`` uses the built-in
            list ``hf_unlearn.data.refusals.REFUSALS``. The draw is seeded by ``seed`` and the row index.
    """

    beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature beta (> 0)."})
    refusal_column: str | None = field(
        default=None, metadata={"help": "Forget-set column with each row's refusal answer; None: draw from refusals."}
    )
    refusals: list[str] | None = field(
        default=None,
        metadata={"help": "Refusal answers to draw from (seeded per row); None: the built-in list."},
    )

    def __post_init__(self):
        super().__post_init__()
        require_positive(self, "beta")
        if self.refusals is not None and (not self.refusals or not all(isinstance(r, str) and r.strip()
                                                                        for r in self.refusals)):
            raise ValueError("refusals must be a non-empty list of non-empty strings, or None for the built-in list.")
        if self.refusal_column is not None and self.refusals is not None:
            raise ValueError("Pass refusal_column (one refusal per row) or refusals (a list to draw from), not both.")


@dataclass
class UNDIALConfig(UnlearnConfig):
    r"""UNDIAL: self-distillation toward adjusted logits (Dong et al., 2024, arXiv 2402.10052).

    On forget answers the student is trained by cross-entropy toward softmax(z_ref - gamma * onehot(y_t)): the frozen
    starting model's next-token distribution with the logit of the token to forget lowered by ``gamma``. The loss is
    averaged over answer tokens only (OpenUnlearning averages over every position and mislabels padding).

    Args:
        gamma (`float`, defaults to `10.0`): how far the target token's logit is lowered (OpenUnlearning's ``beta``).
    """

    gamma: float = field(
        default=10.0, metadata={"help": "Amount subtracted from the target token's reference logit (>= 0)."}
    )

    def __post_init__(self):
        super().__post_init__()
        require_non_negative(self, "gamma")
