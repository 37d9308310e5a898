"""``hf-unlearn eval --model RUN_DIR_OR_HUB_ID [--benchmark NAME | --forget F --retain R --holdout H]``.

What it scores, said on the first line of its output and in the JSON:

* by default, **the run's own data**: a run directory of ``hf-unlearn run`` records what it trained on
  (``hf_unlearn_run.json``). A run on your rows is scored on those rows (``<set>_nll``, ``<set>_rougeL``, and
  ``mia_auc`` forget vs holdout); a run on the built-in benchmark on that benchmark, with its recorded settings (so
  is a demo model). A model that records no data is refused: name what to score.
* ``--benchmark builtin|mllmu:PATH|clear:PATH|tofu:PATH|muse:PATH|fiubench:PATH|umubench:PATH|safeeraser:PATH|
  covubench:PATH``: that benchmark (accuracy per split, ROUGE-L of generation-only splits, membership AUC; TOFU's
  and MUSE's own metrics), with a note when the model was trained on other data (docs/benchmark_data.md).
* ``--forget / --retain / --holdout``: your own rows (any format of docs/data_formats.md).

``--model`` is looked up as a local folder first, then as a Hub id (``org/name``); a LoRA run's adapter loads on its
base model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

RUN_INFO = "hf_unlearn_run.json"  # written by `hf-unlearn run` next to the model
DEMO_INFO = "hf_unlearn_demo.json"  # written by the demo next to its cached vanilla / oracle models


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="Evaluate a saved model on the data its run trained on, a named benchmark or your rows; write JSON.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True,
                        help="A saved model folder (looked up first) or a Hub id such as org/name.")
    parser.add_argument("--benchmark", default=None,
                        help="Score a benchmark instead of the run's own data: 'builtin' (synthetic), 'mllmu:PATH' "
                             "(MLLMU-Bench snapshot or Hub id), 'clear:PATH', 'tofu:PATH', 'muse:PATH', "
                             "'fiubench:PATH', 'umubench:PATH', 'safeeraser:PATH' or 'covubench:PATH' "
                             "(docs/benchmark_data.md).")
    for name in ("forget", "retain", "holdout"):
        parser.add_argument(f"--{name}", default=None,
                            help=f"Your own {name} rows (a file, save_to_disk folder or Hub dataset id) instead of "
                                 "the run's.")
    parser.add_argument("--forget-split", default=None,
                        help="Forget split of MLLMU-Bench and UMU-Bench (forget_5/10/15, default forget_5), CLEAR "
                             "(forget01/05/10, default forget05), TOFU (forget01/05/10, default forget10), FIUBench "
                             "(forget1/5/10, default forget5) or CoVUBench (forget5/10/15/20, default forget5).")
    parser.add_argument("--output", default=None,
                        help="JSON file to write (default: eval_results.json in the current directory).")
    parser.add_argument("--batch-size", type=int, default=16, help="Questions per forward pass (default 16).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the built-in benchmark when the model records none, and of the attack.")
    parser.add_argument("--relearn", action="store_true",
                        help="Also run the relearning attack (fine-tunes a copy); the same as --attacks relearn.")
    parser.add_argument("--attacks", default=None,
                        help="Robustness attacks to run, comma-separated: probing, rephrase, typographic, jailbreak, "
                             "relearn (docs/robustness.md). Each adds its own <attack>_... metrics.")
    parser.add_argument("--reference", default=None,
                        help="A reference model (folder or Hub id; pass the retain-only oracle) for the attacks that "
                             "compare with it (probing reports its probe accuracy too). Same processor as --model.")
    parser.add_argument("--probe-layer", type=int, default=None,
                        help="Hidden-state layer of the probing attack (default: the middle layer; 0 = embeddings, "
                             "negative = from the last).")
    parser.add_argument("--no-rouge", action="store_true", help="Skip greedy generation / ROUGE-L.")
    parser.add_argument("--no-mia", action="store_true", help="Skip membership inference.")
    parser.set_defaults(func=run)
    return parser


# ------------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------------
def load_model_and_processor(name: str, what: str = "model", **load_kwargs):
    """Load a model and its processing class from a local folder (looked up first) or a Hub id.

    Vision-language models (a ``vision_config`` in ``config.json``) load with ``AutoModelForImageTextToText`` and
    ``AutoProcessor``; the image-only Qwen processors of ``hf_unlearn.testing`` (no torchvision) load by class name.
    Text-only models load with ``AutoModelForCausalLM`` and ``AutoTokenizer``. A PEFT adapter (a folder or repo with
    ``adapter_config.json``, as a LoRA run saves) loads its base model, then the adapter on top. ``load_kwargs`` go to
    ``from_pretrained`` (``dtype``, ``attn_implementation``, ``quantization_config``, ``revision``). A missing local
    path is reported as such (``FileNotFoundError``), a Hub id that does not load as a Hub problem (``OSError``).
    """
    from ..hub.resolve import hub_load_error, locate

    source = locate(name, what)
    try:
        return _load_model_and_processor(source.location, what, load_kwargs)
    except Exception as err:
        damaged = _unreadable_weights(err, source.location, what)
        if damaged is not None:
            raise damaged from err
        if not isinstance(err, OSError) or source.local:
            raise
        raise hub_load_error(what, source.location, err) from err


def _unreadable_weights(err: Exception, location: str, what: str) -> ValueError | None:
    """The error for weight files that do not load (damaged, truncated, or a pickle holding code), else None."""
    import pickle

    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, pickle.UnpicklingError):
        return ValueError(
            f"{what}: the pickled weights in {location!r} hold objects other than tensors, so they are refused "
            "(unpickling them could run code; torch.load(weights_only=True)). Use a safetensors copy of the model "
            "(ask its publisher for one, or convert it where you trust the file, then save_pretrained writes "
            "safetensors).")
    damaged = type(err).__name__ == "SafetensorError" or isinstance(err, EOFError) or (
        isinstance(err, RuntimeError) and "PytorchStreamReader" in first)
    if damaged:
        return ValueError(f"{what}: the weight files in {location!r} are damaged or truncated ({type(err).__name__}: "
                          f"{first}). Save or download the model again.")
    return None


def adapter_base(path: str) -> str | None:
    """The base model a PEFT adapter at ``path`` (folder or Hub id) names, or None when ``path`` is no adapter."""
    from transformers.utils import cached_file

    try:
        file = cached_file(path, "adapter_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    if file is None or not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path!r} holds a PEFT adapter whose adapter_config.json names no base model "
                         "(base_model_name_or_path); set it to the base model's folder or Hub id.")
    return base


def _load_model_and_processor(path: str, what: str = "model", load_kwargs: dict | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    load_kwargs = {k: v for k, v in (load_kwargs or {}).items() if v is not None}
    base = adapter_base(path)
    if base is not None:  # a LoRA run's output: the base model, then the adapter (peft)
        from peft import PeftModel

        model, processor = load_model_and_processor(base, f"{what}'s base model (adapter_config.json)", **load_kwargs)
        with contextlib.suppress(OSError, ValueError):  # the run saved its processor next to the adapter: prefer it
            processor = _load_processor(path, processor)
        return PeftModel.from_pretrained(model, path).eval(), processor
    config = AutoConfig.from_pretrained(path, revision=load_kwargs.get("revision"))
    if getattr(config, "vision_config", None) is None:
        return (AutoModelForCausalLM.from_pretrained(path, **load_kwargs).eval(),
                AutoTokenizer.from_pretrained(path, revision=load_kwargs.get("revision")))
    model = AutoModelForImageTextToText.from_pretrained(path, **load_kwargs).eval()
    return model, _load_processor(path)


def _load_processor(path: str, like=None):
    """The processing class saved at ``path``: a processor for a vision-language model (``like``: the kind expected)."""
    from transformers import AutoProcessor, AutoTokenizer, ProcessorMixin
    from transformers.utils import cached_file

    if like is not None and not isinstance(like, ProcessorMixin):
        return AutoTokenizer.from_pretrained(path)
    processor_class = None
    proc_file = cached_file(path, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    if proc_file is not None and os.path.isfile(proc_file):
        with open(proc_file, encoding="utf-8") as f:
            processor_class = json.load(f).get("processor_class")
    from .. import tiny_models  # the image-only Qwen processors (no video processor, so no torchvision)

    if processor_class and hasattr(tiny_models, processor_class):
        return getattr(tiny_models, processor_class).from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    if not isinstance(processor, ProcessorMixin):
        raise ValueError(f"{path!r} is a vision-language model but AutoProcessor loaded a {type(processor).__name__} "
                         "without an image processor; save the processor with the model (processor.save_pretrained).")
    return processor


def builtin_settings(model_path: str) -> dict[str, Any] | None:
    """The synthetic-benchmark settings recorded next to a model (demo cache or ``hf-unlearn run``), if any."""
    for name in (RUN_INFO, DEMO_INFO):
        file = os.path.join(model_path, name)
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                info = json.load(f)
            settings = (info.get("settings") or {}).get("benchmark") or info.get("benchmark")
            if isinstance(settings, dict):
                return settings
    return None


VISION_BENCHMARKS = ("mllmu", "clear", "fiubench", "umubench", "safeeraser", "covubench")


def _vision_loader(kind: str):
    """The loader of a vision-language benchmark and its default forget split (None: it takes none)."""
    from ..data import benchmarks, covubench, fiubench, safeeraser, umu_bench

    return {"mllmu": (benchmarks.load_mllmu_bench, "forget_5"), "clear": (benchmarks.load_clear, "forget05"),
            "fiubench": (fiubench.load_fiubench, "forget5"), "umubench": (umu_bench.load_umu_bench, "forget_5"),
            "safeeraser": (safeeraser.load_safeeraser, None), "covubench": (covubench.load_covubench, "forget5")}[kind]


def load_benchmark(spec: str, model_path: str | None = None, seed: int = 0, forget_split: str | None = None):
    """``builtin`` | ``<kind>:PATH`` (``run_config.BENCHMARKS``) -> a ``DatasetDict`` in the common schema."""
    if spec == "builtin":
        from ..data.synthetic import SyntheticBenchmarkConfig, build_synthetic_benchmark

        recorded = builtin_settings(model_path) if model_path and os.path.isdir(model_path) else None
        config = SyntheticBenchmarkConfig(**recorded) if recorded else SyntheticBenchmarkConfig(seed=seed)
        return build_synthetic_benchmark(config)
    kind, _, path = spec.partition(":")
    if kind in VISION_BENCHMARKS and path:
        load, default_split = _vision_loader(kind)
        if default_split is None:
            if forget_split:
                raise ValueError(f"{kind} has a single forget set: drop --forget-split / eval.forget_split.")
            return load(path)
        return load(path, forget_split or default_split)
    if kind == "tofu" and path:
        from ..data.tofu import load_tofu

        return load_tofu(path, forget_split or "forget10")
    if kind == "muse" and path:
        from ..data.muse import load_muse

        return load_muse(path, "books" if "books" in path.lower() else "news")
    from .run_config import BENCHMARK_SPECS

    raise ValueError(f"Unknown benchmark {spec!r}; use one of {BENCHMARK_SPECS}.")


def run_record(model_path: str) -> dict[str, Any] | None:
    """The ``hf_unlearn_run.json`` of a run directory, if ``model_path`` is one."""
    file = os.path.join(model_path, RUN_INFO)
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def _run_sets(record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The row sets to score: ``--forget/--retain/--holdout`` over the run's recorded ones."""
    from .data_files import load_data

    recorded = (record or {}).get("data_resolved") or {}
    given = {k: getattr(args, k) for k in ("forget", "retain", "holdout") if getattr(args, k)}
    sets = {}
    for what in ("forget", "retain", "holdout"):
        spec = given.get(what, recorded.get(what) if not given else None)
        if spec is not None:
            section = f"--{what}" if what in given else f"{RUN_INFO} data"
            sets[what] = load_data(spec, what, None, section=section)
    return sets


