"""Model cards for unlearned models, built so that nothing about the forget set can reach the Hub.

``build_model_card`` renders ``templates/model_card.md`` with ``huggingface_hub.ModelCard.from_template``: YAML
metadata (``library_name``, ``tags``, ``base_model``, ``pipeline_tag``) and sections for the method and its citation,
the settings, the saliency mask, before/after metrics, how to load the model and a privacy note.

Privacy is enforced here rather than trusted to callers: every settings dict (and the mask config) goes through
``safe_settings``, which keeps only method knobs (numbers, booleans, short lowercase enum values) and drops anything
that can name a file, a directory, a data set, a run or a token; ``base_model``, the model id and data set ids are
published only when they are Hub ids, never local paths. Rendering needs no network (``HF_HUB_OFFLINE=1`` is fine).
"""

from __future__ import annotations

import enum
import math
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

__all__ = ["build_model_card", "safe_settings"]

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"

# A key containing any of these (case-insensitive) can hold a location, a data set, a run or a secret: never published.
_UNSAFE_KEY_PARTS = (
    "path", "dir", "dataset", "data_file", "file", "token", "hub", "name", "output", "logging", "report_to", "url",
    "entity", "project", "resume_from_checkpoint", "deepspeed", "secret", "password", "key_", "api_key", "email",
)
_SAFE_KEY = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")  # config field names are snake_case
# Strings are kept only when they look like an enum value ("npo", "cosine", "adamw_torch", "language_model"):
# lowercase, no spaces or separators. Names of people or places are almost never written that way.
_ENUM_VALUE = re.compile(r"^[a-z0-9][a-z0-9_.+-]{0,39}$")
_FILE_SUFFIXES = {
    ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".png", ".jpg", ".jpeg", ".webp", ".gif",
    ".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".yaml", ".yml", ".zip", ".tar", ".gz", ".md", ".py", ".pkl",
}
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,199}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,39}$")
_ARXIV_ID = re.compile(r"^\d{4}\.\d{4,5}(v\d+)?$")
_MAX_LIST = 16
_DEFAULT_LIBRARIES = ("hf_unlearn", "transformers", "torch", "peft", "huggingface_hub", "deepspeed")


def _is_safe_key(key: Any) -> bool:
    if not isinstance(key, str) or not _SAFE_KEY.match(key):
        return False
    lowered = key.lower()
    return not any(part in lowered for part in _UNSAFE_KEY_PARTS)


def _is_safe_str(value: str) -> bool:
    return bool(_ENUM_VALUE.match(value)) and os.path.splitext(value)[1] not in _FILE_SUFFIXES


def _safe_value(value: Any) -> Any:
    """The value if it is safe to publish, else ``_DROP``. Enums become their value; lists keep only safe scalars."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return value if _is_safe_str(value) else _DROP
    if isinstance(value, (list, tuple)):
        if len(value) > _MAX_LIST:
            return _DROP
        items = [_safe_value(v) for v in value]
        if any(v is _DROP or isinstance(v, (list, dict)) for v in items):
            return _DROP  # all or nothing: a half-list would misstate the setting
        return items
    if isinstance(value, dict):
        nested = safe_settings(value)
        return nested if nested else _DROP
    return _DROP  # objects, bytes, tensors...: nothing to gain, something to leak


_DROP = object()


def safe_settings(config_dict: dict) -> dict:
    """Keep the publishable method knobs of a config dict and drop everything that could leak the forget set.

    Kept: snake_case keys whose values are numbers, booleans, short lowercase enum-like strings, short
    lists of those, or nested dicts of those (filtered the same way). Dropped: ``None`` values; keys containing
    ``path``, ``dir``, ``dataset``, ``file``, ``token``, ``hub``, ``name``, ``output``, ``logging``, ``url``, ... (so
    ``output_dir``, ``logging_dir``, ``run_name``, ``hub_model_id``, ``forget_dataset``, ``model_name_or_path``);
    strings with spaces, capitals, slashes or a file suffix (paths, free text, entity names).

    Args:
        config_dict: e.g. ``dataclasses.asdict(config)`` or ``TrainingArguments.to_dict()``.

    Returns:
        A new dict, in the input's key order.
    """
    if not isinstance(config_dict, dict):
        raise TypeError(f"safe_settings expects a dict (e.g. config.to_dict()), got {type(config_dict).__name__}.")
    out: dict[str, Any] = {}
    for key, value in config_dict.items():
        if not _is_safe_key(key) or value is None:
            continue
        kept = _safe_value(value)
        if kept is not _DROP and kept is not None:
            out[key] = kept
    return out


def _hub_id(value: str | None) -> str | None:
    """``value`` if it is a Hub repo id and not a local path, else None (a local path must never be published)."""
    if not isinstance(value, str) or not value or os.path.exists(value) or value.startswith(("~", ".")):
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def _fmt(value: Any) -> str:
    """A table cell: floats to at most 4 decimals (``0.8125``, ``1.5``, ``12.3457``), ``—`` for missing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-4):
            return f"{value:.4g}"
        return f"{value:.4f}".rstrip("0").rstrip(".") or "0"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in d.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"`{prefix}{key}`", _fmt(value)))
    return rows


