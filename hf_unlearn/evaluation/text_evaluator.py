"""``TextEvaluator``: TOFU's and MUSE's metrics for a causal LM, on top of the ``Evaluator``'s scoring.

It adds to the ``Evaluator`` (whose per-row answer NLLs, generations and membership scores it reuses):

* ``tofu_metrics(reference)``: truth ratio, answer probability, ROUGE-L recall, extraction strength and exact
  memorization on the forget rows; forget quality against a retain-only model; model utility (harmonic mean over
  retain, real-authors and world-facts rows); membership AUCs forget vs holdout and PrivLeak.
* ``muse_metrics(reference)``: VerbMem and KnowMem ROUGE-L F1, extraction strength, membership AUCs and PrivLeak.
* ``reference_statistics()``: what a retain-only model contributes to the two above (its forget truth ratios, its
  PrivLeak AUC, its NLLs for the reference attack), computed once and passed as ``reference``.

Splits whose rows have ``kind="text"`` (MUSE) are scored as raw continuations (``CompletionCollator``); the others
through the chat template, as in training. Every metric's per-row values are kept in ``per_row`` (for bootstrap
intervals over rows). The formulas are in ``text_metrics`` and ``mia``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import datasets
import numpy as np

from ..data.completion import CompletionCollator
from . import metrics, mia, text_metrics
from .evaluator import Evaluator

PRIVLEAK_K = 0.4  # MUSE's and OpenUnlearning's Min-K% fraction for PrivLeak
TOFU_UTILITY_SPLITS = ("retain_qa", "real_authors", "world_facts")
_UTILITY_PREFIX = {"retain_qa": "retain", "real_authors": "real_authors", "world_facts": "world_facts"}


class TextEvaluator(Evaluator):
    """Evaluate a causal LM on a text benchmark (``load_tofu``, ``load_muse``, ``build_synthetic_text_benchmark``).

    Args:
        model, processing_class, benchmark, batch_size, show_progress: as for ``Evaluator``.
        max_new_tokens: generation budget for ROUGE on QA rows (TOFU generates up to 200).
        max_length: truncate raw-text continuations (MUSE documents) to this many tokens.
        mia_k: the Min-K% fraction of the membership AUCs (0.2, Shi et al.); PrivLeak uses 0.4 as MUSE.
    """

    def __init__(self, model, processing_class, benchmark, batch_size: int = 16, max_new_tokens: int = 64,
                 show_progress: bool = False, max_length: int | None = None, mia_k: float = mia.DEFAULT_K):
        super().__init__(model, processing_class, benchmark, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         show_progress=show_progress)
        self.mia_k = mia_k
        self._completion = copy.copy(self)  # shares the model; only the collator differs
        self._completion.collator = CompletionCollator(processing_class, max_length=max_length)
        self.per_row: dict[str, np.ndarray] = {}

    # -------------------------------------------------------------------------------------------------- plumbing
    def _on(self, dataset: datasets.Dataset) -> Evaluator:
        """The evaluator whose collator fits the split: raw continuation for ``kind="text"`` rows."""
        if "kind" in dataset.column_names and len(dataset) and dataset.select_columns(["kind"])[0]["kind"] == "text":
            return self._completion
        return self

    def _get(self, split: datasets.Dataset | str) -> datasets.Dataset:
        return self._split(split) if isinstance(split, str) else split

    @contextmanager
    def _budget(self, max_new_tokens: int | None):
        saved = self.max_new_tokens, self._completion.max_new_tokens
        if max_new_tokens is not None:
            self.max_new_tokens = self._completion.max_new_tokens = max_new_tokens
        try:
            yield
        finally:
            self.max_new_tokens, self._completion.max_new_tokens = saved

    def _keep(self, name: str, values: np.ndarray) -> np.ndarray:
        self.per_row[name] = np.asarray(values)
        return self.per_row[name]

    # -------------------------------------------------------------------------------------------------- per row
    def nll(self, split: datasets.Dataset | str, column: str = "answer") -> np.ndarray:
        """(N,) mean answer-token NLL of each row's ``column`` (e.g. ``paraphrased_answer``)."""
        ds = self._get(split)
        if column != "answer":
            ds = datasets.Dataset.from_dict({"question": ds["question"], "answer": ds[column],
                                             "kind": ds["kind"] if "kind" in ds.column_names else ["qa"] * len(ds)})
        return self._on(ds).answer_nll(ds, desc=column)

    def perturbed_nll(self, split: datasets.Dataset | str) -> list[np.ndarray]:
        """Per row, the mean answer-token NLL of each of its ``perturbed_answers``."""
        ds = self._get(split)
        wrong = ds["perturbed_answers"]
        if any(not w for w in wrong):
            raise ValueError("Every row needs perturbed_answers for the truth ratio; some rows have none.")
        flat = datasets.Dataset.from_dict({
            "question": [q for q, w in zip(ds["question"], wrong) for _ in w],
            "answer": [a for w in wrong for a in w],
        })
        values = self.answer_nll(flat, desc="perturbed")
        return np.split(values, np.cumsum([len(w) for w in wrong])[:-1])

    def _correct_column(self, ds: datasets.Dataset) -> str:
        """TOFU compares the paraphrased answer on forget/retain rows, the answer itself elsewhere."""
        if "paraphrased_answer" in ds.column_names and all(p is not None for p in ds["paraphrased_answer"]):
            return "paraphrased_answer"
        return "answer"

    def truth_ratios(self, split: datasets.Dataset | str) -> np.ndarray:
        """(N,) TOFU truth ratio P~(perturbed) / P~(correct) per row (< 1: the model prefers the truth)."""
        ds = self._get(split)
        return text_metrics.truth_ratio(self.nll(ds, self._correct_column(ds)), self.perturbed_nll(ds))

    def generations(self, split: datasets.Dataset | str, max_new_tokens: int | None = None,
                    stop: Sequence[str] = ()) -> list[str]:
        """Greedy answers (raw continuations for ``kind="text"`` rows), cut at the first of ``stop``."""
        ds = self._get(split)
        with self._budget(max_new_tokens):
            texts = self._on(ds).generate(ds)
        for s in stop:
            texts = [t.split(s)[0].strip() for t in texts]
        return texts

    def rouge(self, split: datasets.Dataset | str, measure: str = "recall", max_new_tokens: int | None = None,
              stop: Sequence[str] = (), reference_length: bool = False) -> np.ndarray:
        """(N,) ROUGE-L (``measure``) of greedy answers against the ground truth; ``reference_length=True`` cuts each
        generation to its reference's token count (raw continuations have no end-of-text to stop at)."""
        ds = self._get(split)
        texts, refs = self.generations(ds, max_new_tokens, stop), list(ds["answer"])
        if reference_length:
            tok = self.tokenizer
            texts = [tok.decode(tok(t, add_special_tokens=False)["input_ids"][: len(
                tok(r, add_special_tokens=False)["input_ids"])]).strip() for t, r in zip(texts, refs)]
        return metrics.rouge_l_per_row(texts, refs, measure)

    def memorization(self, split: datasets.Dataset | str) -> tuple[np.ndarray, np.ndarray]:
        """(exact memorization, extraction strength) per row, from one teacher-forced pass."""
        ds = self._get(split)
        matches = self._on(ds).answer_token_stats(ds, "memorization")["argmax_match"]
        return text_metrics.exact_memorization(matches), text_metrics.extraction_strength(matches)

    # -------------------------------------------------------------------------------------------------- suites
    def _token_stats(self, *splits: str) -> list[dict[str, list[np.ndarray]]]:
        return [self._on(self._split(s)).answer_token_stats(self._split(s), "mia") for s in splits]

    @staticmethod
    def _privleak_auc(member_stats, nonmember_stats) -> float:
        return metrics.roc_auc(mia.min_k_score(member_stats["log_prob"], PRIVLEAK_K),
                               mia.min_k_score(nonmember_stats["log_prob"], PRIVLEAK_K))

    def _membership(self, members: str, nonmembers: str, reference: Mapping[str, Any] | None) -> dict[str, float]:
        """Every attack's AUC and PrivLeak from one teacher-forced pass over each side."""
        stats = self._token_stats(members, nonmembers)
        ref_nll = None if reference is None else reference.get("mia_reference_nll")
        scores = []
        for i, (name, s) in enumerate(zip((members, nonmembers), stats)):
            side = mia.attack_scores(s, self._split(name)["answer"], k=self.mia_k,
                                     reference_nll=None if ref_nll is None else ref_nll[i])
            for attack, values in side.items():
                self._keep(f"{name}_mia_{attack}", values)
            scores.append(side)
        out = mia.attack_aucs(*scores)
        out["privleak"] = text_metrics.privleak(self._privleak_auc(*stats), self._reference_auc(reference))
        return out

    @staticmethod
    def _reference_auc(reference: Mapping[str, Any] | None) -> float:
        return 0.5 if reference is None or reference.get("privleak_auc") is None else float(reference["privleak_auc"])

    def tofu_metrics(self, reference: Mapping[str, Any] | None = None, rouge: bool = True) -> dict[str, float]:
        """TOFU's metrics on the splits present (``forget_qa`` required; ``retain_qa``, ``real_authors``,
        ``world_facts`` for model utility; ``holdout_qa`` for membership and PrivLeak).

        ``reference``: ``reference_statistics()`` of a model trained without the forget set; it adds
        ``forget_quality`` and ``mia_reference_auc``, and calibrates ``privleak`` (0.5 AUC without it).
        """
        self.per_row = {}
        out: dict[str, float] = {}
        forget = self._split("forget_qa")
        tr = self._keep("forget_qa_truth_ratio", self.truth_ratios(forget))
        out["forget_truth_ratio"] = text_metrics.truth_ratio_score(tr, "closer_to_1")
        out["forget_prob"] = float(self._keep("forget_qa_prob",
                                              text_metrics.answer_probability(self.nll(forget))).mean())
        if rouge:
            out["forget_rougeL"] = float(self._keep("forget_qa_rougeL", self.rouge(forget)).mean())
        em, es = self.memorization(forget)
        out["forget_exact_memorization"] = float(self._keep("forget_qa_exact_memorization", em).mean())
        out["forget_extraction_strength"] = float(self._keep("forget_qa_extraction_strength", es).mean())
        if reference is not None and reference.get("forget_truth_ratios") is not None:
            out["forget_quality"] = text_metrics.forget_quality(tr, reference["forget_truth_ratios"])

        utility: dict[str, float] = {}
        for split in TOFU_UTILITY_SPLITS:
            if split not in self.benchmark or len(self.benchmark[split]) == 0:
                continue
            ds, prefix = self._split(split), _UTILITY_PREFIX[split]
            correct = self._correct_column(ds)
            correct_nll, wrong_nll = self.nll(ds, correct), self.perturbed_nll(ds)
            tr = self._keep(f"{split}_truth_ratio", text_metrics.truth_ratio(correct_nll, wrong_nll))
            utility[f"{prefix}_truth_ratio"] = text_metrics.truth_ratio_score(tr, "true_better")
            # TOFU: plain answer probability on retain rows, normalised against the perturbed answers elsewhere.
            prob = (text_metrics.answer_probability(self.nll(ds)) if split == "retain_qa"
                    else text_metrics.normalised_probability(self.nll(ds), wrong_nll))
            utility[f"{prefix}_prob"] = float(self._keep(f"{split}_prob", prob).mean())
            if rouge:
                utility[f"{prefix}_rougeL"] = float(self._keep(f"{split}_rougeL", self.rouge(ds)).mean())
        out.update(utility)
        if utility:
            out["model_utility"] = text_metrics.model_utility(utility)
        if "holdout_qa" in self.benchmark and len(self.benchmark["holdout_qa"]) > 0:
            out.update(self._membership("forget_qa", "holdout_qa", reference))
        return out

    def reference_statistics(self, forget: str = "forget_qa", holdout: str = "holdout_qa") -> dict[str, Any]:
        """What a retain-only model contributes to ``tofu_metrics`` / ``muse_metrics`` of other models: its
        forget-row truth ratios (if the split has perturbed answers), its PrivLeak AUC and its per-row NLLs on the
        membership splits (for the reference attack)."""
        f = self._split(forget)
        stats: dict[str, Any] = {}
        if "perturbed_answers" in f.column_names and all(f["perturbed_answers"]):
            stats["forget_truth_ratios"] = self.truth_ratios(f)
        if holdout in self.benchmark and len(self.benchmark[holdout]) > 0:
            member_stats, nonmember_stats = self._token_stats(forget, holdout)
            stats["privleak_auc"] = self._privleak_auc(member_stats, nonmember_stats)
            stats["mia_reference_nll"] = tuple(-mia.loss_score(s["log_prob"]) for s in (member_stats, nonmember_stats))
        return stats

    def muse_metrics(self, reference: Mapping[str, Any] | None = None, verbmem_tokens: int = 128,
                     knowmem_tokens: int = 32) -> dict[str, float]:
        """MUSE's metrics on a ``load_muse`` benchmark: ``verbmem_rougeL`` (F1), ``knowmem_forget_rougeL``,
        ``knowmem_retain_rougeL``, ``verbmem_extraction_strength`` / ``verbmem_exact_memorization``, membership
        AUCs and ``privleak`` (privleak_forget vs privleak_holdout; pass ``reference_statistics("privleak_forget",
        "privleak_holdout")`` of the retrained model to calibrate it)."""
        self.per_row = {}
        out: dict[str, float] = {}
        verbmem = self._split("verbmem_forget")
        # MUSE's references are 128-token continuations generated with a 128-token budget: compare equal lengths.
        out["verbmem_rougeL"] = float(self._keep("verbmem_rougeL", self.rouge(
            verbmem, "fmeasure", max_new_tokens=verbmem_tokens, reference_length=True)).mean())
        em, es = self.memorization(verbmem)
        out["verbmem_exact_memorization"] = float(self._keep("verbmem_exact_memorization", em).mean())
        out["verbmem_extraction_strength"] = float(self._keep("verbmem_extraction_strength", es).mean())
        for side in ("forget", "retain"):
            out[f"knowmem_{side}_rougeL"] = float(self._keep(f"knowmem_{side}_rougeL", self.rouge(
                f"knowmem_{side}", "fmeasure", max_new_tokens=knowmem_tokens,
                stop=("\n\n", "\nQuestion", "Question:"))).mean())
        out.update(self._membership("privleak_forget", "privleak_holdout", reference))
        return out