def _what_to_score(args: argparse.Namespace) -> tuple[str, Any]:
    """``("benchmark", name)`` or ``("rows", record)``, and the line that says which (see the module docstring)."""
    own = [k for k in ("forget", "retain", "holdout") if getattr(args, k)]
    if args.benchmark and own:
        raise ValueError(f"--benchmark and --{own[0]} are two different evaluations; give one.")
    path = args.model if os.path.isdir(args.model) else None
    record = run_record(path) if path else None
    trained_on_builtin = record is not None and str((record.get("data") or {}).get("forget", "")).startswith(
        "builtin") or (path is not None and os.path.isfile(os.path.join(path, DEMO_INFO)))
    if own:
        return "rows", record
    if args.benchmark:
        return "benchmark", args.benchmark
    if trained_on_builtin:
        return "benchmark", "builtin"
    if record is not None and record.get("data_resolved"):
        return "rows", record
    raise ValueError(
        f"--model {args.model!r} records no data it was trained on (no {RUN_INFO} of `hf-unlearn run`), so there is "
        "nothing of its own to score. Name what to evaluate: --benchmark builtin|mllmu:PATH|clear:PATH|tofu:PATH|"
        "muse:PATH|fiubench:PATH|umubench:PATH|safeeraser:PATH|covubench:PATH, or your rows with "
        "--forget/--retain/--holdout.")


