"""MUSE (``muse-bench/MUSE-News`` and ``muse-bench/MUSE-Books``, Shi et al. 2024) in the common schema.

Published layout: parquet files ``<config>/<split>-0000i-of-0000n.parquet`` (``hf download muse-bench/MUSE-News
--repo-type dataset --local-dir DIR``), on the Hub ``load_dataset(repo, config, split=split)``:

==================  ==============================  ============================================================
split returned      source (config / split)         rows (kind ``"text"``: raw continuation, no chat template)
==================  ==============================  ============================================================
``verbmem_forget``  ``verbmem`` / ``forget``        question = ``prompt`` (a forget-text prefix), answer = ``gt``
``knowmem_forget``  ``knowmem`` / ``forget_qa``     question = the in-context examples of ``forget_qa_icl`` +
                                                    "Question: ...\\nAnswer:", answer = ``answer``
``knowmem_retain``  ``knowmem`` / ``retain_qa``     the same with ``retain_qa_icl`` (older snapshots name them
                                                    ``retain2_qa`` / ``retain2_qa_icl``)
``privleak_forget`` ``privleak`` / ``forget``       question = "", answer = ``text`` (MIA members)
``privleak_holdout````privleak`` / ``holdout``      never trained on (MIA non-members)
``privleak_retain`` ``privleak`` / ``retain``       (older snapshots: ``retain2``)
``forget_train``    ``raw`` / ``forget``            the forget corpus to unlearn
``retain_train``    ``raw`` / ``retain1``           the retain corpus
==================  ==============================  ============================================================

MUSE's metrics (``TextEvaluator.muse_metrics``): VerbMem = ROUGE-L F1 of greedy continuations of the verbmem
prompts; KnowMem = ROUGE-L F1 of greedy answers on knowmem (forget: should fall; retain: utility, should stay);
PrivLeak from the Min-K% (k = 0.4) AUC of privleak forget vs holdout.
"""

from __future__ import annotations

from typing import Any

import datasets

from .benchmarks import read_benchmark_config
from .schema import rows_to_dataset

MUSE_REPOS = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}


def _text_row(prefix: str, continuation: str) -> dict[str, Any]:
    return dict(person_id=-1, kind="text", image=None, question=prefix, answer=continuation, options=None, label=None)


def knowmem_prompt(question: str, examples: list[dict[str, str]]) -> str:
    """MUSE's KnowMem prompt: the in-context examples, then the question, in a plain Question/Answer layout."""
    shots = "".join(f"Question: {e['question']}\nAnswer: {e['answer']}\n\n" for e in examples)
    return f"{shots}Question: {question}\nAnswer:"


def load_muse(path_or_repo: str, corpus: str = "news", *, icl: bool = True) -> datasets.DatasetDict:
    """Load MUSE into the common schema (see the module doc for the splits).

    Args:
        path_or_repo: a local snapshot directory or a Hub id (``muse-bench/MUSE-News`` / ``muse-bench/MUSE-Books``).
        corpus: ``"news"`` or ``"books"``: names the published repository in messages.
        icl: prepend the published in-context examples to KnowMem questions (as MUSE does).
    """
    if corpus not in MUSE_REPOS:
        raise ValueError(f"corpus must be one of {sorted(MUSE_REPOS)}, got {corpus!r}.")
    repo = MUSE_REPOS[corpus]

    def read(config: str, split: str, required, renamed: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """One split; ``renamed``: its names in older snapshots (MUSE renamed ``retain2*`` to ``retain*``)."""
        first_error = None
        for name in (split, *renamed):
            try:
                return read_benchmark_config(path_or_repo, config, required, benchmark="MUSE", repo=repo,
                                    split=name).to_pylist()
            except (FileNotFoundError, ValueError) as err:
                if "not found" not in str(err) and "has no split" not in str(err):
                    raise  # a split that exists but is broken: its own message
                first_error = first_error or err
        raise first_error

    splits = {"verbmem_forget": [_text_row(r["prompt"], r["gt"]) for r in read("verbmem", "forget", ("prompt", "gt"))]}
    for side, old in (("forget", ()), ("retain", ("retain2",))):
        qa = read("knowmem", f"{side}_qa", ("question", "answer"), tuple(f"{o}_qa" for o in old))
        shots = read("knowmem", f"{side}_qa_icl", ("question", "answer"),
                     tuple(f"{o}_qa_icl" for o in old)) if icl else []
        splits[f"knowmem_{side}"] = [_text_row(knowmem_prompt(r["question"], shots), r["answer"]) for r in qa]
    for side, old in (("forget", ()), ("holdout", ()), ("retain", ("retain2",))):
        splits[f"privleak_{side}"] = [_text_row("", r["text"]) for r in read("privleak", side, ("text",), old)]
    splits["forget_train"] = [_text_row("", r["text"]) for r in read("raw", "forget", ("text",))]
    splits["retain_train"] = [_text_row("", r["text"]) for r in read("raw", "retain1", ("text",))]
    return datasets.DatasetDict({name: rows_to_dataset(rows) for name, rows in splits.items()})
