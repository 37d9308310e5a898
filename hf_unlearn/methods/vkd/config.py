"""``VKDConfig``: the knobs of visual knowledge distillation (``trainer.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import UnlearnConfig
from ...config_checks import require_non_negative, require_positive

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
