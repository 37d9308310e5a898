"""A cheap evaluation on fixed subsets of named sets, cheap enough to run every few optimizer steps.

``Probe`` keeps a seeded, fixed subset of rows of each named set (``forget``, ``retain``, ``holdout``, ...) and
scores them with the collator training uses, so its numbers are those of the training loss:

* ``<set>_nll``: mean over rows of each row's answer NLL per token (the LOSS attack's score, negated);
* ``<set>_acc``: multiple-choice accuracy by option likelihood, for sets whose rows carry ``options`` and
  ``label`` (the common schema; the same rule as ``Evaluator``);
* ``mia_auc``: the loss attack's ROC-AUC, members = the ``forget`` rows, non-members = the ``holdout`` rows
  (0.5: the forget rows look like rows the model never saw).

One probe serves the unlearning callback's stop rule, its no-op warning, its "what moved" summary and the metrics
it logs to TensorBoard / W&B (``hf_unlearn.trainers.callbacks``). The fixed subset is what makes successive probes
comparable; it is small, so its numbers move in steps (1/32 for accuracy with 32 rows): it tells *when* to stop,
the ``Evaluator`` measures the result.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .. import losses
from ..data.collators import IGNORE_INDEX
from ..models import unwrap_model
from . import metrics
from .evaluator import to_model_device

Rows = Sequence[dict[str, Any]]


def select_rows(dataset: Any, max_rows: int, seed: int = 0) -> list[dict[str, Any]]:
    """A seeded, fixed subset of at most ``max_rows`` rows of ``dataset`` (in dataset order), as row dicts."""
    n = len(dataset)
    if max_rows >= n:
        picks = range(n)
    else:
        picks = sorted(np.random.default_rng(seed).choice(n, size=max_rows, replace=False).tolist())
    return [dict(dataset[int(i)]) for i in picks]


def has_options(row: Mapping[str, Any]) -> bool:
    """Whether a row can be scored as a multiple-choice question (common-schema ``options`` and ``label``)."""
    return (isinstance(row.get("options"), (list, tuple)) and len(row["options"]) > 1
            and isinstance(row.get("label"), int) and "answer" in row and "messages" not in row)


class Probe:
    """Score fixed subsets of named sets with a model: per-set NLL, option accuracy and the forget-vs-holdout AUC.

    Args:
        sets: ``{name: dataset}``; each dataset is anything with ``len`` and integer indexing returning row dicts
            (a ``datasets.Dataset``, a list of dicts). Empty or ``None`` sets are left out.
        collate: rows -> batch with ``labels`` (the trainer's row collator).
        prepare: batch -> batch on the model's device (e.g. ``Trainer._prepare_inputs``); default: move tensors to
            the model's device (floating tensors also to its dtype).
        model_inputs: batch -> the keyword arguments of the model (drops per-row values the trainers attach).
        max_rows: rows kept per set (a seeded subset when a set is larger).
        batch_size: rows per forward pass (each multiple-choice row expands to one row per option).
        seed: seed of the subset.
        members, nonmembers: the set names compared by ``mia_auc``.
        show_progress: a tqdm bar per set.
    """

    def __init__(
        self,
        sets: Mapping[str, Any],
        collate: Callable[[list[dict]], Mapping[str, Any]],
        *,
        prepare: Callable[[dict], dict] | None = None,
        model_inputs: Callable[[dict], dict] | None = None,
        max_rows: int = 32,
        batch_size: int = 8,
        seed: int = 0,
        members: str = "forget",
        nonmembers: str = "holdout",
        show_progress: bool = False,
    ):
        if max_rows < 1 or batch_size < 1:
            raise ValueError(f"max_rows and batch_size must be >= 1, got {max_rows} and {batch_size}.")
        self.rows = {name: select_rows(ds, max_rows, seed) for name, ds in sets.items()
                     if ds is not None and len(ds) > 0}
        self.collate, self.batch_size = collate, batch_size
        self.prepare = prepare
        self.model_inputs = model_inputs or (lambda batch: batch)
        self.members, self.nonmembers = members, nonmembers
        self.show_progress = show_progress

    @property
    def sizes(self) -> dict[str, int]:
        """Rows scored per set."""
        return {name: len(rows) for name, rows in self.rows.items()}

    # ---------------------------------------------------------------------------------------------------- scoring
    def _batches(self, rows: Rows, desc: str) -> Iterable[Rows]:
        starts = range(0, len(rows), self.batch_size)
        if self.show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, leave=False, unit="batch")
        for start in starts:
            yield rows[start:start + self.batch_size]

    def _log_probs(self, model, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed answer log-prob and number of answer tokens per row, both (B,)."""
        batch = dict(self.collate(list(rows)))
        batch = self.model_inputs(dict(self.prepare(batch) if self.prepare else to_model_device(batch, model)))
        labels = batch.pop("labels")
        kwargs = {}
        if _accepts_logits_to_keep(model):
            # Only answer positions need logits: keep the tail from the earliest answer token on (a VLM prompt holds
            # hundreds of image tokens; their (T, V) logits are most of the forward pass's memory).
            first = int((labels != IGNORE_INDEX).float().argmax(dim=1).min().item())
            kwargs["logits_to_keep"] = labels.shape[1] - max(first - 1, 0)
            labels = labels[:, labels.shape[1] - kwargs["logits_to_keep"]:]
        logits = model(**batch, **kwargs).logits  # (B, K, V)
        return losses.sequence_log_probs(logits, labels)

    def row_nll(self, model, name: str) -> np.ndarray:
        """(N,) answer NLL per token of each probe row of set ``name``."""
        values = []
        for chunk in self._batches(self.rows[name], f"probe {name}"):
            logps, counts = self._log_probs(model, chunk)
            values.append((-logps / counts.clamp(min=1)).float().cpu().numpy())
        return np.concatenate(values)

    def accuracy(self, model, name: str) -> float | None:
        """Multiple-choice accuracy on the probe rows of ``name`` that have options; None when none has."""
        rows = [r for r in self.rows[name] if has_options(r)]
        if not rows:
            return None
        expanded = [{**row, "answer": option} for row in rows for option in row["options"]]
        scores = []
        for chunk in self._batches(expanded, f"probe {name} options"):
            logps, counts = self._log_probs(model, chunk)
            scores.append((logps / counts.clamp(min=1)).float().cpu().numpy())  # mean log-prob per option token
        flat = np.concatenate(scores)
        offsets = np.cumsum([0] + [len(r["options"]) for r in rows])
        width = max(len(r["options"]) for r in rows)
        table = np.full((len(rows), width), -np.inf)
        for i in range(len(rows)):
            table[i, : offsets[i + 1] - offsets[i]] = flat[offsets[i]:offsets[i + 1]]
        return metrics.mcq_accuracy(table, [r["label"] for r in rows])

    @torch.no_grad()
    def evaluate(self, model, accuracy: bool = True) -> dict[str, float]:
        """``{<set>_nll, <set>_acc (sets with options), mia_auc (when both sets exist)}`` for ``model``.

        The model runs in eval mode (no dropout) and is put back in its previous mode afterwards.
        """
        was_training = model.training
        model.eval()
        try:
            out: dict[str, float] = {}
            nll: dict[str, np.ndarray] = {}
            for name in self.rows:
                nll[name] = self.row_nll(model, name)
                out[f"{name}_nll"] = float(nll[name].mean())
                if accuracy:
                    acc = self.accuracy(model, name)
                    if acc is not None:
                        out[f"{name}_acc"] = acc
            if self.members in nll and self.nonmembers in nll:
                if np.isfinite(nll[self.members]).all() and np.isfinite(nll[self.nonmembers]).all():
                    out["mia_auc"] = metrics.roc_auc(-nll[self.members], -nll[self.nonmembers])
            return out
        finally:
            model.train(was_training)


def _accepts_logits_to_keep(model) -> bool:
    forward = getattr(unwrap_model(model), "forward", None)
    try:
        return forward is not None and "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
