"""``Evaluator``: MLLMU-Bench-style metrics for a model on a benchmark in the common schema.

* **Multiple-choice accuracy by option likelihood**: each option (4 in MLLMU-style splits, any number >= 2 per row)
  is scored as the answer (answer-only labels from ``UnlearnDataCollator``, so prompts and image tokens are exactly
  those of training); the option with the highest mean (or summed) answer log-probability wins. Deterministic and
  free of answer-parsing pitfalls (a generated "B)" or "The answer is B" needs no parser).
* **ROUGE-L** (F) of greedy generations on the forget VQA split, new tokens only; also the score of every
  generation-only split (no options, e.g. CLEAR's TOFU questions) as ``<split>_rougeL``.
* **Membership inference** (LOSS attack): score = -mean answer NLL; members = the forget people's rows, non-members =
  the holdout people's rows (never trained on); ROC-AUC, 0.5 = no signal.

* **Robustness attacks** (``run_attacks`` / ``evaluate(attacks=...)``): the registry of ``attack_registry``
  (probing, rephrased images, typographic and jailbreak prompts, relearning); each adds its own ``<attack>_...``
  metrics (docs/robustness.md).

Text-only models are evaluated on the text splits; image splits are skipped with a logged message.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from transformers import ProcessorMixin
from trl.trainer.utils import pad

from .. import losses
from ..data.collators import IGNORE_INDEX, UnlearnDataCollator
from ..data.rows import ROW_COLUMNS, is_known_row_format, row_answers, rows_with_images
from ..data.schema import MCQ_COLUMNS, REQUIRED_TRAIN_COLUMNS, check_columns, has_options
from ..models import unwrap_model
from . import metrics, mia
from .attack_registry import run_attacks

logger = logging.getLogger(__name__)

MCQ_SPLITS = ("forget_vqa", "forget_qa", "retain_vqa", "retain_qa", "test_vqa", "general")
OPTION_SCORES = ("mean", "sum")
POOLINGS = ("mean", "last")
# What ``candidate_scores`` scores by default: the true answer, the options (accuracy) and the wrong answers of the
# truth ratio.
CANDIDATE_COLUMNS = ("answer", "options", "perturbed_answers")
# Per-token inputs besides input_ids that a prompt slice must cut along with it.
_SEQUENCE_KEYS = ("mm_token_type_ids", "token_type_ids")


@dataclass
class CandidateScores:
    """Per row, the answer log-probability of each of its candidates: summed over the answer's tokens and per token
    (``mean``, the length-normalised score)."""

    sum: list[np.ndarray]
    mean: list[np.ndarray]

    def table(self, score: str = "mean") -> np.ndarray:
        """(N, K) ``score`` ("mean" or "sum") of every candidate; rows with fewer than K candidates are padded with
        -inf (never the best option)."""
        values = self.mean if score == "mean" else self.sum
        out = np.full((len(values), max(map(len, values), default=0)), -np.inf)
        for i, row_values in enumerate(values):
            out[i, :len(row_values)] = row_values
        return out


def _candidates(row: dict, cols: dict[str, list], i: int, column: str, desc: str) -> list[str]:
    """The answers of row ``i`` that ``column`` lists (``"answer"``: the true one); an empty list is an error."""
    answers = [row["answer"]] if column == "answer" else cols[column][i]
    if not answers:
        raise ValueError(f"Split {desc!r} has a row without {column}: " + (
            "it is generation-only; score it with rouge_l (evaluate() does so for splits without options)."
            if column == "options" else "every row needs at least one."))
    return answers


def _has_images(dataset: datasets.Dataset) -> bool:
    """Whether a split's rows carry images (read from ``kind`` when present, so no image is decoded)."""
    if "kind" in dataset.column_names:
        return bool(set(dataset.unique("kind")) & {"vqa", "general"})
    return bool(rows_with_images(dataset))


