"""Multimodal benchmarks through lmms-eval (optional: ``pip install 'hf_unlearn[lmms-eval]'`` and lmms-eval itself
without its dependencies, ``pip install --no-deps lmms-eval==0.7.3``: docs/lmms_eval.md says why).

``multimodal_ability(model, processor, ["mmbench_en_dev"])`` runs named lmms-eval tasks on an in-memory model (the
unlearned one, no save and reload) and returns ``{"<task>/<metric>": value}``, the same keys as ``general_ability``
(``lm_eval_hook.py``). The model is wrapped in ``HFUnlearnLMMS``, an lmms-eval "simple" model that scores and generates
with the library's own collator: the chat template, image tokens and pixel values are those the model was trained and
evaluated with. ``include_path=`` adds a folder of task YAML files (a task of your own, on local data). The tasks'
data come from the Hub unless the YAML points at local files, so named benchmarks need network access or a populated
``HF_DATASETS_CACHE``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..data.collators import IGNORE_INDEX, UnlearnDataCollator
from .evaluator import Evaluator, to_model_device
from .lm_eval_hook import summarize

INSTALL_HINT = "pip install 'hf_unlearn[lmms-eval]' && pip install --no-deps lmms-eval==0.7.3"
ANSWER_PLACEHOLDER = "."  # generation prompts are the collator's prompt part; it needs an answer to find where it ends


def _import_lmms_eval():
    try:
        # lmms_eval.utils runs warnings.filterwarnings("ignore") when first imported: kept inside this block, it does
        # not silence every warning of the user's process (ours included) from then on.
        with warnings.catch_warnings():
            from lmms_eval import evaluator
            from lmms_eval.api.model import lmms
            from lmms_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(f"multimodal_ability needs lmms-eval: `{INSTALL_HINT}` ({err}).") from err
    return evaluator, lmms, TaskManager


def _skip_filelock_patch(evaluator) -> None:
    """lmms-eval 0.7.3's ``simple_evaluate`` first patches filelock's metaclass (``import filelock._api``) so that ranks
    loading datasets from a shared filesystem do not deadlock; filelock 4 has no ``_api`` module, so the import fails
    before any task runs. The patch is marked as done: one process loading local or cached data does not need it."""
    patch = getattr(evaluator, "_enable_reentrant_filelocks", None)
    if patch is not None and not getattr(patch, "_patched", False):
        try:
            import filelock._api  # noqa: F401  (filelock 3: the patch works, leave it to lmms-eval)
        except ImportError:
            patch._patched = True


def _row(question: str, answer: str, visuals) -> dict[str, Any]:
    """A question/answer row of the library's format; ``visuals``: what the task's ``doc_to_visual`` returned."""
    visuals = [v for v in (visuals or []) if v is not None]
    if len(visuals) > 1:
        raise ValueError(f"This task gives {len(visuals)} images per question; HFUnlearnLMMS scores one image (or "
                         "none) per question, as the library's rows hold.")
    return {"question": question, "answer": answer, "image": visuals[0] if visuals else None}


def make_lmms_model(model, processing_class, batch_size: int = 8, max_new_tokens: int = 32):
    """An lmms-eval model (an instance of ``lmms_eval.api.model.lmms``) over an in-memory model and its processor."""
    _, lmms, _ = _import_lmms_eval()
    from lmms_eval.api.instance import GenerationResult

    class HFUnlearnLMMS(lmms):
        """lmms-eval's "simple" model interface over the library's collator. ``loglikelihood`` returns, per request,
        the continuation's summed token NLL (lmms-eval's convention: its ``multiple_choice`` picks the *argmin*,
        as its own models return losses) and whether every continuation token is the argmax; ``generate_until``
        generates greedily and cuts at the task's ``until`` strings."""

        is_simple = True

        def __init__(self):
            super().__init__()
            self.model, self.processing_class, self.batch_size = model, processing_class, batch_size
            self.collator = UnlearnDataCollator(processing_class, answer_only=True)
            self.evaluator = Evaluator(model, processing_class, {}, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens)

        def _doc(self, task: str, split: str, doc_id: int) -> dict:
            return self.task_dict[task][split][doc_id]

        def _visuals(self, doc_to_visual, task, split, doc_id):
            return doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else None

        @torch.no_grad()
        def loglikelihood(self, requests) -> list:
            rows = []
            for context, target, doc_to_visual, doc_id, task, split in (r.args for r in requests):
                continuation = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
                rows.append(_row(context, continuation, self._visuals(doc_to_visual, task, split, doc_id)))
            out = []
            was_training = self.model.training
            self.model.eval()
            try:
                for start in range(0, len(rows), self.batch_size):
                    batch = to_model_device(self.collator(rows[start:start + self.batch_size]), self.model)
                    labels = batch.pop("labels")[:, 1:]  # (B, T-1): token t+1 is predicted at position t
                    logp = torch.log_softmax(self.model(**batch).logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
                    answer = labels != IGNORE_INDEX
                    token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                    greedy = (logp.argmax(-1) == labels) | ~answer
                    for i in range(labels.shape[0]):
                        nll = -float(token_logp[i][answer[i]].sum())
                        # lmms-eval 0.7.3 turns any tuple response into its str() (api/instance.py:
                        # unwrap_generation_output); a GenerationResult's payload is passed through as it is.
                        out.append(GenerationResult(text=(nll, bool(greedy[i].all()))))
            finally:
                self.model.train(was_training)
            return out

        def generate_until(self, requests) -> list[str]:
            import datasets

            rows, stops, budgets = [], [], []
            for context, gen_kwargs, doc_to_visual, doc_id, task, split in (r.args for r in requests):
                rows.append(_row(context, ANSWER_PLACEHOLDER, self._visuals(doc_to_visual, task, split, doc_id)))
                gen_kwargs = gen_kwargs or {}
                until = gen_kwargs.get("until") or []
                stops.append([until] if isinstance(until, str) else list(until))
                budgets.append(int(gen_kwargs.get("max_new_tokens") or max_new_tokens))
            texts: list[str] = [""] * len(rows)
            for budget in sorted(set(budgets)):  # one generation pass per token budget the tasks ask for
                index = [i for i, b in enumerate(budgets) if b == budget]
                self.evaluator.max_new_tokens = budget
                out = self.evaluator.generate(datasets.Dataset.from_list([rows[i] for i in index]), desc="lmms-eval")
                for i, text in zip(index, out):
                    texts[i] = text
            for i, stop in enumerate(stops):
                for s in stop:
                    if s and s in texts[i]:
                        texts[i] = texts[i].split(s, 1)[0]
            return texts

        def generate_until_multi_round(self, requests) -> list[str]:
            raise NotImplementedError("HFUnlearnLMMS answers single-turn tasks (loglikelihood, multiple_choice, "
                                      "generate_until); this task is multi-round.")

    return HFUnlearnLMMS()


def multimodal_ability(model, processing_class, tasks: Sequence[str], include_path: str | Sequence[str] | None = None,
                       include_defaults: bool = True, batch_size: int = 8, max_new_tokens: int = 32,
                       limit: int | float | None = None, **simple_evaluate_kwargs: Any) -> dict[str, float]:
    """Run lmms-eval ``tasks`` on an in-memory (vision-)language model; see the module doc.

    ``include_path``: folder(s) of task YAML files of your own; ``include_defaults=False`` indexes only those (lmms-eval
    indexes its ~2000 built-in tasks otherwise: seconds); ``max_new_tokens``: the generation budget of tasks that set
    none; ``limit``: questions per task (lmms-eval's). Other keyword arguments go to ``simple_evaluate``."""
    evaluator, _, TaskManager = _import_lmms_eval()
    tasks = list(tasks)
    if not tasks:
        raise ValueError("Name at least one lmms-eval task, e.g. tasks=['mmbench_en_dev'].")
    lm = make_lmms_model(model, processing_class, batch_size=batch_size, max_new_tokens=max_new_tokens)
    manager = TaskManager(include_path=list(include_path) if isinstance(include_path, (list, tuple)) else include_path,
                          include_defaults=include_defaults)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise KeyError(f"lmms-eval knows no task {unknown}; check the name (lmms-eval --tasks list) or pass the folder "
                       "of its YAML as include_path=.")
    _skip_filelock_patch(evaluator)
    simple_evaluate_kwargs.setdefault("bootstrap_iters", 0)  # no stderr by resampling: minutes on large tasks
    simple_evaluate_kwargs.setdefault("log_samples", False)  # per-question outputs could carry forget-set content
    results = evaluator.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                        **simple_evaluate_kwargs)
    return summarize(results, tasks)
