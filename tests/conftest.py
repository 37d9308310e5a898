"""Shared fixtures: offline environment, a tiny LLaVA that has memorised a toy people dataset."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest
import torch

# Tiny models gain nothing from a second thread, and OpenMP spin-waits make 2 threads several times slower when
# another process shares the cores.
torch.set_num_threads(1)

from hf_unlearn.demo.config import DemoTrainingConfig  # noqa: E402
from hf_unlearn.demo.memorisation import MemorisationBar  # noqa: E402
from hf_unlearn.testing.toy import JOBS, NAMES, toy_people  # noqa: E402

FLOAT32_UNIT_ROUNDOFF = 2.0**-24  # u: a float32 operation's result is within u * |result| of the exact value


def reduction_tolerance(scale: float, terms: int) -> float:
    """How far two float32 evaluations of one reduction may differ when only the summation order differs (another
    CPU's vector kernels, another batch layout): each is within (n - 1) u sum|x_i| of the exact value (Higham,
    *Accuracy and Stability of Numerical Algorithms*, eq. 4.4), so they are within twice that of each other.
    ``scale`` bounds sum|x_i|, ``terms`` the longest chain of additions feeding the result."""
    return 2 * (terms - 1) * FLOAT32_UNIT_ROUNDOFF * scale


def built_once(tmp_path_factory, name: str, build) -> str:
    """``build(folder) -> path`` run once per test session, whichever pytest-xdist worker asks first (the others wait
    for it, then reuse its result): the expensive fixtures (memorised models, the quick demo's references)."""
    import json

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    folder, done = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps({"path": str(build(folder))}))
        return json.loads(done.read_text())["path"]


def perturbed_trainer(trainer_cls, config_cls, tmp_path, **config):
    """A trainer on a fresh seeded tiny Llama, its (forget, retain) batch, and the policy's trainable parameters moved
    away from the reference by seeded N(0, 0.02) noise (the reference stays at the starting weights)."""
    from datasets import Dataset

    from hf_unlearn.testing import tiny_llama

    rows = [{"question": f"What is the job of {n}?", "answer": f"{n} works as a {j}."} for n, j in zip(NAMES, JOBS)]
    rows += [{"question": f"Who works as a {j}?", "answer": n} for n, j in zip(NAMES, JOBS)]
    model, tok = tiny_llama(seed=0, corpus=NAMES + JOBS)
    args = config_cls(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to="none",
                      seed=0, **config)
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows[:4]),
                          retain_dataset=Dataset.from_list(rows[4:8]),
                          processing_class=tok)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # RMU freezes (and shares with its reference) all but a few matrices
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    batch = trainer.data_collator([trainer.pairing[i] for i in range(4)])
    reference, _ = tiny_llama(seed=0, corpus=NAMES + JOBS)
    reference.load_state_dict(start)
    model.train()  # tiny Llama has no dropout: train and eval forwards agree
    return trainer, model, reference.eval(), batch


def with_alternatives(forget, answers: list[str]):
    """``forget`` plus an ``alternative`` column (AltPO's preferred answers): for each row, the first of ``answers``
    that differs from the row's own answer (rows of any format: the answer is read as training reads it)."""
    from hf_unlearn.data.rows import row_answers

    own = row_answers(forget)
    return forget.add_column("alternative", [next(a for a in answers if a != o.strip()) for o in own])


ALTERNATE_ARGS = {"altpo": {"alternate_column": "alternative"}}  # the config keys that read with_alternatives' column


def free_port() -> int:
    """A TCP port free on the loopback interface now (for a torchrun master or a local server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def toy_data():
    return toy_people()


# The bar every memorised fixture model is trained to (hf_unlearn.demo.memorisation): tests may assert it, never 1.0.
MEMORISED = MemorisationBar()


def memorise_and_save(model, processing_class, rows, out, epochs: int, batch_size: int = 4, seed: int = 0,
                      warmup_steps: int = 0, splits: dict | None = None) -> str:
    """Fine-tune ``model`` with a plain ``transformers.Trainer`` on ``rows`` (lr 3e-3, linear decay over ``epochs``),
    topped up until ``splits`` (default: the rows themselves) clear ``MEMORISED`` on this CPU, and save it with its
    processor or tokenizer under ``out / "model"``; returns that path."""
    from pathlib import Path

    from hf_unlearn.demo.references import train_to_criterion

    out = Path(out)
    recipe = DemoTrainingConfig(num_train_epochs=epochs, learning_rate=3e-3, batch_size=batch_size,
                                warmup_steps=warmup_steps, memorisation=MEMORISED)
    train_to_criterion("vanilla", model, processing_class, rows, splits or {"trained": rows}, recipe, seed,
                       str(out / "run"))
    model.save_pretrained(out / "model")
    processing_class.save_pretrained(out / "model")
    return str(out / "model")


def fit_batch(model, batch, steps: int, lr: float = 3e-3):
    """Full-batch AdamW on one collated batch until memorised (seeded); returns the model in eval mode."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="session")
def memorised_llava(toy_data, tmp_path_factory):
    """Path of a tiny LLaVA fine-tuned until it memorised every toy row (plain transformers.Trainer)."""
    from hf_unlearn.testing import tiny_llava

    model, processor = tiny_llava(corpus=NAMES + JOBS)
    return memorise_and_save(model, processor, toy_data["all"], tmp_path_factory.mktemp("memorised"), epochs=60)


def load_llava(path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(path), AutoProcessor.from_pretrained(path)


@torch.no_grad()
def mean_nll(model, processor, dataset) -> float:
    from hf_unlearn import UnlearnDataCollator

    was_training = model.training
    model.eval()
    loss = model(**UnlearnDataCollator(processor)(list(dataset))).loss.item()
    model.train(was_training)
    return loss


@pytest.fixture(scope="session")
def quick_demo_cache(tmp_path_factory):
    """A cache folder holding the quick demo's vanilla and oracle at seed 0, trained once per test session."""
    from hf_unlearn.data.synthetic import build_synthetic_benchmark
    from hf_unlearn.demo import DemoConfig
    from hf_unlearn.demo.references import load_or_train_reference_models

    def build(cache):
        config = DemoConfig.quick(seed=0)
        load_or_train_reference_models(build_synthetic_benchmark(config.benchmark), config, str(cache), False,
                                       lambda line: None)
        return cache

    return built_once(tmp_path_factory, "quick_demo_cache", build)


# The small built-in benchmark of the command-line tests, and a tiny LLaVA folder whose tokenizer knows its text.
CLI_BENCH = dict(num_people=4, num_holdout_people=2, forget_ratio=0.25, num_general=4)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig, benchmark_corpus, build_synthetic_benchmark
    from hf_unlearn.testing import tiny_llava

    bench = build_synthetic_benchmark(SyntheticBenchmarkConfig(**CLI_BENCH))
    model, processor = tiny_llava(corpus=benchmark_corpus(bench))
    path = tmp_path_factory.mktemp("model") / "tiny-llava"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
