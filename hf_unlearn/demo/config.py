"""What the demo's results depend on: benchmark size, model size, the vanilla/oracle recipe, the attack, the seed."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import datasets
import torch
import transformers

from ..data.synthetic import BENCHMARK_VERSION, SyntheticBenchmarkConfig
from ..evaluation.attacks import RelearnConfig
from ..version import __version__
from .memorisation import MemorisationBar

CACHE_ENV = "HF_UNLEARN_CACHE"


def library_version() -> str:
    return __version__


@dataclass
class DemoModelConfig:
    """Size of the tiny LLaVA (``hf_unlearn.testing.tiny_llava``); the image size is the benchmark's."""

    hidden_size: int = field(default=64, metadata={"help": "Language-model hidden size."})
    num_layers: int = field(default=2, metadata={"help": "Language-model decoder layers."})
    vision_hidden_size: int = field(default=32, metadata={"help": "Vision-tower hidden size."})
    vision_layers: int = field(default=2, metadata={"help": "Vision-tower layers."})
    patch_size: int = field(default=8, metadata={"help": "Vision patch size (32x32 images -> 16 image tokens)."})
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary trained on the benchmark text."})


@dataclass
class DemoTrainingConfig:
    """The recipe of the vanilla and oracle models (plain ``Trainer``, answer-only loss)."""

    num_train_epochs: int = field(
        default=80, metadata={"help": "Epochs of the recipe (linear learning-rate decay over them); a vanilla short of "
                                      "the memorisation bar then tops up (memorisation), the oracle as many epochs."})
    learning_rate: float = field(default=3e-3, metadata={"help": "AdamW learning rate (linear decay)."})
    batch_size: int = field(default=16, metadata={"help": "Rows per step."})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warm-up steps."})
    memorisation: MemorisationBar | None = field(
        default_factory=MemorisationBar,
        metadata={"help": "When the vanilla has memorised its training splits; None: the recipe alone, unchecked "
                          "(pipeline tests only: nothing then says whether the vanilla memorised)."})


@dataclass
class DemoConfig:
    """Everything the demo's results depend on. ``DemoConfig.quick()`` is the reduced run for tests and CI."""

    benchmark: SyntheticBenchmarkConfig = field(default_factory=SyntheticBenchmarkConfig)
    model: DemoModelConfig = field(default_factory=DemoModelConfig)
    training: DemoTrainingConfig = field(default_factory=DemoTrainingConfig)
    relearn: RelearnConfig | None = field(default_factory=RelearnConfig)
    seed: int = field(default=0, metadata={"help": "Seed of the benchmark, the models and every training run."})
    eval_batch_size: int = field(default=16, metadata={"help": "Questions per evaluation forward pass."})
    max_new_tokens: int = field(default=8, metadata={"help": "Generation budget for ROUGE-L."})

    def __post_init__(self):
        # One seed governs everything, so `--seed N` changes people, portraits, initialisation and batch order.
        self.benchmark = replace(self.benchmark, seed=self.seed)
        if self.relearn is not None:
            self.relearn = replace(self.relearn, seed=self.seed)

    @classmethod
    def quick(cls, seed: int = 0) -> DemoConfig:
        """A reduced benchmark (8 people, 20 forget-VQA questions) and recipe that finishes in a minute or two on 2
        cores: for tests and CI, not for conclusions."""
        return cls(
            benchmark=SyntheticBenchmarkConfig(num_people=8, num_holdout_people=3, num_validation_people=2,
                                               forget_ratio=0.25, num_general=16),
            training=DemoTrainingConfig(num_train_epochs=40, batch_size=8),
            relearn=RelearnConfig(),
            seed=seed,
        )

    def settings(self) -> dict[str, Any]:
        """All settings as plain JSON values."""
        return {
            "benchmark": asdict(self.benchmark), "model": asdict(self.model), "training": asdict(self.training),
            "relearn": asdict(self.relearn) if self.relearn is not None else None, "seed": self.seed,
            "eval_batch_size": self.eval_batch_size, "max_new_tokens": self.max_new_tokens,
        }

    def cache_key(self) -> str:
        """Hash of what the vanilla and oracle weights depend on (settings and library versions)."""
        payload = {
            "benchmark": asdict(self.benchmark), "model": asdict(self.model), "training": asdict(self.training),
            "seed": self.seed, "benchmark_version": BENCHMARK_VERSION, "hf_unlearn": library_version(), "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0], "datasets": datasets.__version__,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> str:
    """``$HF_UNLEARN_CACHE`` or ``~/.cache/hf_unlearn``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "hf_unlearn")


