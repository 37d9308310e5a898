"""The text demo (``hf-unlearn demo --text``): a tiny Llama that memorised fictitious authors, every text method.

1. Build the TOFU-shaped synthetic benchmark (``SyntheticTextConfig``) and train a tokenizer on its text.
2. Train **vanilla** (forget + retain authors + world facts) and the **oracle** (the same without the forget
   authors) with a plain ``transformers.Trainer``; both are cached under
   ``<cache>/text_demo/<hash of settings + versions>/{vanilla,oracle}``.
3. From vanilla, run each text method of the registry (``TEXT_METHODS``) on forget = forget_qa, retain = retain_qa,
   with the text budgets of ``TEXT_BUDGETS``; a method whose trainer is not importable is skipped with a note.
4. Evaluate every model with ``TextEvaluator.tofu_metrics`` against the oracle's statistics (forget quality,
   PrivLeak and the reference attack need the retain-only model); write ``results.json``, ``report.md`` and
   ``tradeoff.png``.

Each step is a function (``build_text_benchmark``, ``load_or_train_text_reference_models``, ``evaluate_text_model``,
``run_text_method``, ``run_text_seed``), so a multi-seed runner can call them per seed.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import importlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import datasets
import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM, set_seed

from ..data.synthetic_text import (
    VANILLA_TEXT_SPLITS,
    SyntheticTextConfig,
    build_synthetic_text_benchmark,
    oracle_text_training_set,
    text_benchmark_corpus,
    vanilla_text_training_set,
)
from ..evaluation.report import markdown_table, plot_tradeoff, write_text
from ..evaluation.stats import RowValues, summarise
from ..evaluation.text_evaluator import TextEvaluator
from ..tiny_models import tiny_llama
from ..trainers.registry import METHODS, MethodData, MethodUnavailableError
from .config import default_cache_dir, library_version
from .memorisation import MemorisationBar
from .pipeline import machine_info, run_method
from .references import REFERENCE_MODELS, cached_reference_models, train_to_criterion

try:  # the text methods' registry entries (SimNPO, RMU, IdkPO, UNDIAL), where this version has them
    importlib.import_module(f"{__package__}.text_methods")
except ModuleNotFoundError as err:  # only a missing module is expected; a broken one must fail loudly
    if err.name != f"{__package__}.text_methods":
        raise

CACHE_MARKER = "hf_unlearn_text_demo.json"
# Text methods in table order. Entries missing from the registry, or whose trainer is not importable, are skipped.
TEXT_METHODS = ("ga", "ga_diff", "kl_min", "npo", "simnpo", "rmu", "idkpo", "undial")
# Step budgets for the tiny text Llama (the registry's defaults are tuned for the tiny LLaVA), picked on seed 1 (never
# reported) from a small steps x learning-rate grid as the point whose forget-answer probability is nearest the
# oracle's while keeping the most retain probability. SimNPO/RMU/IdkPO/UNDIAL start at NPO's budget, untuned.
TEXT_BUDGETS: dict[str, dict[str, Any]] = {
    "ga": dict(max_steps=12, learning_rate=6e-4),
    "ga_diff": dict(max_steps=15, learning_rate=1e-3),
    "kl_min": dict(max_steps=30, learning_rate=5e-4),
    "npo": dict(max_steps=80, learning_rate=1e-3),
    "simnpo": dict(max_steps=80, learning_rate=1e-3),
    "rmu": dict(max_steps=80, learning_rate=1e-3),
    "idkpo": dict(max_steps=80, learning_rate=1e-3),
    "undial": dict(max_steps=80, learning_rate=1e-3),
}

# (key, header, direction), as ``evaluation.report.COLUMNS``.
TEXT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("forget_prob", "Forget prob", "→ oracle"),
    ("forget_rougeL", "Forget ROUGE-L", "→ oracle"),
    ("forget_truth_ratio", "Forget TR", "→ oracle"),
    ("forget_quality", "Forget quality", "↑"),
    ("forget_extraction_strength", "Extraction", "→ oracle"),
    ("retain_prob", "Retain prob", "↑"),
    ("retain_rougeL", "Retain ROUGE-L", "↑"),
    ("model_utility", "Model utility", "↑"),
    ("mia_min_k_pp_auc", "MIA Min-K%++", "→ 0.5"),
    ("mia_reference_auc", "MIA ref.", "→ 0.5"),
    ("privleak", "PrivLeak", "→ 0"),
    ("wall_time_s", "Time (s)", ""),
)

HOW_TO_READ_TEXT = """\
How to read the table (TOFU's metrics; the oracle never saw the forget authors, so its row is the target):

* **Forget prob** (→ oracle): mean per-token probability of the forget answers, exp(-mean NLL).
* **Forget ROUGE-L** (→ oracle): ROUGE-L recall of greedy answers to the forget questions. The oracle scores above 0
  because every answer shares its sentence template.
* **Forget TR** (→ oracle): TOFU's truth ratio on forget rows, mean(min(TR, 1/TR)) with TR = P(wrong answers) /
  P(paraphrased answer); 1 = cannot tell the true fact from wrong ones.
* **Forget quality** (↑): KS-test p-value between the model's and the oracle's forget truth ratios (1 for the
  oracle itself; below 0.05 = distinguishable from a model that never saw the forget authors).
* **Extraction** (→ oracle): extraction strength, how much of each forget answer greedy decoding reproduces.
* **Retain prob / Retain ROUGE-L / Model utility** (↑): the price paid; model utility is the harmonic mean of
  probability, ROUGE-L and truth ratio on the retain authors and the world facts.
* **MIA Min-K%++ / MIA ref.** (→ 0.5): membership AUCs, forget vs never-seen holdout authors (Min-K%++; the
  reference attack calibrated by the oracle). Near 1 = still memorised; near 0 = abnormally unlikely (also a leak).
* **PrivLeak** (→ 0): MUSE's relative Min-K% AUC gap to the oracle, in percent; -100 = fully memorised, positive =
  over-unlearned.
* **Time**: seconds of unlearning (training time for vanilla and oracle).
"""


@dataclass
class TextModelConfig:
    """Size of the tiny Llama (``hf_unlearn.testing.tiny_llama``)."""

    hidden_size: int = field(default=64, metadata={"help": "Hidden size."})
    num_layers: int = field(default=2, metadata={"help": "Decoder layers."})
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary trained on the benchmark text."})


@dataclass
class TextTrainingConfig:
    """The recipe of the vanilla and oracle models (plain ``Trainer``, answer-only loss)."""

    num_train_epochs: int = field(
        default=40, metadata={"help": "Epochs of the recipe (linear learning-rate decay over them); a vanilla short of "
                                      "the memorisation bar then tops up (memorisation), the oracle as many epochs."})
    learning_rate: float = field(default=3e-3, metadata={"help": "AdamW learning rate (linear decay)."})
    batch_size: int = field(default=16, metadata={"help": "Rows per step."})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warm-up steps."})
    memorisation: MemorisationBar | None = field(
        default_factory=MemorisationBar,
        metadata={"help": "When the vanilla has memorised its training splits; None: the recipe alone, unchecked "
                          "(pipeline tests only: nothing then says whether the vanilla memorised)."})


@dataclass
class TextDemoConfig:
    """Everything the text demo's results depend on. ``TextDemoConfig.quick()`` is the reduced run for tests."""

    benchmark: SyntheticTextConfig = field(default_factory=SyntheticTextConfig)
    model: TextModelConfig = field(default_factory=TextModelConfig)
    training: TextTrainingConfig = field(default_factory=TextTrainingConfig)
    seed: int = field(default=0, metadata={"help": "Seed of the benchmark, the models and every training run."})
    eval_batch_size: int = field(default=32, metadata={"help": "Rows per evaluation forward pass."})
    max_new_tokens: int = field(default=16, metadata={"help": "Generation budget for ROUGE-L (answers are short)."})
    budgets: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(TEXT_BUDGETS), metadata={
        "help": "Per-method training overrides (steps, learning rate) for the tiny Llama."})

    def __post_init__(self):
        self.benchmark = replace(self.benchmark, seed=self.seed)  # one seed governs everything

    @classmethod
    def quick(cls, seed: int = 0) -> TextDemoConfig:
        """A reduced benchmark (6 authors, 2 of them forgotten) and recipe: about 20 s on 2 cores, for tests and CI."""
        return cls(benchmark=SyntheticTextConfig(num_authors=6, num_holdout_authors=2, forget_ratio=0.34,
                                                 num_world_facts=6),
                   training=TextTrainingConfig(num_train_epochs=40, learning_rate=5e-3, batch_size=8,
                                                    warmup_steps=0), seed=seed)

    def settings(self) -> dict[str, Any]:
        return {"benchmark": asdict(self.benchmark), "model": asdict(self.model), "training": asdict(self.training),
                "seed": self.seed, "eval_batch_size": self.eval_batch_size, "max_new_tokens": self.max_new_tokens,
                "budgets": self.budgets}

    def cache_key(self) -> str:
        """Hash of what the vanilla and oracle weights depend on (settings and library versions)."""
        payload = {"benchmark": asdict(self.benchmark), "model": asdict(self.model), "training": asdict(self.training),
                   "seed": self.seed, "hf_unlearn": library_version(), "transformers": transformers.__version__,
                   "torch": torch.__version__.split("+")[0], "datasets": datasets.__version__}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------------
