"""`SaliencyMaskConfig`: which parameters a saliency mask covers and how they are scored (PEFT-style config)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn
from transformers.utils import PushToHubMixin

from ..models import (
    GROUPS,
    LANGUAGE,
    PROJECTOR,
    VISION,
    canonical_parameter_name,
    parameter_groups,
    unknown_architecture_error,
)
from ..utils import atomic_write_text
from ..version import __version__
from .errors import MaskFileError
from .redaction import preserve_name_map, redact_preserve_names

CONFIG_NAME = "saliency_mask_config.json"
PRESETS = {"vision": (VISION, PROJECTOR), "language": (LANGUAGE,), "both": (VISION, PROJECTOR, LANGUAGE)}
SCORES = ("fisher_ratio", "grad_magnitude", "random")
PRESERVE_COMBINES = ("pooled", "every")
DEFAULT_THRESHOLDS = {"fisher_ratio": 1.0, "grad_magnitude": 0.5, "random": 0.5}
MASK_TYPE = "saliency"


def _default_preserve_sets() -> dict[str, list[str]]:
    return {"vision": ["retain"], "language": ["retain", "text"]}


@dataclass
class SaliencyMaskConfig(PushToHubMixin):
    """Configuration of a saliency mask: the parameters it covers and the score that selects them.

    A selected entry (mask value True) may be updated by the forget gradient; a covered entry that is not selected is
    held fixed. Save, load and push it like a PEFT config; it is stored as ``saliency_mask_config.json``.

    Args:
        target_modules (`str` or `list[str]`, defaults to `"vision"`):
            Parameters the mask covers. Presets: `"vision"` (vision tower + projector), `"language"` (language model,
            `embed_tokens` and `lm_head`), `"both"`. Any other string is a regex matched with `re.fullmatch`; a list
            holds names or name suffixes (PEFT semantics: an entry matches when it equals the name or the name ends
            with `"." + entry`). Regexes and list entries are tried on the parameter name and on the names of the
            modules that contain it, with and without wrapper prefixes (`module.`, `base_model.model.`), so
            `["q_proj"]` covers `q_proj.weight`, `q_proj.bias` and the LoRA parameters under `q_proj`. Only parameters
            with `requires_grad=True` are covered.
        exclude_modules (`str` or `list[str]`, *optional*):
            Parameters never covered, same semantics as `target_modules` (presets excluded).
        score (`str`, defaults to `"fisher_ratio"`):
            `"fisher_ratio"` (MMUnlearner / SFR-on: forget Fisher over preserve Fisher, kept when >= `threshold`),
            `"grad_magnitude"` (SalUn: |summed forget gradient|, top `threshold` fraction) or `"random"` (seeded,
            top `threshold` fraction; an ablation).
        threshold (`float`, *optional*):
            For `fisher_ratio` the ratio gamma (default 1.0, > 0); for `grad_magnitude` and `random` the fraction of
            covered entries kept, in (0, 1] (default 0.5). Filled in by `__post_init__`.
        preserve_sets (`dict[str, list[str]]`, defaults to `{"vision": ["retain"], "language": ["retain", "text"]}`):
            Which named preserve datasets feed the preserve Fisher of each parameter group (keys `"vision"`,
            `"language"`, optionally `"projector"`; projector parameters use the `"vision"` entry unless a
            `"projector"` entry is given). Only used by `fisher_ratio`.
        preserve_combine (`str`, defaults to `"pooled"`):
            `"pooled"`: one preserve Fisher over all of a group's preserve sets (the reference code); `"every"`: the
            ratio test must pass against each preserve set separately (stricter).
        epsilon (`float`, defaults to 1e-15):
            Added to both Fishers before dividing.
        seed (`int`, defaults to 0):
            Seed of the `random` score.
        batch_size (`int`, defaults to 4):
            Rows per batch; the Fisher squares the gradient of each batch's mean loss, so it depends on this.
        max_batches (`int`, *optional*):
            Use at most this many batches of each dataset (forget and each preserve set).
        hf_unlearn_version (`str`, *optional*):
            Version of `hf_unlearn` that created the config; filled in automatically.
        mask_type (`str`, defaults to `"saliency"`):
            Discriminator stored in the JSON file.
    """

    target_modules: str | list[str] = field(
        default="vision",
        metadata={
            "help": "Parameters covered: a preset ('vision' = vision tower + projector, 'language', 'both'), a regex "
            "(re.fullmatch on the parameter name) or a list of names / name suffixes (PEFT semantics)."
        },
    )
    exclude_modules: str | list[str] | None = field(
        default=None,
        metadata={"help": "Parameters never covered: a regex or a list of names / name suffixes."},
    )
    score: str = field(
        default="fisher_ratio",
        metadata={"help": f"Saliency score, one of {list(SCORES)}."},
    )
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "fisher_ratio: keep entries whose ratio is >= this gamma (default 1.0). grad_magnitude / random: "
            "fraction of covered entries kept, in (0, 1] (default 0.5)."
        },
    )
    preserve_sets: dict[str, list[str]] = field(
        default_factory=_default_preserve_sets,
        metadata={
            "help": "Named preserve datasets feeding each group's preserve Fisher; projector parameters use the "
            "'vision' entry unless a 'projector' entry is given."
        },
    )
    preserve_combine: str = field(
        default="pooled",
        metadata={
            "help": "'pooled': one Fisher over all of a group's preserve sets; 'every': the ratio test must pass "
            "against each preserve set separately."
        },
    )
    epsilon: float = field(default=1e-15, metadata={"help": "Added to both Fishers before dividing."})
    seed: int = field(default=0, metadata={"help": "Seed of the 'random' score."})
    batch_size: int = field(default=4, metadata={"help": "Rows per batch when accumulating gradients."})
    max_batches: int | None = field(
        default=None, metadata={"help": "At most this many batches of each dataset (None: all)."}
    )
    hf_unlearn_version: str | None = field(
        default=None, metadata={"help": "Version of hf_unlearn that created the config (filled in automatically)."}
    )
    mask_type: str = field(default=MASK_TYPE, metadata={"help": "Discriminator stored in the JSON file."})

    def __post_init__(self) -> None:
        if self.hf_unlearn_version is None:
            self.hf_unlearn_version = __version__
        if self.mask_type != MASK_TYPE:
            raise ValueError(f"mask_type={self.mask_type!r} is not supported; the only allowed value is {MASK_TYPE!r}.")
        self.target_modules = self._check_selector("target_modules", self.target_modules, allow_preset=True)
        if self.exclude_modules is not None:
            self.exclude_modules = self._check_selector("exclude_modules", self.exclude_modules, allow_preset=False)
        if self.score not in SCORES:
            raise ValueError(f"score={self.score!r} is not supported; allowed values: {list(SCORES)}.")
        self._check_threshold()
        self._check_preserve_sets()
        if self.preserve_combine not in PRESERVE_COMBINES:
            raise ValueError(
                f"preserve_combine={self.preserve_combine!r} is not supported; allowed values: "
                f"{list(PRESERVE_COMBINES)}."
            )
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)) or not (
            0 < self.epsilon < math.inf
        ):
            raise ValueError(f"epsilon={self.epsilon!r} must be a finite number > 0 (e.g. the default 1e-15).")
        self.epsilon = float(self.epsilon)
        for name, minimum in (("seed", None), ("batch_size", 1), ("max_batches", 1)):
            value = getattr(self, name)
            if name == "max_batches" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
                bound = "an integer" if minimum is None else f"an integer >= {minimum}"
                allowed = f"{bound} or None" if name == "max_batches" else bound
                raise ValueError(f"{name}={value!r} must be {allowed}.")

    # ----------------------------------------------------------------------------------------------------- checks
    @staticmethod
    def _check_selector(name: str, value: Any, allow_preset: bool) -> str | list[str]:
        presets = f"a preset {sorted(PRESETS)}, " if allow_preset else ""
        allowed = f"{presets}a regex string, or a non-empty list of parameter / module names or suffixes"
        if isinstance(value, (list, tuple, set, frozenset)):
            items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
            if not items or not all(isinstance(item, str) and item for item in items):
                raise ValueError(f"{name}={value!r} is not valid; allowed: {allowed}.")
            return items
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name}={value!r} is not valid; allowed: {allowed}.")
        if not allow_preset and value in PRESETS:
            raise ValueError(f"{name}={value!r}: presets cannot be excluded; pass a regex or a list of names instead.")
        if value not in PRESETS:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"{name}={value!r} is not a valid regex ({err}); allowed: {allowed}.") from None
        return value

    def _check_threshold(self) -> None:
        if self.threshold is None:
            self.threshold = DEFAULT_THRESHOLDS[self.score]
        value = self.threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"threshold={value!r} must be a number.")
        self.threshold = float(value)
        if self.score == "fisher_ratio" and not (0 < value < math.inf):
            raise ValueError(
                f"threshold={value!r} is the Fisher-ratio gamma for score='fisher_ratio' and must be a finite number "
                "> 0 (default 1.0)."
            )
        if self.score != "fisher_ratio" and not (0 < value <= 1):
            raise ValueError(
                f"threshold={value!r} is the fraction of covered entries kept for score={self.score!r} and must be in "
                "(0, 1] (default 0.5)."
            )

    def _check_preserve_sets(self) -> None:
        value = self.preserve_sets
        example = "e.g. {'vision': ['retain'], 'language': ['retain', 'text']}"
        if not isinstance(value, dict):
            raise ValueError(f"preserve_sets={value!r} must be a dict from group to dataset names, {example}.")
        cleaned: dict[str, list[str]] = {}
        for group, names in value.items():
            if group not in GROUPS:
                raise ValueError(
                    f"preserve_sets has key {group!r}; allowed keys: {list(GROUPS)} ({example})."
                )
            if isinstance(names, str):
                names = [names]
            if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(
                    f"preserve_sets[{group!r}]={names!r} must be a non-empty list of dataset names ({example})."
                )
            cleaned[group] = list(dict.fromkeys(names))  # de-duplicated, order kept
        self.preserve_sets = cleaned

    def preserve_set_names(self, group: str) -> list[str]:
        """The preserve datasets feeding ``group``'s preserve Fisher (``projector`` falls back to ``vision``)."""
        key = group if group in self.preserve_sets else (VISION if group == PROJECTOR else group)
        if key not in self.preserve_sets:
            raise ValueError(
                f"The mask covers {group!r} parameters but preserve_sets has no {key!r} entry (keys: "
                f"{sorted(self.preserve_sets)}). Add one, e.g. preserve_sets={{..., {key!r}: ['retain']}}."
            )
        return self.preserve_sets[key]

    # -------------------------------------------------------------------------------------------------- targeting
    def resolve_targets(self, model: nn.Module) -> dict[str, str]:
        """Map every covered parameter name (as in ``model.named_parameters()``) to its group.

        Covered = selected by ``target_modules``, not by ``exclude_modules``, and ``requires_grad=True``. On a PEFT
        model the trainable parameters are the adapter ones, so those are covered under their real names. Parameters
        outside the vision / projector / language parts of a VLM (if any) are reported as ``"language"`` when a
        regex or list selects them. Raises a ValueError when nothing is covered.
        """
        groups = parameter_groups(model)
        is_preset = isinstance(self.target_modules, str) and self.target_modules in PRESETS
        preset = self.target_modules if is_preset else None
        if preset in ("vision", "both") and not any(g in (VISION, PROJECTOR) for g in groups.values()):
            raise ValueError(
                f"preset {preset!r} covers the vision tower and projector. "
                + str(unknown_architecture_error(model, "vision tower"))
            )
        covered: dict[str, str] = {}
        matched_frozen: list[str] = []
        for name, param in model.named_parameters():
            group = groups[name]
            if not self._selected(name, group, self.target_modules, preset_ok=True):
                continue
            if self.exclude_modules is not None and self._selected(name, group, self.exclude_modules, preset_ok=False):
                continue
            if not param.requires_grad:
                matched_frozen.append(name)
                continue
            covered[name] = group or LANGUAGE
        if not covered:
            examples = [name for name, _ in model.named_parameters()][:5]
            trainable = [name for name, p in model.named_parameters() if p.requires_grad][:5]
            what = f"preset {preset!r}" if preset else f"target_modules={self.target_modules!r}"
            extra = f" and exclude_modules={self.exclude_modules!r}" if self.exclude_modules is not None else ""
            reason = (
                f"{len(matched_frozen)} matching parameter(s) have requires_grad=False (e.g. {matched_frozen[:3]}); "
                f"trainable parameters are e.g. {trainable}. On a PEFT model only the adapter parameters are "
                "trainable: put the adapters where the mask should act, or target them."
                if matched_frozen else "no parameter name matches."
            )
            raise ValueError(
                f"{what}{extra} covers no parameter of {type(model).__name__}: {reason} Example parameter names: "
                f"{examples}."
            )
        return covered

    @staticmethod
    def _selected(name: str, group: str | None, selector: str | list[str], preset_ok: bool) -> bool:
        if preset_ok and isinstance(selector, str) and selector in PRESETS:
            return group in PRESETS[selector]
        candidates = _candidate_names(name)
        if isinstance(selector, str):
            return any(re.fullmatch(selector, candidate) for candidate in candidates)
        return any(c == s or c.endswith("." + s) for c in candidates for s in selector)

    # ---------------------------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict."""
        return asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``saliency_mask_config.json`` into ``save_directory`` (created if needed), atomically.

        Extra keyword arguments (e.g. ``max_shard_size`` from `push_to_hub`) are accepted and ignored.
        """
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={str(save_directory)!r} is a file; pass a directory.")
        os.makedirs(save_directory, exist_ok=True)
        atomic_write_text(os.path.join(save_directory, CONFIG_NAME), self.to_json_string())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SaliencyMaskConfig:
        """Build a config from a dict, dropping (with a warning) keys this version does not know."""
        mask_type = data.get("mask_type", MASK_TYPE)
        if mask_type != MASK_TYPE:
            raise ValueError(f"This is not a saliency-mask config: mask_type={mask_type!r} (expected {MASK_TYPE!r}).")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(
                f"Ignoring unknown SaliencyMaskConfig keys {unknown} (written by a newer hf_unlearn version "
                f"{data.get('hf_unlearn_version')!r}?).",
                stacklevel=2,
            )
        return cls(**{key: value for key, value in data.items() if key in known})

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any
    ) -> SaliencyMaskConfig:
        """Load from a local directory (or the JSON file itself) or a Hub repo (``hf_hub_download`` kwargs allowed)."""
        path = resolve_file(path_or_repo_id, CONFIG_NAME, subfolder, **hub_kwargs)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MaskFileError(path, f"is not valid JSON ({err}): it is truncated or damaged.") from None
        if not isinstance(data, dict):
            raise MaskFileError(path, "does not hold a JSON object.")
        _check_written_by_compatible_version(path, data.get("hf_unlearn_version"))
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise MaskFileError(path, f"holds an invalid mask config ({err})") from None

    def push_to_hub(self, repo_id: str, *, subfolder: str | None = None, **kwargs: Any):
        """Push ``saliency_mask_config.json`` to a Hub repo (`PushToHubMixin.push_to_hub` kwargs allowed).

        With ``subfolder`` the file goes into that folder of the repo (e.g. next to the unlearned model's weights).
        """
        return push_folder(self, repo_id, subfolder=subfolder, **kwargs)


def _check_written_by_compatible_version(path: str, written_by: Any) -> None:
    """A config from a newer minor (or major) version may carry semantics this version would silently get wrong."""
    from packaging.version import InvalidVersion, Version

    if written_by is None:
        return
    try:
        theirs, ours = Version(str(written_by)), Version(__version__)
    except InvalidVersion:
        raise MaskFileError(path, f"names hf_unlearn_version={written_by!r}, which is not a version number: the file "
                                  "is damaged or was not written by hf_unlearn.") from None
    if theirs.release[:2] > ours.release[:2]:
        raise MaskFileError(path, f"was written by hf_unlearn {theirs}, newer than this {ours}: its format or "
                                  "settings may mean something this version does not know.",
                            f"Upgrade hf_unlearn to >= {theirs.major}.{theirs.minor} (pip install -U hf_unlearn), or "
                            "recompute the mask with this version.")


def _candidate_names(name: str) -> list[str]:
    """The parameter name and the names of its containing modules, raw and without wrapper prefixes."""
    out: dict[str, None] = {}
    for full in (name, canonical_parameter_name(name)):
        parts = full.split(".")
        for end in range(len(parts), 0, -1):
            out[".".join(parts[:end])] = None
    return list(out)


# ------------------------------------------------------------------------------------------------- shared file I/O
def resolve_file(
    path_or_repo_id: str | os.PathLike, filename: str, subfolder: str | None = None, **hub_kwargs: Any
) -> str:
    """Local path of ``filename`` in a directory, or downloaded from the Hub repo ``path_or_repo_id``."""
    path = os.fspath(path_or_repo_id)
    if os.path.isfile(path) and os.path.basename(path) == filename and not subfolder:
        return path
    local_dir = os.path.join(path, subfolder) if subfolder else path
    if os.path.isdir(local_dir):
        candidate = os.path.join(local_dir, filename)
        if not os.path.isfile(candidate):
            raise FileNotFoundError(f"No {filename} in the directory {local_dir!r}; was it saved with save_pretrained?")
        return candidate
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(path, filename, subfolder=subfolder, **hub_kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with what was tried
        raise OSError(
            f"Could not load {filename!r} from {path!r}{f' (subfolder {subfolder!r})' if subfolder else ''}: it is "
            f"not a local directory and the Hub download failed ({type(err).__name__}: {err}). Pass a directory "
            "written by save_pretrained or an existing Hub repo id."
        ) from err


def push_folder(obj: PushToHubMixin, repo_id: str, *, subfolder: str | None = None, **kwargs: Any):
    """`PushToHubMixin.push_to_hub`, or, with ``subfolder``, ``save_pretrained`` + ``upload_folder`` into it."""

    obj = redacted_for_hub(obj)  # user-named preserve sets are published as preserve_set_<i>
    if subfolder is None:
        return PushToHubMixin.push_to_hub(obj, repo_id, **kwargs)
    from huggingface_hub import HfApi

    unknown = set(kwargs) - {"commit_message", "commit_description", "private", "token", "revision", "create_pr"}
    if unknown:
        raise TypeError(f"push_to_hub(subfolder=...) got unexpected keyword arguments {sorted(unknown)}.")
    api = HfApi()
    token = kwargs.get("token")
    repo_id = api.create_repo(repo_id, private=kwargs.get("private"), token=token, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp_dir:
        obj.save_pretrained(tmp_dir)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp_dir,
            path_in_repo=subfolder,
            commit_message=kwargs.get("commit_message") or f"Upload {type(obj).__name__}",
            commit_description=kwargs.get("commit_description"),
            token=token,
            revision=kwargs.get("revision"),
            create_pr=kwargs.get("create_pr", False),
        )


def redacted_for_hub(obj):
    """``obj`` (a ``SaliencyMask`` or ``SaliencyMaskConfig``) as it may be published: a shallow copy whose
    preserve-set names are replaced (``obj`` itself when nothing needs replacing)."""
    import copy

    config = obj if isinstance(obj, SaliencyMaskConfig) else getattr(obj, "config", None)
    summary = getattr(obj, "scores_summary", None)
    config_dict = config.to_dict() if config is not None else None
    mapping = preserve_name_map(config_dict, summary)
    if not mapping:
        return obj
    new_config = None if config is None else SaliencyMaskConfig.from_dict(redact_preserve_names(config_dict, mapping))
    if isinstance(obj, SaliencyMaskConfig):
        return new_config
    out = copy.copy(obj)
    out.config = new_config
    out.scores_summary = redact_preserve_names(summary, mapping)
    return out