def format_metrics(metrics: dict[str, Any]) -> str:
    width = max(len(k) for k in metrics) if metrics else 0
    return "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                     for k, v in metrics.items())


def _fail(message: str) -> int:
    print(f"hf-unlearn eval: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _check_output(output: str) -> str | None:
    """Why ``--output`` cannot be written (checked before the model is loaded and evaluated), or None."""
    from ..disk import DiskWriteError, check_output_folder

    folder = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        return f"--output {output!r} is a folder; pass a file path such as {os.path.join(output, 'eval.json')!r}."
    if not os.path.isdir(folder):
        return f"--output: the folder {folder!r} does not exist; create it or choose another path."
    try:
        check_output_folder(folder, option="--output")
    except DiskWriteError as err:
        return f"--output: {err}"
    return None


def run(args: argparse.Namespace) -> int:
    from transformers import set_seed

    from ..disk import explain_disk_errors
    from ..evaluation import Evaluator
    from ..evaluation.attack_registry import parse_attacks
    from ..evaluation.report import write_text
    if args.batch_size < 1:
        return _fail(f"--batch-size must be >= 1, got {args.batch_size}.")
    try:
        attacks = parse_attacks(args.attacks)
    except ValueError as err:
        return _fail(f"--attacks: {err}")
    if args.relearn and "relearn" not in attacks:
        attacks.append("relearn")
    if (args.attacks or args.reference) and (args.forget or args.retain or args.holdout):
        return _fail("--attacks and --reference need a benchmark's multiple-choice splits (--benchmark, or a run on "
                     "the built-in benchmark); your own rows (--forget/--retain/--holdout) have no options to score.")
    output = args.output or "eval_results.json"
    problem = _check_output(output)
    if problem:
        return _fail(problem)
    try:
        from ..hub.resolve import locate

        locate(args.model, "--model")  # a mistyped path is named as one before anything else
        kind, what = _what_to_score(args)
        sets = _run_sets(what, args) if kind == "rows" else None
        model, processor = load_model_and_processor(args.model, "--model")
        reference = load_model_and_processor(args.reference, "--reference")[0] if args.reference else None
        _check_probe_layer(args.probe_layer, model)
        benchmark = load_benchmark(what, args.model, args.seed, args.forget_split) if kind == "benchmark" else None
    except (FileNotFoundError, ValueError, OSError) as err:  # ConfigError is a ValueError
        return _fail(str(err))
    record = run_record(args.model) if os.path.isdir(args.model) else None
    if kind == "rows":
        source = "your rows" if any(getattr(args, k) for k in ("forget", "retain", "holdout")) else \
            f"the run's own data (recorded in {RUN_INFO})"
        scored = f"{source}: " + ", ".join(f"{k} ({len(v)} rows)" for k, v in sets.items())
    else:
        scored = _benchmark_line(what, args.model, record)
    print(f"evaluating {scored}", file=sys.stderr)
    set_seed(args.seed)
    kind_of_bench = (what or "").partition(":")[0] if kind == "benchmark" else None
    if kind == "rows":
        evaluator = Evaluator(model, processor, {}, batch_size=args.batch_size, show_progress=True)
        metrics: dict[str, Any] = evaluator.evaluate_rows(sets, rouge=not args.no_rouge, mia=not args.no_mia)
    elif kind_of_bench in ("tofu", "muse"):
        from ..evaluation.text_evaluator import TextEvaluator

        evaluator = TextEvaluator(model, processor, benchmark, batch_size=args.batch_size, show_progress=True)
        metrics = evaluator.tofu_metrics(rouge=not args.no_rouge) if kind_of_bench == "tofu" else \
            evaluator.muse_metrics()
    else:
        evaluator = Evaluator(model, processor, benchmark, batch_size=args.batch_size, show_progress=True)
        metrics = evaluator.evaluate(rouge=not args.no_rouge, mia=not args.no_mia)
    attack_metrics: dict[str, dict[str, float]] = {}
    if attacks and isinstance(evaluator, Evaluator) and kind == "benchmark":
        options = {"probing": {"layer": args.probe_layer}} if args.probe_layer is not None else None
        try:
            attack_metrics = evaluator.run_attacks(attacks, reference=reference, seed=args.seed, options=options)
        except ValueError as err:  # e.g. --probe-layer out of range for this model
            return _fail(str(err))
        for values in attack_metrics.values():
            metrics.update(values)
    elif attacks:
        print(f"note: attacks skipped ({', '.join(attacks)}): they need a vision-language or causal LM benchmark "
              "with multiple-choice splits (builtin, mllmu, clear).", file=sys.stderr)
    for name, reason in evaluator.skipped.items():
        print(f"note: skipped {name}: {reason}", file=sys.stderr)
    print(format_metrics(metrics))
    payload = {"model": args.model, "evaluated": scored, "benchmark": what if kind == "benchmark" else None,
               "sets": {k: len(v) for k, v in sets.items()} if sets else None, "metrics": metrics,
               "attacks": attack_metrics, "skipped": evaluator.skipped}
    with explain_disk_errors(os.path.dirname(os.path.abspath(output)), "--output"):
        write_text(output, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


def _check_probe_layer(layer: int | None, model) -> None:
    """``--probe-layer`` within the model's hidden states (0..layers, or negative from the last), checked before any
    evaluation runs."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    layers = getattr(text_config, "num_hidden_layers", None)
    if layer is not None and layers is not None and not -(layers + 1) <= layer <= layers:
        raise ValueError(f"--probe-layer {layer} is out of range: the model has {layers} layers (hidden states "
                         f"0..{layers}, or negative from the end).")


def _benchmark_line(bench: str, model: str, record: dict | None) -> str:
    """What a benchmark evaluation scores, and whether the model was trained on it."""
    if bench == "builtin":
        recorded = builtin_settings(model) if os.path.isdir(model) else None
        line = ("the built-in synthetic benchmark, with the settings this model was trained on" if recorded else
                "the built-in synthetic benchmark (--benchmark builtin)")
    else:
        line = f"the {bench.partition(':')[0]} benchmark ({bench})"
    trained_elsewhere = record is not None and not str((record.get("data") or {}).get("forget", "")).startswith(
        "builtin")
    if trained_elsewhere or (record is None and bench == "builtin" and not (
            os.path.isdir(model) and builtin_settings(model))):
        line += ("; note: this model was not trained on it, so its forget-set numbers do not measure what it "
                 "unlearned" if trained_elsewhere else "; note: nothing records that this model was trained on it")
    return line