# Benchmark and reference models
# ------------------------------------------------------------------------------------------------------------------
def build_text_benchmark(config: TextDemoConfig) -> datasets.DatasetDict:
    """The synthetic text benchmark of ``config`` (its seed included)."""
    return build_synthetic_text_benchmark(config.benchmark)


def train_text_reference_model(kind: str, benchmark: datasets.DatasetDict, config: TextDemoConfig,
                               output_dir: str, vanilla_epochs: int | None = None
                               ) -> tuple[LlamaForCausalLM, Any, float, dict[str, Any]]:
    """Train the ``vanilla`` (until it memorised every split it trains on) or ``oracle`` (as many epochs) tiny Llama
    from scratch; returns (model, tokenizer, seconds, {"epochs": ...})."""
    if kind not in REFERENCE_MODELS:
        raise ValueError(f"kind must be one of {REFERENCE_MODELS}, got {kind!r}.")
    start = time.perf_counter()
    train_set = vanilla_text_training_set(benchmark) if kind == "vanilla" else oracle_text_training_set(benchmark)
    # Same tokenizer and initial weights for both: only the training data differs.
    model, tokenizer = tiny_llama(seed=config.seed, corpus=text_benchmark_corpus(benchmark), **asdict(config.model))
    memorised = {name: benchmark[name] for name in VANILLA_TEXT_SPLITS}
    epochs = train_to_criterion(kind, model, tokenizer, train_set, memorised, config.training, config.seed,
                                output_dir, vanilla_epochs)
    return model, tokenizer, time.perf_counter() - start, {"epochs": epochs}


