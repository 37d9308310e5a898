"""The lmms-eval bridge, offline: two tasks of our own (a local YAML folder, local parquet data with images) run on the
tiny LLaVA through ``lmms_eval.evaluator.simple_evaluate``, and their metrics equal what the library computes itself.

Skipped without lmms-eval (``pip install 'hf_unlearn[lmms-eval]'``, docs/lmms_eval.md)."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
from datasets import Dataset

from hf_unlearn import Evaluator
from hf_unlearn.evaluation.lmms_eval_bridge import multimodal_ability
from hf_unlearn.testing import tiny_llava
from hf_unlearn.testing.toy import JOBS, NAMES

# Not importorskip: importing lmms-eval at collection would run its warnings.filterwarnings("ignore") for the whole
# worker; the bridge imports it inside a warnings.catch_warnings() block (checked below).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None,
                                reason="the lmms-eval extra is not installed")

CHOICE_YAML = """task: hfu_tiny_jobs
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
GENERATE_YAML = """task: hfu_tiny_say
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "{{{{question}}}}"
doc_to_target: expected
generation_kwargs:
  max_new_tokens: 4
process_results: !function utils.same_as_expected
metric_list:
  - metric: same
    aggregation: mean
    higher_is_better: true
"""
UTILS = '''def doc_to_visual(doc):
    return [doc["image"].convert("RGB")] if doc.get("image") is not None else []


def same_as_expected(doc, results):
    return {"same": float(results[0] == doc["expected"])}
'''


@pytest.fixture(scope="module")
def llava(toy_data):
    model, processor = tiny_llava(seed=0, corpus=NAMES + JOBS)
    rows = [r for r in toy_data["all"] if r["image"] is not None][:4]
    return model.eval(), processor, rows


def test_a_local_multimodal_task_runs_offline_and_its_metrics_are_ours(llava, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    model, processor, rows = llava
    choices = sorted({r["answer"] for r in rows})
    evaluator = Evaluator(model, processor, {}, batch_size=8, option_score="sum", max_new_tokens=4)
    # Multiple choice: lmms-eval's acc is the argmin of the continuations' summed NLL = argmax of the summed log-prob,
    # which Evaluator.option_scores computes on its own code path (one option per choice, the " " delimiter kept).
    mcq = Dataset.from_list([{"question": r["question"], "answer": r["answer"], "image": r["image"],
                              "options": [" " + c for c in choices], "label": choices.index(r["answer"])} for r in rows])
    scores = evaluator.option_scores(mcq)
    top2 = np.sort(scores, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-3  # no near-tie: float32 summation order cannot flip a pick
    expected_acc = float((scores.argmax(1) == np.array(mcq["label"])).mean())
    # Generation: the bridge's greedy answers (4 new tokens) equal the library's own on the same prompts.
    expected = evaluator.generate(Dataset.from_list([{**r, "answer": "."} for r in rows]))
    Dataset.from_list([{"question": r["question"], "image": r["image"], "choices": choices,
                        "label": choices.index(r["answer"])} for r in rows]).to_parquet(tmp_path / "jobs.parquet")
    Dataset.from_list([{"question": r["question"], "image": r["image"], "expected": e}
                       for r, e in zip(rows, expected)]).to_parquet(tmp_path / "say.parquet")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "jobs.yaml").write_text(CHOICE_YAML.format(data=tmp_path / "jobs.parquet"))
    (tasks / "say.yaml").write_text(GENERATE_YAML.format(data=tmp_path / "say.parquet"))
    (tasks / "utils.py").write_text(UTILS)

    results = multimodal_ability(model, processor, ["hfu_tiny_jobs", "hfu_tiny_say"], include_path=str(tasks),
                                 include_defaults=False, batch_size=8)
    assert results["hfu_tiny_jobs/acc"] == expected_acc
    assert results["hfu_tiny_say/same"] == 1.0
    assert not model.training  # left as it was found
    assert ("ignore", None, Warning, None, 0) not in warnings.filters  # lmms-eval's import silenced nothing here


def test_an_unknown_task_is_named(llava, tmp_path):
    model, processor, _ = llava
    with pytest.raises(KeyError, match=r"lmms-eval knows no task \['no_such_task'\]"):
        multimodal_ability(model, processor, ["no_such_task"], include_path=str(tmp_path), include_defaults=False)
