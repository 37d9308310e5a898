"""General ability through EleutherAI's lm-evaluation-harness (optional: ``pip install 'hf_unlearn[lm-eval]'``).

``general_ability(model, tokenizer, ["mmlu", "arc_easy"])`` wraps the in-memory model in lm-eval's ``HFLM`` and runs
``lm_eval.simple_evaluate``; the result is flattened to ``{"<task>/<metric>": value}`` (``"arc_easy/acc"``), the
same keys as OpenUnlearning's bridge. The tasks' data come from the Hub, so this needs network access or a populated
``HF_DATASETS_CACHE``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

INSTALL_HINT = "pip install 'hf_unlearn[lm-eval]'"


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        raise ImportError(f"general_ability needs lm-evaluation-harness: `{INSTALL_HINT}` ({err}).") from err
    return lm_eval, HFLM


def summarize(results: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, float]:
    """``{"<task>/<metric>": value}`` from ``simple_evaluate``'s output: group-level metrics for a task group
    (e.g. ``mmlu``), the task's own otherwise; lm-eval's ``",none"`` filter suffix, ``alias`` and ``sample_len``
    entries dropped."""
    out: dict[str, float] = {}
    for task in tasks:
        metrics = (results.get("groups") or {}).get(task) or (results.get("results") or {}).get(task)
        if metrics is None:
            raise KeyError(f"lm-eval returned no results for task {task!r}; results cover "
                           f"{sorted(results.get('results') or {})}.")
        for name, value in metrics.items():
            if name in ("alias", "sample_len") or isinstance(value, str):  # labels and sizes, not metrics
                continue
            out[f"{task}/{name.split(',', 1)[0].strip()}"] = float(value)
    return out


def general_ability(model, tokenizer, tasks: Sequence[str], batch_size: int = 8, limit: int | float | None = None,
                    **simple_evaluate_kwargs: Any) -> dict[str, float]:
    """Run lm-eval ``tasks`` on an in-memory ``transformers`` causal LM; see the module doc."""
    lm_eval, HFLM = _import_lm_eval()
    tasks = list(tasks)
    if not tasks:
        raise ValueError("Name at least one lm-eval task, e.g. tasks=['arc_easy'].")
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, **simple_evaluate_kwargs)
    finally:
        model.train(was_training)
    return summarize(results, tasks)