def _flatten_metrics(metrics: dict | None, which: str, prefix: str = "") -> dict[str, float | int]:
    """``{"forget": {"rouge": 0.1}}`` -> ``{"forget/rouge": 0.1}``; anything but numbers raises."""
    out: dict[str, float | int] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str) or not _MODULE_NAME.match(key.replace("/", ".").replace("-", "_")):
            raise ValueError(f"metrics_{which}: metric name {key!r} is not a plain identifier; use names such as "
                             "'forget_rouge' or 'retain/accuracy'.")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten_metrics(value, which, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
        elif value is None:
            continue
        else:
            raise ValueError(f"metrics_{which}[{name!r}] is {type(value).__name__}, but metrics must be numbers "
                             "(pass the aggregated score, never per-sample outputs).")
    return out


def _metric_rows(before: dict | None, after: dict | None) -> list[tuple[str, str, str]]:
    b, a = _flatten_metrics(before, "before"), _flatten_metrics(after, "after")
    names = list(b) + [n for n in a if n not in b]
    return [(f"`{n}`", _fmt(b.get(n)), _fmt(a.get(n))) for n in names]


def _mask_context(mask_summary: dict | None) -> dict | None:
    if not mask_summary:
        return None
    if not isinstance(mask_summary, dict):
        raise TypeError("mask_summary must be a dict like {'config': {...}, 'selected_fraction': {'total': 0.12, "
                        f"'by_module': {{...}}}}, got {type(mask_summary).__name__}.")
    # The fraction allowed to move; cards written before 0.1.0 stored it under the misnomer "sparsity".
    key = "selected_fraction" if "selected_fraction" in mask_summary else "sparsity"
    selected = mask_summary.get(key) or {}
    total = selected.get("total")
    if total is not None and not isinstance(total, (int, float)):
        raise ValueError(f"mask_summary[{key!r}]['total'] must be a number, got {total!r}.")
    modules = [(f"`{m}`", _fmt(v)) for m, v in (selected.get("by_module") or {}).items()
               if isinstance(m, str) and _MODULE_NAME.match(m) and isinstance(v, (int, float))]
    return {"config_rows": _flatten(safe_settings(mask_summary.get("config") or {})),
            "total": None if total is None else _fmt(float(total)),
            "sparsity": None if total is None else _fmt(1.0 - float(total)), "module_rows": modules}


def _paper_context(paper: dict | None) -> dict | None:
    if not paper:
        return None
    if not isinstance(paper, dict) or not paper.get("title"):
        raise ValueError("paper must be a dict with at least 'title' (and optionally 'id', an arXiv id such as "
                         f"'2404.05868', and 'citation', a BibTeX entry); got {paper!r}.")
    paper_id = str(paper.get("id") or "")
    return {"title": str(paper["title"]), "citation": (paper.get("citation") or "").strip() or None,
            "url": f"https://huggingface.co/papers/{paper_id}" if _ARXIV_ID.match(paper_id) else None}


def _library_versions(given: dict | None) -> list[tuple[str, str]]:
    if given is None:
        given = {}
        for lib in _DEFAULT_LIBRARIES:
            try:
                given[lib] = metadata.version(lib)
            except metadata.PackageNotFoundError:
                continue
    return [(k, v) for k, v in given.items()
            if isinstance(k, str) and _TAG.match(k) and isinstance(v, str) and _VERSION.match(v)]


def _safe_tags(tags: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for tag in tags:
        if isinstance(tag, str) and _TAG.match(tag) and tag not in seen:
            seen.append(tag)
    return seen


def build_model_card(
    *,
    method_name: str,
    method_tag: str,
    paper: dict | None,
    base_model: str | None,
    model_name: str | None,
    settings: dict,
    mask_summary: dict | None,
    metrics_before: dict | None,
    metrics_after: dict | None,
    dataset_ids: list[str] | None = None,
    include_dataset_ids: bool = False,
    tags: list[str] | None = None,
    pipeline_tag: str | None = None,
    library_versions: dict | None = None,
) -> ModelCard:
    """Render the model card of an unlearned model.

    Args:
        method_name: human-readable method, e.g. ``"NPO"``.
        method_tag: Hub tag of the method, e.g. ``"npo"``; added to ``tags`` with ``hf_unlearn`` and ``unlearning``.
        paper: ``{"title", "id" (arXiv id), "citation" (BibTeX)}`` of the method, or None.
        base_model: Hub id of the model that was unlearned; a local path is dropped.
        model_name: Hub id of this model (used in the "How to load" snippet and the title); a path is dropped.
        settings: method knobs; filtered again through ``safe_settings``.
        mask_summary: ``{"config": {...}, "selected_fraction": {"total": 0.12, "by_module": {"module.name": 0.3}}}``
            (the fractions allowed to move; the legacy key ``"sparsity"`` is read with the same meaning).
        metrics_before / metrics_after: ``{metric: number}`` (nested dicts are flattened with ``/``).
        dataset_ids: Hub ids of the data sets; published only if ``include_dataset_ids`` (local paths never).
        tags: extra Hub tags.
        pipeline_tag: e.g. ``"image-text-to-text"`` (the default for the snippet) or ``"text-generation"``.
        library_versions: ``{library: version}``; by default read from the installed packages.

    Returns:
        A ``huggingface_hub.ModelCard``; ``card.save(path)`` or ``card.push_to_hub(repo_id)``.
    """
    if not method_name or not method_tag:
        raise ValueError("build_model_card needs method_name (e.g. 'NPO') and method_tag (e.g. 'npo').")
    if not _TAG.match(method_tag):
        raise ValueError(f"method_tag {method_tag!r} is not a valid Hub tag; use lowercase letters, digits and '-'.")
    if not isinstance(settings, dict):
        raise TypeError(f"settings must be a dict of method knobs, got {type(settings).__name__}.")

    base = _hub_id(base_model)
    model_id = _hub_id(model_name)
    datasets = [d for d in (dataset_ids or []) if _hub_id(d)] if include_dataset_ids else []
    card_data = ModelCardData(
        library_name="transformers",
        base_model=base,
        datasets=datasets or None,
        pipeline_tag=pipeline_tag,
        tags=_safe_tags(["hf_unlearn", "unlearning", method_tag, *(tags or [])]),
    )
    text_only = pipeline_tag == "text-generation"
    context = {
        "title": f"{model_id.split('/')[-1]}" if model_id else f"{method_name} unlearned model",
        "method_name": _fmt(method_name),
        "method_tag": method_tag,
        "paper": _paper_context(paper),
        "base_model": base,
        "datasets": datasets,
        "settings_rows": _flatten(safe_settings(settings)),
        "mask": _mask_context(mask_summary),
        "metric_rows": _metric_rows(metrics_before, metrics_after),
        "model_id": model_id or "your-username/your-model",
        "model_class": "AutoModelForCausalLM" if text_only else "AutoModelForImageTextToText",
        "processor_class": "AutoTokenizer" if text_only else "AutoProcessor",
        "processor_var": "tokenizer" if text_only else "processor",
        "versions": _library_versions(library_versions),
    }
    card = ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **context)
    # Optional sections leave runs of blank lines behind; one blank line is enough in Markdown.
    return ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)))
