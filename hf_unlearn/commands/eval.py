"""``hf-unlearn eval --model DIR_OR_HUB_ID [--benchmark builtin|mllmu:PATH|clear:PATH]``: evaluate a saved model.

Prints the metrics (multiple-choice accuracy per split, forget ROUGE-L, membership-inference AUC and, with
``--relearn``, the relearning attack) and writes them as JSON. ``builtin`` is the synthetic benchmark; when the
model directory records the benchmark settings it was trained on (demo cache, ``hf-unlearn run``), those are used.
``--model`` is looked up as a local folder first, then as a Hub id (``org/name``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

RUN_INFO = "hf_unlearn_run.json"  # written by `hf-unlearn run` next to the model
DEMO_INFO = "hf_unlearn_demo.json"  # written by the demo next to its cached vanilla / oracle models


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="Evaluate a saved model on the built-in, MLLMU-Bench or CLEAR benchmark; print and write JSON.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True,
                        help="A saved model folder (looked up first) or a Hub id such as org/name.")
    parser.add_argument("--benchmark", default="builtin",
                        help="'builtin' (synthetic), 'mllmu:PATH' (MLLMU-Bench snapshot or Hub id) or 'clear:PATH'.")
    parser.add_argument("--forget-split", default=None,
                        help="Forget split of MLLMU-Bench (forget_5/10/15, default forget_5) or CLEAR (forget01/05/10, "
                             "default forget05).")
    parser.add_argument("--output", default=None,
                        help="JSON file to write (default: eval_results.json in the current directory).")
    parser.add_argument("--batch-size", type=int, default=16, help="Questions per forward pass (default 16).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the built-in benchmark when the model records none, and of the attack.")
    parser.add_argument("--relearn", action="store_true", help="Also run the relearning attack (fine-tunes a copy).")
    parser.add_argument("--no-rouge", action="store_true", help="Skip greedy generation / ROUGE-L.")
    parser.add_argument("--no-mia", action="store_true", help="Skip membership inference.")
    parser.set_defaults(func=run)
    return parser


# ------------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------------
def load_model_and_processor(name: str, what: str = "model"):
    """Load a model and its processing class from a local folder (looked up first) or a Hub id.

    Vision-language models (a ``vision_config`` in ``config.json``) load with ``AutoModelForImageTextToText`` and
    ``AutoProcessor``; the image-only Qwen processors of ``hf_unlearn.testing`` (no torchvision) load by class name.
    Text-only models load with ``AutoModelForCausalLM`` and ``AutoTokenizer``. A missing local path is reported as
    such (``FileNotFoundError``), a Hub id that does not load as a Hub problem (``OSError``).
    """
    from ..hub.resolve import hub_load_error, locate

    source = locate(name, what)
    try:
        return _load_model_and_processor(source.location)
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
            "(unpickling them could run code; torch.load(weights_only=True)). Use a safetensors copy of the model; "
            "only if you trust the file, load its state dict with torch.load(path, weights_only=False) and save the "
            "model again with save_pretrained (safetensors).")
    damaged = type(err).__name__ == "SafetensorError" or isinstance(err, EOFError) or (
        isinstance(err, RuntimeError) and "PytorchStreamReader" in first)
    if damaged:
        return ValueError(f"{what}: the weight files in {location!r} are damaged or truncated ({type(err).__name__}: "
                          f"{first}). Save or download the model again.")
    return None


def _load_model_and_processor(path: str):
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
        ProcessorMixin,
    )
    from transformers.utils import cached_file

    config = AutoConfig.from_pretrained(path)
    if getattr(config, "vision_config", None) is None:
        return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor_class = None
    proc_file = cached_file(path, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    if proc_file is not None and os.path.isfile(proc_file):
        with open(proc_file, encoding="utf-8") as f:
            processor_class = json.load(f).get("processor_class")
    from .. import tiny_models  # the image-only Qwen processors (no video processor, so no torchvision)

    if processor_class and hasattr(tiny_models, processor_class):
        return model, getattr(tiny_models, processor_class).from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    if not isinstance(processor, ProcessorMixin):
        raise ValueError(f"{path!r} is a vision-language model but AutoProcessor loaded a {type(processor).__name__} "
                         "without an image processor; save the processor with the model (processor.save_pretrained).")
    return model, processor


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


def load_benchmark(spec: str, model_path: str | None = None, seed: int = 0, forget_split: str | None = None):
    """``builtin`` | ``mllmu:PATH`` | ``clear:PATH`` -> a ``DatasetDict`` in the common schema."""
    if spec == "builtin":
        from ..data.synthetic import SyntheticBenchmarkConfig, build_synthetic_benchmark

        recorded = builtin_settings(model_path) if model_path and os.path.isdir(model_path) else None
        config = SyntheticBenchmarkConfig(**recorded) if recorded else SyntheticBenchmarkConfig(seed=seed)
        return build_synthetic_benchmark(config)
    kind, _, path = spec.partition(":")
    if kind in ("mllmu", "clear") and path:
        from ..data import benchmarks

        if kind == "mllmu":
            return benchmarks.load_mllmu_bench(path, forget_split or "forget_5")
        return benchmarks.load_clear(path, forget_split or "forget05")
    raise ValueError(f"Unknown benchmark {spec!r}; use 'builtin', 'mllmu:PATH' or 'clear:PATH'.")


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
    from ..evaluation import Evaluator, RelearnConfig, relearn_attack
    from ..evaluation.report import write_text

    if args.batch_size < 1:
        return _fail(f"--batch-size must be >= 1, got {args.batch_size}.")
    output = args.output or "eval_results.json"
    problem = _check_output(output)
    if problem:
        return _fail(problem)
    try:
        model, processor = load_model_and_processor(args.model, "--model")
        benchmark = load_benchmark(args.benchmark, args.model, args.seed, args.forget_split)
    except (FileNotFoundError, ValueError, OSError) as err:
        return _fail(str(err))
    set_seed(args.seed)
    evaluator = Evaluator(model, processor, benchmark, batch_size=args.batch_size, show_progress=True)
    metrics: dict[str, Any] = evaluator.evaluate(rouge=not args.no_rouge, mia=not args.no_mia)
    if args.relearn:
        if "forget_vqa_acc" in metrics:
            metrics.update(relearn_attack(model, processor, benchmark["forget_vqa"], RelearnConfig(seed=args.seed),
                                          eval_batch_size=args.batch_size))
        else:
            print("note: relearning attack skipped (no evaluable forget_vqa split).", file=sys.stderr)
    for name, reason in evaluator.skipped.items():
        print(f"note: skipped {name}: {reason}", file=sys.stderr)
    print(format_metrics(metrics))
    payload = {"model": args.model, "benchmark": args.benchmark, "metrics": metrics, "skipped": evaluator.skipped}
    with explain_disk_errors(os.path.dirname(os.path.abspath(output)), "--output"):
        write_text(output, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {output}")
    return 0
