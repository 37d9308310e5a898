"""``Evaluator``: MLLMU-Bench-style metrics for a model on a benchmark in the common schema.

* **Multiple-choice accuracy by option likelihood**: each of the 4 options is scored as the answer (answer-only
  labels from ``UnlearnDataCollator``, so prompts and image tokens are exactly those of training); the option with the
  highest mean (or summed) answer log-probability wins. Deterministic and free of answer-parsing pitfalls
  (research/benchmarks.md §1.7).
* **ROUGE-L** (F) of greedy generations on the forget VQA split, new tokens only.
* **Membership inference** (LOSS attack): score = -mean answer NLL; members = the forget people's rows, non-members =
  the holdout people's rows (never trained on); ROC-AUC, 0.5 = no signal.

Text-only models are evaluated on the text splits; image splits are skipped with a logged message.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import datasets
import numpy as np
import torch
from transformers import ProcessorMixin
from trl.trainer.utils import pad

from .. import losses
from ..data.collators import IGNORE_INDEX, UnlearnDataCollator
from ..data.schema import MCQ_COLUMNS, REQUIRED_TRAIN_COLUMNS, check_columns
from ..models import unwrap_model
from . import metrics

logger = logging.getLogger(__name__)

MCQ_SPLITS = ("forget_vqa", "forget_qa", "retain_vqa", "retain_qa", "test_vqa", "general")
OPTION_SCORES = ("mean", "sum")
# Per-token inputs besides input_ids that a prompt slice must cut along with it.
_SEQUENCE_KEYS = ("mm_token_type_ids", "token_type_ids")


def _has_images(dataset: datasets.Dataset) -> bool:
    """Whether a split's rows carry images (read from ``kind`` when present, so no image is decoded)."""
    if "kind" in dataset.column_names:
        return bool(set(dataset.unique("kind")) & {"vqa", "general"})
    return "image" in dataset.column_names and len(dataset) > 0 and dataset[0]["image"] is not None


