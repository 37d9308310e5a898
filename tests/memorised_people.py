"""A tiny LLaVA that memorised a small synthetic benchmark, built once per test session.

Richer than conftest's ``memorised_llava`` (one solid-colour portrait kind, no options): procedurally drawn portraits
of 6 trained people (2 forget, 4 retain) with 5 image questions and 5 text questions each, 4-way options, and
3 *holdout* people whose text facts the model learnt but whose portraits it never saw. Their image questions are what
a retrained model sees for the forget people: the stop rule's target.

Memorised to an answer NLL of about 0.003 (p ~ 0.997 per token), the regime where gradient ascent's gradient vanishes
and where issue 18 measured MMUnlearner and VKD doing nothing.
"""

from __future__ import annotations

import functools

import datasets
import pytest
import torch

from conftest import built_once, load_llava, memorise_and_save

BENCH = dict(num_people=6, num_holdout_people=3, forget_ratio=0.34, num_general=0)
SEED = 0


@functools.cache
def benchmark(seed: int = SEED) -> datasets.DatasetDict:
    from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig, build_synthetic_benchmark

    return build_synthetic_benchmark(SyntheticBenchmarkConfig(**BENCH, seed=seed))


TRAINED = ("forget_vqa", "forget_qa", "retain_vqa", "retain_qa", "holdout_qa")


def vanilla_rows(bench) -> datasets.Dataset:
    """What the memorised model trained on: every split except the holdout people's image questions."""
    return datasets.concatenate_datasets([bench[k] for k in TRAINED])


def train_memorised(path: str, seed: int = SEED) -> str:
    """Fine-tune a tiny LLaVA on ``vanilla_rows`` with a plain ``Trainer`` (100 epochs) and save it under ``path``;
    returns the model's folder."""
    from hf_unlearn.data.synthetic import benchmark_corpus
    from hf_unlearn.testing import tiny_llava

    bench = benchmark(seed)
    model, processor = tiny_llava(seed=seed, corpus=benchmark_corpus(bench))
    return memorise_and_save(model, processor, vanilla_rows(bench), path, epochs=100, batch_size=8, seed=seed,
                             warmup_steps=5, splits={name: bench[name] for name in TRAINED})


@pytest.fixture(scope="session")
def memorised_people(tmp_path_factory) -> str:
    """Path of the memorised model (built once per session, whichever test module or test worker asks first)."""
    return built_once(tmp_path_factory, "memorised_people", train_memorised)


load = load_llava


def splits(bench) -> dict[str, datasets.Dataset]:
    """The sets a user passes: forget (image questions), retain (other people's image questions + all text
    questions: the framing of MMUnlearner, whose text knowledge is kept), holdout, and the text-only rows."""
    text = datasets.concatenate_datasets([bench["forget_qa"], bench["retain_qa"]])
    return {
        "forget": bench["forget_vqa"],
        "retain": datasets.concatenate_datasets([bench["retain_vqa"], text]),
        "retain_vqa": bench["retain_vqa"],
        "holdout": bench["holdout_vqa"],
        "text": text,
    }


@torch.no_grad()
def mean_nll(model, processor, rows) -> float:
    """Token-mean answer NLL of ``rows`` in one batch (the Trainer's loss)."""
    from hf_unlearn import UnlearnDataCollator

    was_training = model.training
    model.eval()
    loss = model(**UnlearnDataCollator(processor)([{k: r[k] for k in ("image", "question", "answer")}
                                                   for r in rows])).loss.item()
    model.train(was_training)
    return loss
