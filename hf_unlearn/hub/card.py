"""Model cards of unlearned models: ``build_model_card`` renders, ``render_card`` renders from saved card inputs.

``build_model_card`` renders ``templates/model_card.md`` with ``huggingface_hub.ModelCard.from_template``: YAML
metadata (``library_name``, ``tags``, ``base_model``, ``pipeline_tag``) and sections for the method and its citation,
the settings, the saliency mask, before/after metrics, how to load the model and a privacy note. Every value goes
through the filters of ``hf_unlearn.hub.safety`` on the way in, so a card never names the forget set, a local path or
a run. Rendering needs no network (``HF_HUB_OFFLINE=1`` is fine).

A trainer's ``save_model`` stores the (already filtered) inputs as ``hf_unlearn_card.json`` next to the model, so
``hf-unlearn push`` can render the card for a repo id later (``read_card_inputs`` + ``render_card``).
"""

from __future__ import annotations

import json
import math
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..saliency.redaction import preserve_name_map, redact_preserve_names
from .safety import MODULE_NAME, TAG, VERSION, hub_id, safe_settings, safe_tags

__all__ = ["CARD_INPUTS_NAME", "CARD_NAME", "build_model_card", "check_license", "license_of", "mask_summary",
           "read_card_inputs", "render_card"]

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "templates" / "model_card.md"
CARD_NAME = "README.md"
CARD_INPUTS_NAME = "hf_unlearn_card.json"
CARD_INPUT_KEYS = ("method_name", "method_tag", "paper", "base_model", "pipeline_tag", "settings", "mask_summary",
                   "metrics_before", "metrics_after", "tags", "license", "library_name")
LIBRARY_NAMES = ("transformers", "peft")  # a full model, or a PEFT adapter (the Hub's loader for each)
# A Hub license id ("apache-2.0", "mit", "llama3.1", "other"): lowercase, no spaces; anything else is not published.
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")
# model-index entries: the task and "dataset" every before/after metric is reported under.
EVAL_TASK_NAME = "Machine unlearning"
EVAL_DATASET_TYPE = "unlearning-evaluation"
EVAL_DATASET_NAME = "Forget / retain evaluation"
STAGES = {"before": "before unlearning", "after": "after unlearning"}
_ARXIV_ID = re.compile(r"^\d{4}\.\d{4,5}(v\d+)?$")
_DEFAULT_LIBRARIES = ("hf_unlearn", "transformers", "torch", "peft", "huggingface_hub", "deepspeed")
_MAX_MODULE_ROWS = 24  # more modules than this: the card's mask table is per model part instead


def format_value(value: Any) -> str:
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
        return ", ".join(format_value(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in d.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"`{prefix}{key}`", format_value(value)))
    return rows


def flatten_metrics(metrics: dict | None, which: str, prefix: str = "") -> dict[str, float | int]:
    """``{"forget": {"rouge": 0.1}}`` -> ``{"forget/rouge": 0.1}``; anything but numbers raises."""
    out: dict[str, float | int] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str) or not MODULE_NAME.match(key.replace("/", ".").replace("-", "_")):
            raise ValueError(f"metrics_{which}: metric name {key!r} is not a plain identifier; use names such as "
                             "'forget_rouge' or 'retain/accuracy'.")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, which, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
        elif value is None:
            continue
        else:
            raise ValueError(f"metrics_{which}[{name!r}] is {type(value).__name__}, but metrics must be numbers "
                             "(pass the aggregated score, never per-sample outputs).")
    return out


def _metric_rows(before: dict | None, after: dict | None) -> list[tuple[str, str, str]]:
    b, a = flatten_metrics(before, "before"), flatten_metrics(after, "after")
    names = list(b) + [n for n in a if n not in b]
    return [(f"`{n}`", format_value(b.get(n)), format_value(a.get(n))) for n in names]


def check_license(value: str) -> str:
    """``value`` if it is a Hub license id, else ``ValueError``."""
    if not isinstance(value, str) or not _LICENSE.match(value):
        raise ValueError(f"license {value!r} is not a Hub license id such as 'apache-2.0', 'mit', 'llama3.1' or "
                         "'other' (lowercase, no spaces).")
    return value