def to_model_device(batch: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Move a batch to the model's device; floating tensors (pixel values) also take the model's dtype."""
    param = next(model.parameters())
    return {k: v.to(param.device, dtype=param.dtype) if torch.is_floating_point(v) else v.to(param.device)
            for k, v in batch.items()}


class Evaluator:
    """Evaluate a (vision-)language model on a benchmark ``DatasetDict`` in the common schema.

    Args:
        model: a ``transformers`` causal LM or vision-language model (LLaVA, Qwen2-VL, Qwen2.5-VL, ...).
        processing_class: its processor (vision-language) or tokenizer (text-only).
        benchmark: splits in the common schema (``hf_unlearn.data.schema``), e.g. from
            ``build_synthetic_benchmark``: forget_vqa, forget_qa, retain_vqa, retain_qa, test_vqa, general,
            holdout_vqa, holdout_qa.
        batch_size: questions per forward pass (each question expands to its 4 options).
        option_score: ``"mean"`` (length-normalised answer log-prob, default) or ``"sum"``.
        max_new_tokens: generation budget for ROUGE-L (answers are short).
        show_progress: show tqdm bars.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processing_class: Any,
        benchmark: datasets.DatasetDict | dict[str, datasets.Dataset],
        batch_size: int = 16,
        option_score: str = "mean",
        max_new_tokens: int = 8,
        show_progress: bool = False,
    ):
        if option_score not in OPTION_SCORES:
            raise ValueError(f"option_score={option_score!r}; use one of {OPTION_SCORES}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model = model
        self.processing_class = processing_class
        self.benchmark = benchmark
        self.batch_size = batch_size
        self.option_score = option_score
        self.max_new_tokens = max_new_tokens
        self.show_progress = show_progress
        self.collator = UnlearnDataCollator(processing_class, answer_only=True)
        is_processor = isinstance(processing_class, ProcessorMixin)
        self.tokenizer = processing_class.tokenizer if is_processor else processing_class
        self.supports_images = getattr(processing_class, "image_processor", None) is not None
        self.skipped: dict[str, str] = {}
        forward = inspect.signature(unwrap_model(model).forward).parameters
        self._can_trim_logits = "logits_to_keep" in forward

    # -------------------------------------------------------------------------------------------------- plumbing
    @contextmanager
    def _eval_mode(self):
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return to_model_device(batch, self.model)

    def _batches(self, dataset: datasets.Dataset, desc: str) -> Iterable[dict[str, list]]:
        starts = range(0, len(dataset), self.batch_size)
        if self.show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, leave=False)
        for start in starts:
            yield dataset[start:start + self.batch_size]

    def _split(self, name: str) -> datasets.Dataset:
        if name not in self.benchmark:
            raise KeyError(f"The benchmark has no split {name!r}; splits found: {sorted(self.benchmark)}.")
        return self.benchmark[name]

    def can_evaluate(self, name: str) -> bool:
        """False (and the reason recorded in ``skipped``) when the split is missing, empty or needs images."""
        if name not in self.benchmark:
            self.skipped[name] = "not in the benchmark"
        elif len(self.benchmark[name]) == 0:
            self.skipped[name] = "empty split"
        elif not self.supports_images and _has_images(self.benchmark[name]):
            self.skipped[name] = ("has images but the processing class has no image processor (text-only model); "
                                  "pass a vision-language model and its processor to evaluate it")
        else:
            return True
        logger.warning("Skipping split %r: %s.", name, self.skipped[name])
        return False

    # -------------------------------------------------------------------------------------------------- scoring
    def _answer_log_probs(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed answer log-prob and answer length per row, both (B,)."""
        batch = self._to_device(self.collator(rows))
        labels = batch.pop("labels")
        kwargs = {}
        if self._can_trim_logits:
            # Only the answer positions need logits: keep the tail from the earliest answer token on (saves the
            # (B, T, V) tensor over hundreds of image tokens on real models).
            first = (labels != IGNORE_INDEX).float().argmax(dim=1).min().item()
            keep = labels.shape[1] - max(first - 1, 0)
            kwargs["logits_to_keep"] = keep
            labels = labels[:, labels.shape[1] - keep:]
        logits = self.model(**batch, **kwargs).logits  # (B, K, V)
        return losses.sequence_log_probs(logits, labels)

    @staticmethod
    def _rows(cols: dict[str, list]) -> list[dict]:
        """Column batch -> rows with only what the collator reads (question, answer, image)."""
        n = len(cols["question"])
        images = cols.get("image") or [None] * n
        return [{"question": cols["question"][i], "answer": cols["answer"][i], "image": images[i]} for i in range(n)]

    def option_scores(self, dataset: datasets.Dataset, desc: str = "options") -> np.ndarray:
        """(N, 4) answer log-probability of every option of every question (mean per token or summed)."""
        check_columns(dataset, MCQ_COLUMNS, desc)
        scores = []
        with self._eval_mode():
            for cols in self._batches(dataset, desc):
                rows = []
                for row, options in zip(self._rows(cols), cols["options"]):
                    rows += [{**row, "answer": option} for option in options]
                logps, counts = self._answer_log_probs(rows)
                values = logps / counts.clamp(min=1) if self.option_score == "mean" else logps
                scores.append(values.float().cpu().numpy().reshape(len(cols["question"]), -1))
        return np.concatenate(scores, axis=0)

    def answer_nll(self, dataset: datasets.Dataset, desc: str = "nll") -> np.ndarray:
        """(N,) mean negative log-likelihood per answer token of each row's ground-truth answer."""
        check_columns(dataset, REQUIRED_TRAIN_COLUMNS, desc)
        values = []
        with self._eval_mode():
            for cols in self._batches(dataset, desc):
                logps, counts = self._answer_log_probs(self._rows(cols))
                values.append((-logps / counts.clamp(min=1)).float().cpu().numpy())
        return np.concatenate(values)

    def mcq_accuracy(self, dataset: datasets.Dataset | str) -> float:
        """Multiple-choice accuracy of a split (or a split name) by option likelihood."""
        name = dataset if isinstance(dataset, str) else "split"
        dataset = self._split(dataset) if isinstance(dataset, str) else dataset
        return metrics.mcq_accuracy(self.option_scores(dataset, desc=name), dataset["label"])

    # -------------------------------------------------------------------------------------------------- generation
    def generate(self, dataset: datasets.Dataset, desc: str = "generate") -> list[str]:
        """Greedy answers (new tokens only, special tokens dropped) to every question of ``dataset``.

        Prompts are the prompt part of the collator's own batches (everything before the first answer label), so
        generation sees exactly the template, image tokens and pixel values the model was trained and scored with.
        """
        texts: list[str] = []
        tok = self.tokenizer
        with self._eval_mode():
            for cols in self._batches(dataset, desc):
                batch = self.collator(self._rows(cols))
                labels = batch.pop("labels")
                batch.pop("attention_mask")  # rebuilt for the left-padded prompts below
                starts = (labels != IGNORE_INDEX).float().argmax(dim=1).tolist()
                seq_keys = [k for k in ("input_ids", *_SEQUENCE_KEYS) if k in batch]
                prompts = {k: [batch[k][i, :s] for i, s in enumerate(starts)] for k in seq_keys}
                inputs = {k: pad(v, padding_value=tok.pad_token_id if k == "input_ids" else 0, padding_side="left")
                          for k, v in prompts.items()}
                inputs["attention_mask"] = pad([torch.ones(s, dtype=torch.long) for s in starts], padding_value=0,
                                               padding_side="left")
                inputs.update({k: v for k, v in batch.items() if k not in seq_keys})
                inputs = self._to_device(inputs)
                out = self.model.generate(
                    **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                )
                new = out[:, inputs["input_ids"].shape[1]:]
                texts += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
        return texts

    def rouge_l(self, dataset: datasets.Dataset | str) -> float:
        """Mean ROUGE-L F of greedy answers against the ground truth."""
        dataset = self._split(dataset) if isinstance(dataset, str) else dataset
        return metrics.rouge_l(self.generate(dataset), dataset["answer"])

    # -------------------------------------------------------------------------------------------------- attacks
    def membership_auc(self, members: datasets.Dataset | str, nonmembers: datasets.Dataset | str) -> float:
        """LOSS membership-inference ROC-AUC: score = -mean answer NLL; 0.5 = members look like non-members."""
        members = self._split(members) if isinstance(members, str) else members
        nonmembers = self._split(nonmembers) if isinstance(nonmembers, str) else nonmembers
        return metrics.roc_auc(-self.answer_nll(members, "mia members"), -self.answer_nll(nonmembers, "mia holdout"))

    def mia_splits(self) -> tuple[str, str] | None:
        """The (members, non-members) splits: VQA rows for vision-language models (the knowledge being unlearned),
        QA rows for text-only models; None when the benchmark has no holdout people."""
        for kind in (("vqa", "qa") if self.supports_images else ("qa",)):
            pair = (f"forget_{kind}", f"holdout_{kind}")
            if all(p in self.benchmark and len(self.benchmark[p]) > 0 for p in pair):
                return pair
        return None

    # -------------------------------------------------------------------------------------------------- all
    def evaluate(self, splits: Sequence[str] | None = None, rouge: bool = True, mia: bool = True) -> dict[str, float]:
        """Compute ``<split>_acc`` for each multiple-choice split, ``forget_rougeL`` and ``mia_auc``.

        Args:
            splits: the multiple-choice splits (default: those of ``MCQ_SPLITS`` present in the benchmark).
            rouge: compute ROUGE-L of greedy generations on forget_vqa (forget_qa for text-only models).
            mia: compute the membership-inference AUC (needs holdout splits).

        Splits that cannot be evaluated are left out of the result; ``self.skipped`` says why.
        """
        self.skipped = {}
        names = [s for s in MCQ_SPLITS if s in self.benchmark] if splits is None else list(splits)
        results: dict[str, float] = {}
        for name in names:
            if self.can_evaluate(name):
                results[f"{name}_acc"] = self.mcq_accuracy(name)
        if rouge:
            name = "forget_vqa" if self.supports_images else "forget_qa"
            if self.can_evaluate(name):
                results["forget_rougeL"] = self.rouge_l(name)
        if mia:
            pair = self.mia_splits()
            if pair is None:
                self.skipped["mia"] = "no forget/holdout split pair"
                logger.warning("Skipping membership inference: the benchmark has no forget/holdout split pair.")
            else:
                results["mia_auc"] = self.membership_auc(*pair)
        return results