def load_or_train_text_reference_models(
    benchmark: datasets.DatasetDict, config: TextDemoConfig, cache_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """``{"vanilla": {...}, "oracle": {...}}`` with ``model``, ``tokenizer``, ``path``, ``cached`` and
    ``train_time_s``, cached under ``<cache>/text_demo/<hash of settings and versions>`` (``cached_reference_models``:
    written to a temporary directory and renamed once complete)."""
    root = os.path.join(cache_dir or default_cache_dir(), "text_demo", config.cache_key())

    def load(path: str):
        return LlamaForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)

    def train(kind: str, scratch: str, vanilla_epochs: int | None = None):
        return train_text_reference_model(kind, benchmark, config, scratch, vanilla_epochs)

    refs = cached_reference_models(root, train, load, {"settings": config.settings(), "cache_key": config.cache_key()},
                                   marker_name=CACHE_MARKER, log=log, label="text demo")
    for ref in refs.values():
        ref["tokenizer"] = ref.pop("processor")
    return refs


# ------------------------------------------------------------------------------------------------------------------
# Methods and evaluation
# ------------------------------------------------------------------------------------------------------------------
def text_method_data(benchmark: datasets.DatasetDict) -> MethodData:
    """Forget = the forget authors' questions; retain = the retain authors' (what TOFU unlearning gets)."""
    return MethodData(forget=benchmark["forget_qa"], retain=benchmark["retain_qa"],
                      preserve={"retain": benchmark["retain_qa"]})


def text_evaluator(model, tokenizer, benchmark: datasets.DatasetDict, config: TextDemoConfig) -> TextEvaluator:
    return TextEvaluator(model, tokenizer, benchmark, batch_size=config.eval_batch_size,
                         max_new_tokens=config.max_new_tokens)


def oracle_reference(oracle, tokenizer, benchmark: datasets.DatasetDict, config: TextDemoConfig) -> dict[str, Any]:
    """The oracle's statistics every other model is compared with (computed once per seed)."""
    return text_evaluator(oracle, tokenizer, benchmark, config).reference_statistics()


def evaluate_text_model(model, tokenizer, benchmark: datasets.DatasetDict, config: TextDemoConfig,
                        reference: Mapping[str, Any] | None = None, return_per_row: bool = False):
    """TOFU's metrics of one model (``TextEvaluator.tofu_metrics``) -> ``{metric: value}``; with
    ``return_per_row=True`` also ``{metric: per-row values}`` (for intervals over rows)."""
    set_seed(config.seed)
    evaluator = text_evaluator(model, tokenizer, benchmark, config)
    results = evaluator.tofu_metrics(reference)
    return (results, dict(evaluator.per_row)) if return_per_row else results