def _metric_type(name: str) -> str:
    """The model-index metric type of one of the Evaluator's names (``forget_vqa_acc`` -> ``accuracy``)."""
    base = name.rsplit("/", 1)[-1].lower()
    if base.endswith(("_acc", "accuracy")):
        return "accuracy"
    if "auc" in base:
        return "roc_auc"
    if "rouge" in base:
        return "rouge"
    return base


def _eval_results(before: dict | None, after: dict | None, pipeline_tag: str | None) -> list[EvalResult]:
    """One ``EvalResult`` per metric and stage: ``metric_name`` ``"<name> (before unlearning)"``, ``metric_config``
    ``"before"`` / ``"after"``, so the Hub's evaluation widget shows both and ``eval_results`` round-trips."""
    results = []
    for stage, metrics in (("before", before), ("after", after)):
        for name, value in flatten_metrics(metrics, stage).items():
            if not math.isfinite(float(value)):
                continue  # YAML has no NaN the Hub accepts
            results.append(EvalResult(
                task_type=pipeline_tag or "text-generation", task_name=EVAL_TASK_NAME,
                dataset_type=EVAL_DATASET_TYPE, dataset_name=EVAL_DATASET_NAME,
                metric_type=_metric_type(name), metric_name=f"{name} ({STAGES[stage]})", metric_config=stage,
                metric_value=float(value) if isinstance(value, float) else value,
            ))
    return results


def license_of(name_or_path: str | None) -> str | None:
    """The license in the model card of a base model: a local folder's ``README.md``, else the Hub repo's card.

    Only a valid license id comes back (never other card text); ``None`` when unknown, offline or unreachable.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        return None
    local = os.path.join(name_or_path, CARD_NAME)
    try:
        if os.path.isdir(name_or_path):
            card = ModelCard.load(local, ignore_metadata_errors=True) if os.path.isfile(local) else None
        elif hub_id(name_or_path):
            card = ModelCard.load(name_or_path, ignore_metadata_errors=True)
        else:
            card = None
    except Exception:  # noqa: BLE001 - offline, no such repo, no card: the license is unknown
        return None
    value = getattr(getattr(card, "data", None), "license", None)
    return value if isinstance(value, str) and _LICENSE.match(value) else None


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
    modules = [(f"`{m}`", format_value(v)) for m, v in (selected.get("by_module") or {}).items()
               if isinstance(m, str) and MODULE_NAME.match(m) and isinstance(v, (int, float))]
    config = mask_summary.get("config") or {}
    config = redact_preserve_names(config, preserve_name_map(config))  # user-named preserve sets stay local
    return {"config_rows": _flatten(safe_settings(config)),
            "total": None if total is None else format_value(float(total)),
            "sparsity": None if total is None else format_value(1.0 - float(total)), "module_rows": modules}


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
            if isinstance(k, str) and TAG.match(k) and isinstance(v, str) and VERSION.match(v)]


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
    license: str | None = None,
    library_name: str | None = None,
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
        license: Hub license id (``"apache-2.0"``, ``"mit"``, ...), usually the base model's.
        library_name: ``"transformers"`` (a full model, the default) or ``"peft"`` (an adapter: the card's metadata
            says so and "How to load" loads the base, then the adapter).

    The metrics also go into the ``model-index`` metadata (``card.data.eval_results``, one ``EvalResult`` per metric
    and stage), which the Hub shows as evaluation results.

    Returns:
        A ``huggingface_hub.ModelCard``; ``card.save(path)`` or ``card.push_to_hub(repo_id)``.
    """
    if not method_name or not method_tag:
        raise ValueError("build_model_card needs method_name (e.g. 'NPO') and method_tag (e.g. 'npo').")
    if not TAG.match(method_tag):
        raise ValueError(f"method_tag {method_tag!r} is not a valid Hub tag; use lowercase letters, digits and '-'.")
    if not isinstance(settings, dict):
        raise TypeError(f"settings must be a dict of method knobs, got {type(settings).__name__}.")

    library_name = library_name or "transformers"
    if library_name not in LIBRARY_NAMES:
        raise ValueError(f"library_name={library_name!r}; use one of {LIBRARY_NAMES}.")
    base = hub_id(base_model)
    model_id = hub_id(model_name)
    datasets = [d for d in (dataset_ids or []) if hub_id(d)] if include_dataset_ids else []
    eval_results = _eval_results(metrics_before, metrics_after, pipeline_tag)
    card_data = ModelCardData(
        library_name=library_name,
        base_model=base,
        license=check_license(license) if license is not None else None,
        datasets=datasets or None,
        pipeline_tag=pipeline_tag,
        tags=safe_tags(["hf_unlearn", "unlearning", method_tag, *(tags or [])]),
        eval_results=eval_results or None,
        model_name=(model_id.split("/")[-1] if model_id else f"{method_tag}-unlearned") if eval_results else None,
    )
    text_only = pipeline_tag == "text-generation"
    context = {
        "title": f"{model_id.split('/')[-1]}" if model_id else f"{method_name} unlearned model",
        "method_name": format_value(method_name),
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
        "is_adapter": library_name == "peft",
        "versions": _library_versions(library_versions),
    }
    card = ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **context)
    # Optional sections leave runs of blank lines behind; one blank line is enough in Markdown.
    return ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)))