def _check_rows(dataset, desc: str) -> None:
    """Rows in a format the collator reads (question/answer, TRL prompt/completion or messages), else the missing
    columns named."""
    if not is_known_row_format(dataset):
        check_columns(dataset, REQUIRED_TRAIN_COLUMNS, desc, hint=(
            "Rows need `question` and `answer` (+ optional `image`), TRL's `prompt` and `completion`, or chat "
            "`messages` (docs/data_formats.md)."))


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
        batch_size: questions per forward pass (each question expands to its options).
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
        return losses.sequence_log_probs(*self._answer_logits(rows))

    def _answer_logits(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of a batch, trimmed to the positions from the earliest answer token on when possible."""
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
        return logits, labels

    @staticmethod
    def _rows(cols: dict[str, list]) -> list[dict]:
        """Column batch -> rows with only what the collator reads (question/answer/image, or TRL's columns)."""
        if "question" in cols and "answer" in cols:
            n = len(cols["question"])
            images = cols.get("image") or [None] * n
            return [{"question": cols["question"][i], "answer": cols["answer"][i], "image": images[i]}
                    for i in range(n)]
        keep = [c for c in ROW_COLUMNS if c in cols]
        n = len(cols[keep[0]]) if keep else 0
        return [{c: cols[c][i] for c in keep} for i in range(n)]

    def option_scores(self, dataset: datasets.Dataset, desc: str = "options") -> np.ndarray:
        """(N, K) answer log-probability of every option of every question (mean per token or summed); K is the
        largest number of options in the split, and questions with fewer options are padded with -inf."""
        check_columns(dataset, MCQ_COLUMNS, desc)
        return self.candidate_scores(dataset, ("options",), desc)["options"].table(self.option_score)

    def perturbed_nll(self, dataset: datasets.Dataset | str, desc: str = "perturbed") -> list[np.ndarray]:
        """Per row, the mean answer-token NLL of each of its ``perturbed_answers`` (the truth ratio's wrong answers),
        asked with the row's own question and image."""
        dataset = self._split(dataset) if isinstance(dataset, str) else dataset
        check_columns(dataset, ("perturbed_answers",), desc)
        scores = self.candidate_scores(dataset, ("perturbed_answers",), desc)["perturbed_answers"]
        return [-values for values in scores.mean]

    def candidate_scores(self, dataset: datasets.Dataset, columns: Sequence[str] = CANDIDATE_COLUMNS,
                         desc: str = "answers") -> dict[str, CandidateScores]:
        """Per column of ``columns`` (``"answer"``, or a list column such as ``"options"`` and
        ``"perturbed_answers"``), the answer log-probability of each of a row's candidates, asked with the row's own
        question and image. A row's distinct candidates are scored once for all columns: the true answer is one of
        the options and the wrong options are mostly among the perturbed answers, so the truth ratio, the accuracy
        and the answer NLL of a benchmark-v3 split take 6-7 forward rows per question instead of 10."""
        check_columns(dataset, tuple(columns), desc)
        scored = {column: CandidateScores([], []) for column in columns}
        with self._eval_mode():
            for cols in self._batches(dataset, desc):
                rows, where = [], []  # the forward rows; per row and column, the positions of its candidates
                for i, row in enumerate(self._rows(cols)):
                    answers = {column: _candidates(row, cols, i, column, desc) for column in columns}
                    distinct = list(dict.fromkeys(a for listed in answers.values() for a in listed))
                    position = {answer: len(rows) + j for j, answer in enumerate(distinct)}
                    rows += [{**row, "answer": answer} for answer in distinct]
                    where.append({column: [position[a] for a in listed] for column, listed in answers.items()})
                logps, counts = self._answer_log_probs(rows)
                sums = logps.float().cpu().numpy()
                means = (logps / counts.clamp(min=1)).float().cpu().numpy()
                for positions in where:
                    for column, at in positions.items():
                        scored[column].sum.append(sums[at])
                        scored[column].mean.append(means[at])
        return scored

    def answer_nll(self, dataset: datasets.Dataset, desc: str = "nll") -> np.ndarray:
        """(N,) mean negative log-likelihood per answer token of each row's ground-truth answer."""
        _check_rows(dataset, desc)
        values = []
        with self._eval_mode():
            for cols in self._batches(dataset, desc):
                logps, counts = self._answer_log_probs(self._rows(cols))
                values.append((-logps / counts.clamp(min=1)).float().cpu().numpy())
        return np.concatenate(values)

    def mcq_accuracy(self, dataset: datasets.Dataset | str) -> float:
        """Multiple-choice accuracy of a split (or a split name) by option likelihood."""
        return float(self.mcq_correct(dataset).mean())

    def mcq_correct(self, dataset: datasets.Dataset | str) -> np.ndarray:
        """(N,) 1.0 where the highest-scoring option is the labelled one, else 0.0 (the rows behind the accuracy)."""
        name = dataset if isinstance(dataset, str) else "split"
        dataset = self._split(dataset) if isinstance(dataset, str) else dataset
        scores = self.option_scores(dataset, desc=name)
        labels = np.asarray(dataset["label"])
        if len(labels) == 0:
            raise ValueError("Cannot compute an accuracy over zero questions.")
        return (metrics.mcq_predictions(scores) == labels).astype(np.float64)

    # -------------------------------------------------------------------------------------------------- features
    def prompt_hidden_states(self, dataset: datasets.Dataset | str, layer: int | None = None, pooling: str = "mean",
                             desc: str = "hidden states") -> np.ndarray:
        """(N, H) pooled hidden state of each row's prompt (template, image tokens and question: everything before
        the answer) at one layer of the language model.

        Args:
            dataset: the rows (or a split name).
            layer: index into the model's ``hidden_states`` (0: the embeddings, i: the output of decoder layer i,
                negative: from the last); default: the middle layer, ``num_layers // 2``.
            pooling: ``"mean"`` over the prompt's tokens (attention-masked) or ``"last"``: the last prompt token, the
                one whose output predicts the answer's first token.
        """
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; use one of {POOLINGS}.")
        dataset = self._split(dataset) if isinstance(dataset, str) else dataset
        _check_rows(dataset, desc)
        kwargs = {"logits_to_keep": 1} if self._can_trim_logits else {}
        out = []
        with self._eval_mode():
            for cols in self._batches(dataset, desc):
                batch = self._to_device(self.collator(self._rows(cols)))
                labels = batch.pop("labels")
                states = self.model(**batch, output_hidden_states=True, **kwargs).hidden_states
                index = (len(states) - 1) // 2 if layer is None else layer
                if not -len(states) <= index < len(states):
                    raise ValueError(f"layer={layer} is out of range: the model has {len(states) - 1} layers "
                                     f"(hidden states 0..{len(states) - 1}, or negative from the end).")
                hidden = states[index].float()  # (B, T, H)
                first = (labels != IGNORE_INDEX).float().argmax(dim=1)  # (B,) the first answer position
                if pooling == "last":
                    pooled = hidden[torch.arange(len(first), device=hidden.device), first - 1]
                else:
                    positions = torch.arange(hidden.shape[1], device=hidden.device)
                    mask = (positions[None] < first[:, None]) & batch["attention_mask"].bool()  # (B, T) prompt
                    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
                out.append(pooled.cpu().numpy())
                del states, hidden
        return np.concatenate(out)

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
        return float(self.rouge_l_scores(dataset).mean())

    def rouge_l_scores(self, dataset: datasets.Dataset | str) -> np.ndarray:
        """(N,) ROUGE-L F of each greedy answer against its ground truth."""
        dataset = self._split(dataset) if isinstance(dataset, str) else dataset
        return metrics.rouge_l_per_row(self.generate(dataset), row_answers(dataset))

    # -------------------------------------------------------------------------------------------------- attacks
    def membership_auc(self, members: datasets.Dataset | str, nonmembers: datasets.Dataset | str) -> float:
        """LOSS membership-inference ROC-AUC: score = -mean answer NLL; 0.5 = members look like non-members."""
        members = self._split(members) if isinstance(members, str) else members
        nonmembers = self._split(nonmembers) if isinstance(nonmembers, str) else nonmembers
        return metrics.roc_auc(-self.answer_nll(members, "mia members"), -self.answer_nll(nonmembers, "mia holdout"))

    def answer_token_stats(self, dataset: datasets.Dataset | str, desc: str = "tokens") -> dict[str, list[np.ndarray]]:
        """Per-row answer-token statistics of every row (``mia.answer_token_stats``: log-probs, next-token mean/std
        of log p, greedy matches), from one forward pass per batch; only one batch's logits live at a time."""
        dataset = self._split(dataset) if isinstance(dataset, str) else dataset
        _check_rows(dataset, desc)
        out: dict[str, list[np.ndarray]] = {}
        with self._eval_mode():
            for cols in self._batches(dataset, desc):
                logits, labels = self._answer_logits(self._rows(cols))
                for key, rows in mia.answer_token_stats(logits, labels).items():
                    out.setdefault(key, []).extend(rows)
                del logits
        return out

    def gradient_norms(self, dataset: datasets.Dataset | str, desc: str = "gradnorm") -> np.ndarray:
        """(N,) global L2 norm of the gradient of each row's mean answer NLL w.r.t. the trainable parameters.

        One forward and backward per row, dropout off; ``.grad`` of the parameters is left untouched (the gradients
        come from ``torch.autograd.grad``). White-box and slow: the optional attack of ``mia_scores``.
        """
        dataset = self._split(dataset) if isinstance(dataset, str) else dataset
        _check_rows(dataset, desc)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("The gradient-norm attack needs trainable parameters; the model has none "
                             "(set requires_grad=True on the parameters to attack).")
        norms = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                for i in range(len(dataset)):
                    nll = losses.token_mean_nll(*self._answer_logits(self._rows(dataset[i:i + 1])))
                    grads = torch.autograd.grad(nll, params, allow_unused=True)
                    norms.append(torch.sqrt(sum(g.float().square().sum() for g in grads if g is not None)).item())
        finally:
            self.model.train(was_training)
        return np.array(norms, dtype=np.float64)

    def mia_scores(
        self, dataset: datasets.Dataset | str, reference: torch.nn.Module | np.ndarray | None = None, *,
        k: float = mia.DEFAULT_K, gradient_norm: bool = False,
    ) -> dict[str, np.ndarray]:
        """Per-row membership scores of every attack of ``hf_unlearn.evaluation.mia`` (higher = "member"):
        ``loss``, ``zlib``, ``min_k``, ``min_k_pp``; ``reference`` when a reference is given; ``gradnorm`` when
        ``gradient_norm=True``.

        Args:
            dataset: the rows (or a split name).
            reference: a reference model sharing this evaluator's processing class (e.g. the retain-only oracle),
                or its per-row mean answer NLLs on ``dataset`` (from its ``answer_nll``) to score it once only.
            k: the Min-K% fraction.
            gradient_norm: also run the white-box gradient-norm attack (one backward per row).
        """
        dataset = self._split(dataset) if isinstance(dataset, str) else dataset
        stats = self.answer_token_stats(dataset, "mia")
        reference_nll = None
        if isinstance(reference, torch.nn.Module):
            ref_eval = Evaluator(reference, self.processing_class, {}, batch_size=self.batch_size,
                                 show_progress=self.show_progress)
            # The same computation as the target's loss score, so a model that is its own reference scores exactly 0.
            reference_nll = -mia.loss_score(ref_eval.answer_token_stats(dataset, "mia reference")["log_prob"])
        elif reference is not None:
            reference_nll = np.asarray(reference, dtype=np.float64)
        grad_norms = self.gradient_norms(dataset) if gradient_norm else None
        return mia.attack_scores(stats, row_answers(dataset), k=k, reference_nll=reference_nll, grad_norms=grad_norms)

    def membership_aucs(
        self, members: datasets.Dataset | str, nonmembers: datasets.Dataset | str,
        reference: torch.nn.Module | tuple[np.ndarray, np.ndarray] | None = None, *, k: float = mia.DEFAULT_K,
        gradient_norm: bool = False,
    ) -> dict[str, float]:
        """ROC-AUC of every attack, members (positives) vs non-members: ``mia_loss_auc``, ``mia_zlib_auc``,
        ``mia_min_k_auc``, ``mia_min_k_pp_auc``, plus ``mia_reference_auc`` with a ``reference`` (a model, or the
        pair of its per-row NLLs on members and non-members) and ``mia_gradnorm_auc`` with ``gradient_norm=True``.
        0.5 = members look unseen. ``mia_loss_auc`` equals ``membership_auc``."""
        ref_members = ref_nonmembers = reference
        if isinstance(reference, tuple):
            ref_members, ref_nonmembers = reference
        return mia.attack_aucs(
            self.mia_scores(members, ref_members, k=k, gradient_norm=gradient_norm),
            self.mia_scores(nonmembers, ref_nonmembers, k=k, gradient_norm=gradient_norm),
        )

    def mia_splits(self) -> tuple[str, str] | None:
        """The (members, non-members) splits: VQA rows for vision-language models (the knowledge being unlearned),
        QA rows for text-only models; None when the benchmark has no holdout people."""
        for kind in (("vqa", "qa") if self.supports_images else ("qa",)):
            pair = (f"forget_{kind}", f"holdout_{kind}")
            if all(p in self.benchmark and len(self.benchmark[p]) > 0 for p in pair):
                return pair
        return None

    # -------------------------------------------------------------------------------------------------- your rows
    def evaluate_rows(self, sets: dict[str, datasets.Dataset], rouge: bool = True, mia: bool = True
                      ) -> dict[str, float]:
        """Metrics on your own row sets (any row format of docs/data_formats.md; no options needed).

        For each set ``name``: ``<name>_nll`` (mean answer NLL per token, the probe's measure) and, with ``rouge``,
        ``<name>_rougeL`` (ROUGE-L F of greedy answers); with ``mia`` and both ``forget`` and ``holdout`` sets,
        ``mia_auc`` (LOSS attack, forget rows as members, holdout rows as non-members; 0.5 = no signal). Sets that
        cannot be evaluated (images for a text-only model, empty) are left out; ``self.skipped`` says why.
        """
        self.skipped = {}
        usable = {}
        for name, rows in sets.items():
            if rows is None:
                continue
            if len(rows) == 0:
                self.skipped[name] = "empty set"
            elif not self.supports_images and _has_images(rows):
                self.skipped[name] = ("has images but the processing class has no image processor (text-only "
                                      "model)")
            else:
                usable[name] = rows
                continue
            logger.warning("Skipping set %r: %s.", name, self.skipped[name])
        results: dict[str, float] = {}
        for name, rows in usable.items():
            results[f"{name}_nll"] = float(self.answer_nll(rows, f"{name} nll").mean())
            if rouge:
                results[f"{name}_rougeL"] = self.rouge_l(rows)
        if mia:
            if "forget" in usable and "holdout" in usable:
                results["mia_auc"] = self.membership_auc(usable["forget"], usable["holdout"])
            else:
                self.skipped["mia"] = "needs a forget and a holdout set"
        return results

    # -------------------------------------------------------------------------------------------------- robustness
    def run_attacks(self, attacks: str | Sequence[str], reference: Any = None, seed: int = 0,
                    options: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, float]]:
        """Run robustness attacks of the registry (``hf_unlearn.evaluation.attack_registry``: ``probing``,
        ``rephrase``, ``typographic``, ``jailbreak``, ``relearn``, ...) on this model: ``{attack: {metric: value}}``.

        Args:
            attacks: attack names, or one comma-separated string (``"probing,jailbreak"``).
            reference: a reference model (e.g. the retain-only oracle) sharing this processing class, or its
                ``Evaluator``; attacks that compare with it (``probing``) report its number too.
            seed: the seed of the attacks' random choices (image transforms, the relearning split).
            options: ``{attack: {option: value}}``, e.g. ``{"probing": {"layer": 4}}``.

        An attack that cannot run here is left out; ``self.skipped["attack <name>"]`` says why.
        """
        if reference is not None and not isinstance(reference, Evaluator):
            reference = Evaluator(reference, self.processing_class, self.benchmark, batch_size=self.batch_size,
                                  option_score=self.option_score, max_new_tokens=self.max_new_tokens,
                                  show_progress=self.show_progress)
        return run_attacks(self, attacks, reference, seed, options)

    # -------------------------------------------------------------------------------------------------- all
    def evaluate(self, splits: Sequence[str] | None = None, rouge: bool = True, mia: bool = True,
                 attacks: str | Sequence[str] = (), reference: Any = None, seed: int = 0) -> dict[str, float]:
        """Compute ``<split>_acc`` for each multiple-choice split (``<split>_rougeL`` for a split without options),
        ``forget_rougeL`` and ``mia_auc``, and the metrics of the robustness ``attacks`` asked for.

        Args:
            splits: the multiple-choice splits (default: those of ``MCQ_SPLITS`` present in the benchmark).
            rouge: compute ROUGE-L of greedy generations on forget_vqa (forget_qa for text-only models).
            mia: compute the membership-inference AUC (needs holdout splits).
            attacks, reference, seed: see ``run_attacks``; each attack adds its ``<attack>_...`` metrics.

        Splits that cannot be evaluated are left out of the result; ``self.skipped`` says why.
        """
        self.skipped = {}
        names = [s for s in MCQ_SPLITS if s in self.benchmark] if splits is None else list(splits)
        results: dict[str, float] = {}
        for name in names:
            if self.can_evaluate(name):
                if has_options(self.benchmark[name]):
                    results[f"{name}_acc"] = self.mcq_accuracy(name)
                else:  # generation-only split (e.g. CLEAR's TOFU questions): ROUGE-L of greedy answers
                    results[f"{name}_rougeL"] = self.rouge_l(name)
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
        for values in self.run_attacks(attacks, reference, seed).values():
            results.update(values)
        return results
