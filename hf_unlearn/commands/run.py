"""``hf-unlearn run --config file.yaml``: unlearn with a registered method and save the model.

Example configuration::

    method: npo                     # a name from `hf-unlearn demo --list-methods`
    model: path/to/model            # a saved model directory, or a Hub model id (online)
    output_dir: runs/npo            # must not exist yet (or be empty)
    seed: 0
    data:
      forget: builtin:forget_vqa    # builtin:<split>[+<split>...], a datasets.save_to_disk folder,
      retain: builtin:retain_vqa+retain_qa+forget_qa   #   or parquet / json / jsonl / csv file(s)
      benchmark: {num_people: 20}   # settings of the built-in benchmark (optional)
    training:                       # overrides of the method's training arguments (optional)
      max_steps: 20
      learning_rate: 1.0e-3
    evaluate: builtin               # evaluate before and after: builtin | mllmu:PATH | clear:PATH | false

A folder or file entry may also be a mapping ``{path: ..., split: ...}`` to pick a split of a ``DatasetDict``.
The model is saved with ``trainer.save_model`` into a temporary folder and renamed to ``output_dir`` when complete.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

DATA_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
TOP_LEVEL_KEYS = {"method", "model", "output_dir", "seed", "data", "training", "evaluate", "eval_batch_size"}


class ConfigError(ValueError):
    """The YAML configuration is invalid; the message names the key and the fix."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run",
        help="Unlearn with a registered method from a YAML config; save (and optionally evaluate) the model.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="YAML file (see the description above).")
    parser.set_defaults(func=run)
    return parser