# ----------------------------------------------------------------------------------------------------------------
# Card inputs (filtered, JSON) saved next to a model, and rendering from them
# ----------------------------------------------------------------------------------------------------------------
def mask_summary(mask) -> dict:
    """``{"config": ..., "selected_fraction": {"total", "by_module"}}`` of a ``SaliencyMask``, for the card
    (the fractions allowed to move)."""
    rows = mask.sparsity_report(by="module")
    if len(rows) > _MAX_MODULE_ROWS:
        rows = mask.sparsity_report(by="group")
    return {"config": mask.config.to_dict() if mask.config is not None else {},
            "selected_fraction": {"total": mask.selected_fraction,
                                  "by_module": {r["module"]: r["fraction"] for r in rows}}}


def read_card_inputs(folder: str | os.PathLike) -> dict:
    """The card inputs an hf_unlearn trainer saved in ``folder`` (``hf_unlearn_card.json``)."""
    path = os.path.join(os.fspath(folder), CARD_INPUTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {CARD_INPUTS_NAME} in {os.fspath(folder)!r}: it was not saved by an hf_unlearn trainer, so there "
            "is no model card to publish. Save the run with `trainer.save_model()` (hf_unlearn >= 0.1) first."
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as err:  # JSON or UTF-8: say which file, not only where in it
        raise ValueError(f"{CARD_INPUTS_NAME} in {os.fspath(folder)!r} is damaged (not JSON: {err}). Save the run "
                         "again with `trainer.save_model()` to rewrite it.") from None
    if not isinstance(data, dict) or not data.get("method_name") or not data.get("method_tag"):
        raise ValueError(f"{path} is not an hf_unlearn card-inputs file (no method_name / method_tag).")
    return {k: data.get(k) for k in CARD_INPUT_KEYS}


def render_card(inputs: dict, *, model_name: str | None, dataset_ids: list[str] | None = None,
                include_dataset_ids: bool = False, tags: list[str] | None = None):
    """Render the ``ModelCard`` from card inputs (as saved in ``hf_unlearn_card.json``); filters apply again."""
    return build_model_card(
        method_name=inputs["method_name"], method_tag=inputs["method_tag"], paper=inputs.get("paper"),
        base_model=inputs.get("base_model"), model_name=model_name, settings=inputs.get("settings") or {},
        mask_summary=inputs.get("mask_summary"), metrics_before=inputs.get("metrics_before"),
        metrics_after=inputs.get("metrics_after"), dataset_ids=dataset_ids, include_dataset_ids=include_dataset_ids,
        tags=[*(inputs.get("tags") or []), *(tags or [])], pipeline_tag=inputs.get("pipeline_tag"),
        license=inputs.get("license"), library_name=inputs.get("library_name"),
    )