def run_text_method(name: str, vanilla, tokenizer, data: MethodData, config: TextDemoConfig
                    ) -> tuple[torch.nn.Module, float, str | None]:
    """Unlearn a copy of ``vanilla`` with the registered method and its text budget; (model, seconds, note).

    Raises ``MethodUnavailableError`` when the method's trainer cannot be imported.
    """
    model, seconds, note, _ = run_method(name, vanilla, tokenizer, data, config, **config.budgets.get(name, {}))
    return model, seconds, note


def available_text_methods(methods: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(registered methods to run, notes on the requested text methods that are not registered yet).

    A name that is neither registered nor one of ``TEXT_METHODS`` is a typo: ``ValueError`` naming both lists.
    """
    requested = list(TEXT_METHODS if methods is None else methods)
    unknown = [m for m in requested if m not in METHODS and m not in TEXT_METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; registered methods: {sorted(METHODS)}; text methods: "
                         f"{list(TEXT_METHODS)}.")
    skipped = [f"{m}: skipped, not registered in this version (its entry comes with its trainer)."
               for m in requested if m not in METHODS]
    return [m for m in requested if m in METHODS], skipped


def run_text_seed(config: TextDemoConfig, methods: Sequence[str] | None = None, cache_dir: str | None = None,
                  log: Callable[[str], None] = print, show_progress: bool = False) -> dict[str, Any]:
    """Vanilla, oracle and every method at ``config.seed``: ``{"methods": {name: metrics}, "notes": [...],
    "num_questions": {split: rows}}`` (metrics include ``wall_time_s``)."""
    set_seed(config.seed)
    benchmark = build_text_benchmark(config)
    refs = load_or_train_text_reference_models(benchmark, config, cache_dir, log)
    tokenizer = refs["vanilla"]["tokenizer"]
    reference = oracle_reference(refs["oracle"]["model"], tokenizer, benchmark, config)
    run, notes = available_text_methods(methods)

    from tqdm.auto import tqdm

    results: dict[str, dict[str, float | None]] = {}
    bar = tqdm(total=len(REFERENCE_MODELS) + len(run), desc="text demo", disable=not show_progress)
    for kind in REFERENCE_MODELS:
        results[kind] = {**evaluate_text_model(refs[kind]["model"], tokenizer, benchmark, config, reference),
                         "wall_time_s": refs[kind]["train_time_s"]}
        bar.update(1)
    data = text_method_data(benchmark)
    for name in run:
        bar.set_postfix_str(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model, seconds, note = run_text_method(name, refs["vanilla"]["model"], tokenizer, data, config)
        except MethodUnavailableError as err:
            notes.append(f"{name}: skipped, its trainer is not importable ({err}).")
            log(f"[text demo] skipping {name}: {err}")
            bar.update(1)
            continue
        if note:
            notes.append(note)
        results[name] = {**evaluate_text_model(model, tokenizer, benchmark, config, reference),
                         "wall_time_s": seconds}
        del model
        bar.update(1)
    bar.close()
    return {"methods": results, "notes": notes, "num_questions": {k: v.num_rows for k, v in benchmark.items()},
            "cached": {k: refs[k]["cached"] for k in REFERENCE_MODELS},
            "epochs": {k: refs[k].get("epochs") for k in REFERENCE_MODELS}}


def render_text_report(results: Mapping[str, Mapping[str, float]], settings: Mapping[str, object] | None = None,
                       notes: Sequence[str] = (), plot_name: str | None = "tradeoff.png",
                       intervals: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> str:
    """The report as Markdown: settings, the table, notes, how to read it and the trade-off plot."""
    parts = ["# hf_unlearn text demo", ""]
    if settings:
        parts += ["Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()), ""]
    parts += [markdown_table(results, TEXT_COLUMNS, intervals=intervals), ""]
    parts += [f"* {n}" for n in notes] + ([""] if notes else [])
    parts += [HOW_TO_READ_TEXT]
    if plot_name:
        parts += ["The plot puts each method at (forget-answer probability, model utility): the best place is the",
                  "oracle's forget probability with the vanilla model's utility.", "",
                  f"![forget/utility trade-off]({plot_name})", ""]
    return "\n".join(parts)


def write_text_outputs(payload: dict[str, Any], output_dir: str, notes: Sequence[str] = (),
                       total_time_s: float | None = None) -> None:
    """Write ``results.json``, ``report.md`` and ``tradeoff.png`` into ``output_dir`` (each atomically)."""
    os.makedirs(output_dir, exist_ok=True)
    write_text(os.path.join(output_dir, "results.json"), json.dumps(payload, indent=2) + "\n")
    b = payload["benchmark"]["benchmark"]
    shown = {k: b[k] for k in ("num_authors", "num_holdout_authors", "forget_ratio")}
    seeds = payload["benchmark"].get("seeds", [payload["benchmark"].get("seed")])
    shown["seeds"] = ",".join(str(s) for s in seeds)
    intervals = payload.get("intervals") if len(seeds) > 1 else None
    if total_time_s is not None:
        notes = [*notes, f"Total wall time of this run: {total_time_s:.1f} s (vanilla/oracle rows: their training "
                         "time, possibly from an earlier run whose models were cached)."]
    write_text(os.path.join(output_dir, "report.md"),
               render_text_report(payload["methods"], shown, notes, intervals=intervals))
    plot_tradeoff(payload["methods"], os.path.join(output_dir, "tradeoff.png"), x="forget_prob", y="model_utility",
                  chance=None, intervals=intervals)


def summarise_text_seeds(seed_runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means and 95% intervals over seeds (each TOFU metric is one number per seed: the bootstrap resamples seeds;
    several of them, forget quality and model utility among them, are not means over rows)."""
    models = [m for m in seed_runs[0]["methods"] if all(m in r["methods"] for r in seed_runs)]
    keys = [k for k, _, _ in TEXT_COLUMNS]
    per_metric = {
        key: {m: [RowValues.of([r["methods"][m][key]]) for r in seed_runs] for m in models
              if all(r["methods"][m].get(key) is not None for r in seed_runs)}
        for key in keys
    }
    return summarise({k: v for k, v in per_metric.items() if v}, baselines=REFERENCE_MODELS)


def run_text_demo(config: TextDemoConfig | None = None, output_dir: str = "hf_unlearn_text_demo",
                  methods: Sequence[str] | None = None, cache_dir: str | None = None, show_progress: bool = True,
                  log: Callable[[str], None] = print, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Run the text demo end to end at each seed of ``seeds`` (default: ``config.seed``); returns the content of
    ``results.json`` (also written): means, intervals over seeds and per-seed values, as the VLM demo."""
    config = config or TextDemoConfig()
    seeds = list(seeds) if seeds is not None else [config.seed]
    start = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    runs = [run_text_seed(replace(config, seed=s), methods, cache_dir, log, show_progress) for s in seeds]
    summary = summarise_text_seeds(runs)
    notes = list(dict.fromkeys(n for r in runs for n in r["notes"]))
    settings = {**config.settings(), "seeds": seeds, "hf_unlearn_version": library_version(),
                "cache_keys": {str(s): replace(config, seed=s).cache_key() for s in seeds}}
    payload = {"benchmark": settings, "methods": summary["means"], "intervals": summary["intervals"],
               "paired": summary["paired"], "per_seed": {str(s): r["methods"] for s, r in zip(seeds, runs)},
               "num_questions": runs[0]["num_questions"], "notes": notes}
    total = time.perf_counter() - start
    payload["run"] = {"date": started, "wall_time_s": round(total, 1), "machine": machine_info(),
                      "reference_epochs": {str(s): r["epochs"] for s, r in zip(seeds, runs)}}
    write_text_outputs(payload, output_dir, notes, total)
    log(markdown_table(payload["methods"], TEXT_COLUMNS, intervals=payload["intervals"] if len(seeds) > 1 else None))
    for n in notes:
        log(f"* {n}")
    log(f"[text demo] seeds {seeds}: total wall time {total:.1f} s; results in {os.path.abspath(output_dir)}")
    return payload


def run_text_cli(args: argparse.Namespace) -> int:
    """``hf-unlearn demo --text``: the same options as the VLM demo."""
    methods = None
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in METHODS and m not in TEXT_METHODS]
        if unknown:
            print(f"error: unknown method(s) {unknown}; text methods: {', '.join(TEXT_METHODS)}.", file=sys.stderr)
            return 2
    if args.list_methods:
        for name in TEXT_METHODS:
            spec = METHODS.get(name)
            print(f"{name:12s} {spec.description if spec else '(not registered in this version)'}")
        return 0
    threads = 1 if args.threads is None else args.threads  # the tiny text models gain nothing from more
    if threads < 1:
        print(f"error: --threads must be >= 1, got {threads}.", file=sys.stderr)
        return 2
    torch.set_num_threads(threads)
    seeds = list(getattr(args, "seeds", None) or [args.seed])
    config = TextDemoConfig.quick(seed=seeds[0]) if args.quick else TextDemoConfig(seed=seeds[0])
    run_text_demo(config, output_dir=args.output, methods=methods, cache_dir=args.cache_dir,
                  show_progress=not args.no_progress, seeds=seeds)
    return 0