# ------------------------------------------------------------------------------------------------------------------
# Configuration and data
# ------------------------------------------------------------------------------------------------------------------
def read_config(path: str) -> dict[str, Any]:
    """Parse and validate the YAML configuration."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (method:, model:, output_dir:, data:, ...).")
    unknown = sorted(set(config) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(TOP_LEVEL_KEYS)}.")
    missing = [k for k in ("method", "model", "output_dir") if not config.get(k)]
    if missing:
        raise ConfigError(f"{path}: missing required key(s) {missing}.")
    data = config.setdefault("data", {}) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: `data` must be a mapping with forget:, retain: and optionally benchmark:.")
    config["data"] = data
    data.setdefault("forget", "builtin:forget_vqa")
    if "retain" not in data and str(data["forget"]).startswith("builtin"):
        data["retain"] = "builtin:retain_vqa+retain_qa+forget_qa"
    if not isinstance(config.get("training") or {}, dict):
        raise ConfigError(f"{path}: `training` must be a mapping of training-argument overrides.")
    config["training"] = config.get("training") or {}
    config.setdefault("seed", 0)
    return config


def _load_local(spec: str | dict, what: str):
    import datasets

    split = None
    if isinstance(spec, dict):
        if "path" not in spec:
            raise ConfigError(f"data.{what}: a mapping needs `path` (and optionally `split`).")
        spec, split = spec["path"], spec.get("split")
    if os.path.isdir(spec):
        loaded = datasets.load_from_disk(spec)
    else:
        files = sorted(glob.glob(spec))
        if not files:
            raise ConfigError(f"data.{what}: {spec!r} is neither a folder saved with save_to_disk nor existing "
                              "file(s); give a path, a glob, or builtin:<split>.")
        exts = {os.path.splitext(f)[1].lower() for f in files}
        if len(exts) != 1 or next(iter(exts)) not in DATA_FILE_BUILDERS:
            raise ConfigError(f"data.{what}: files must share one of the extensions {sorted(DATA_FILE_BUILDERS)}, "
                              f"got {sorted(exts)}.")
        loaded = datasets.load_dataset(DATA_FILE_BUILDERS[exts.pop()], data_files=files, split="train")
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            raise ConfigError(f"data.{what}: {spec!r} holds splits {list(loaded)}; pick one with "
                              f"{{path: {spec}, split: <name>}}.")
        if split not in loaded:
            raise ConfigError(f"data.{what}: split {split!r} not in {list(loaded)}.")
        loaded = loaded[split]
    return loaded


def load_data(spec: str | dict | None, what: str, benchmark):
    """One dataset from ``builtin:<split>[+<split>...]``, a ``save_to_disk`` folder or data file(s)."""
    import datasets

    if spec is None:
        return None
    if isinstance(spec, str) and spec.startswith("builtin"):
        names = spec.partition(":")[2] or ("forget_vqa" if what == "forget" else "retain_vqa+retain_qa+forget_qa")
        parts = [n.strip() for n in names.split("+") if n.strip()]
        missing = [n for n in parts if n not in benchmark]
        if missing:
            raise ConfigError(f"data.{what}: unknown built-in split(s) {missing}; splits: {list(benchmark)}.")
        return datasets.concatenate_datasets([benchmark[n] for n in parts])
    dataset = _load_local(spec, what)
    from ..data.schema import check_columns

    check_columns(dataset, ("question", "answer"), f"data.{what}")
    return dataset


def _preserve_sets(retain) -> dict[str, Any]:
    """Image rows and text rows of the retain set: the preserve sets a saliency mask is scored against."""
    import datasets

    if retain is None:
        return {}
    if "image" not in retain.column_names:
        return {"text": retain}
    raw = retain.cast_column("image", datasets.Image(decode=False)) if isinstance(
        retain.features.get("image"), datasets.Image) else retain  # tells None from an image without decoding
    has_image = [value is not None for value in raw["image"]]
    sets = {}
    if any(has_image):
        sets["retain"] = retain.select([i for i, h in enumerate(has_image) if h])
    if not all(has_image):
        sets["text"] = retain.select([i for i, h in enumerate(has_image) if not h])
    return sets


# ------------------------------------------------------------------------------------------------------------------
# Run
# ------------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    try:
        return run_config(read_config(args.config))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run_config(config: dict[str, Any]) -> int:
    """Execute a validated configuration (see the module docstring)."""
    from transformers import set_seed

    from ..data.synthetic import SyntheticBenchmarkConfig, build_synthetic_benchmark
    from ..demo.methods import METHODS, MethodData, MethodUnavailableError
    from ..evaluation import Evaluator
    from ..evaluation.report import write_text
    from .eval import RUN_INFO, format_metrics, load_benchmark, load_model_and_processor

    name, output_dir, seed = config["method"], config["output_dir"], int(config["seed"])
    if name not in METHODS:
        raise ConfigError(f"method: unknown {name!r}; registered methods: {sorted(METHODS)}.")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise ConfigError(f"output_dir {output_dir!r} exists and is not empty; choose a new folder or delete it.")

    data_cfg = config["data"]
    bench_settings = data_cfg.get("benchmark") or {}
    try:
        bench_config = SyntheticBenchmarkConfig(**{"seed": seed, **bench_settings})
    except TypeError as err:
        raise ConfigError(f"data.benchmark: {err}") from err
    uses_builtin = any(isinstance(data_cfg.get(k), str) and data_cfg[k].startswith("builtin")
                       for k in ("forget", "retain")) or config.get("evaluate") == "builtin"
    benchmark = build_synthetic_benchmark(bench_config) if uses_builtin else None
    forget = load_data(data_cfg["forget"], "forget", benchmark)
    retain = load_data(data_cfg.get("retain"), "retain", benchmark)
    if len(forget) == 0:
        raise ConfigError("data.forget is empty: there is nothing to unlearn.")
    data = MethodData(forget=forget, retain=retain, preserve=_preserve_sets(retain))

    try:
        model, processor = load_model_and_processor(str(config["model"]))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model: {err}") from err

    evaluate = config.get("evaluate", False)
    eval_bench = None
    if evaluate:
        eval_bench = benchmark if evaluate == "builtin" else load_benchmark(str(evaluate))
    before = after = None
    batch_size = int(config.get("eval_batch_size", 16))
    if eval_bench is not None:
        set_seed(seed)
        before = Evaluator(model, processor, eval_bench, batch_size=batch_size).evaluate()

    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".hf_unlearn_run-", dir=parent)
    try:
        set_seed(seed)
        start = time.perf_counter()
        try:
            trainer = METHODS[name].build_trainer(model, processor, data, os.path.join(tmp, "trainer"), seed,
                                                  **config["training"])
        except MethodUnavailableError as err:
            raise ConfigError(f"method {name!r} is not available: {err}") from err
        except TypeError as err:
            raise ConfigError(f"training: {err}") from err
        trainer.train()
        seconds = time.perf_counter() - start
        model = trainer.model
        if eval_bench is not None:
            set_seed(seed)
            after = Evaluator(model, processor, eval_bench, batch_size=batch_size).evaluate()
            if hasattr(trainer, "record_evaluation"):
                trainer.record_evaluation(before, after)
        save_dir = os.path.join(tmp, "model")
        trainer.save_model(save_dir)
        if processor is not None and not os.path.isfile(os.path.join(save_dir, "tokenizer_config.json")):
            processor.save_pretrained(save_dir)
        info = {
            "method": name, "model": str(config["model"]), "seed": seed, "training": config["training"],
            "hyperparameters": dict(METHODS[name].hyperparameters), "train_time_s": seconds,
            "benchmark": asdict(bench_config) if uses_builtin else None,
            "metrics_before": before, "metrics_after": after,
        }
        write_text(os.path.join(save_dir, RUN_INFO), json.dumps(info, indent=2, default=str) + "\n")
        if os.path.isdir(output_dir):
            os.rmdir(output_dir)  # empty (checked above)
        os.replace(save_dir, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{name}: unlearned in {seconds:.1f} s; saved to {output_dir}")
    if after is not None:
        print(format_metrics({f"{k} (before -> after)": f"{before.get(k, float('nan')):.4f} -> {v:.4f}"
                              for k, v in after.items()}))
    return 0
