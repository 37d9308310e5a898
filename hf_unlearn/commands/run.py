"""``hf-unlearn run --config run.yaml [--any_training_argument value ...]``: unlearn with a registered method.

Like ``trl sft``: training arguments are flat keys of the file (any field of the method's config: ``GAConfig``,
``NPOConfig``, ...), and flags on the command line override the file::

    method: npo                     # a name from `hf-unlearn demo --list-methods`
    model: path/to/model            # a local folder (looked up first) or a Hub id
    output_dir: runs/npo            # must not exist yet (or be empty); the model, logs and checkpoints stay here
    max_steps: 20                   # any field of NPOConfig / TrainingArguments, flat
    learning_rate: 1.0e-3
    beta: 0.4
    data:
      forget: builtin:forget_vqa    # builtin:<split>[+<split>...], a datasets.save_to_disk folder, parquet / json /
      retain: builtin:retain_vqa+retain_qa+forget_qa   # jsonl / csv file(s), a Hub dataset id, or {path:, split:}
      benchmark: {num_people: 20}   # settings of the built-in benchmark (optional)
    mask: {threshold: 0.5}          # optional: any SaliencyMaskConfig field, or {path: <saved mask folder or Hub id>}
    eval: {benchmark: builtin}      # optional: evaluate before and after (batch_size, rouge, mia, relearn)
    ref_model: org/reference        # optional: NPO / KL reference or VKD teacher (local folder or Hub id)
    license: apache-2.0             # optional: card license when the base model's card gives none
    base_model: org/base-model      # optional: the Hub id published as base_model when `model` is a local folder

    hf-unlearn run --config run.yaml --learning_rate 1e-5 --max_steps 3

Every key is checked, with a close-match suggestion for a typo; the data files are read and every row checked
before the model is loaded; any problem is one ``hf-unlearn run: error:`` line and exit status 2, before anything is
written (``hf-unlearn --debug run ...`` shows the traceback). ``hf-unlearn run --method npo --help`` lists every flag
of a method.
Logs (``report_to``, ``trainer_state.json``) and checkpoints (``save_strategy``) stay in ``output_dir``; the final
model is one staged save published into it, and ``hf_unlearn_run.json`` (the values actually used) is written last: a
run directory that has it is complete.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from dataclasses import asdict
from typing import Any

from .run_config import ConfigError, RunPlan, method_parser, read_run_config, run_args

DATA_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}

__all__ = ["ConfigError", "load_data", "run_plan"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run",
        help="Unlearn with a registered method from a YAML config (+ flag overrides); save and optionally evaluate.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser.add_argument("--config", default=None, help="YAML file (see the description above).")
    parser.add_argument("-h", "--help", action="store_true", help="Show this help (with --method X: its flags too).")
    parser.set_defaults(func=run, accepts_extra_args=True, run_parser=parser)
    return parser


# ------------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------------
def _load_local(spec: str, split: str | None, what: str):
    import datasets

    if os.path.isdir(spec):
        try:
            return datasets.load_from_disk(spec)
        except Exception as err:  # noqa: BLE001 - a folder the user named; say what the reader said, in one line
            raise ConfigError(f"data.{what}: {spec!r} is a folder that datasets.load_from_disk cannot read "
                              f"({type(err).__name__}: {_first_line(err)}); pass a datasets.save_to_disk folder "
                              "holding rows, or data file(s).") from None
    files = sorted(glob.glob(os.path.expanduser(spec)))
    exts = {os.path.splitext(f)[1].lower() for f in files}
    if len(exts) != 1 or next(iter(exts)) not in DATA_FILE_BUILDERS:
        raise ConfigError(f"data.{what}: files must share one of the extensions {sorted(DATA_FILE_BUILDERS)}, "
                          f"got {sorted(exts)}.")
    builder = DATA_FILE_BUILDERS[exts.pop()]
    if all(os.path.getsize(f) == 0 for f in files):  # `datasets` fails on them with StopIteration or worse
        raise ConfigError(f"data.{what}: {spec!r} is empty (0 bytes): it holds no rows. Pass the file with the "
                          "rows.")
    try:
        return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as err:  # noqa: BLE001 - any reader failure is a file the user can fix; named, not a traceback
        if "corresponds to no data" in str(err):  # datasets' words for a file with a schema and no rows
            raise ConfigError(f"data.{what}: {spec!r} holds no rows.") from None
        layout = " (JSON Lines: one row object per line)" if builder == "json" else ""
        raise ConfigError(f"data.{what}: {spec!r} could not be read as {builder} ({type(err).__name__}: "
                          f"{_first_line(err.__cause__ or err)}). Check that it is valid {builder}{layout}.") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


TRL_COLUMNS = ("prompt", "completion", "messages")


def _check_rows(loaded, spec: str, what: str) -> None:
    """The columns `run` reads (question/answer), at least one row, and every row trainable (data/rows.py)."""
    from ..data.rows import validate_rows

    columns = list(loaded.column_names)
    missing = [c for c in ("question", "answer") if c not in columns]
    trl = [c for c in TRL_COLUMNS if c in columns]
    if missing and trl:
        raise ConfigError(
            f"data.{what}: {spec!r} holds TRL-format rows (columns found: {columns}), which `hf-unlearn run` does not "
            "read yet. Convert them to `question` / `answer` columns (+ optional `image`) with dataset.map, or train "
            "from Python, where every trainer accepts them (docs/data_formats.md).")
    if missing:
        raise ConfigError(
            f"data.{what}: {spec!r} lacks column(s) {missing}; columns found: {columns}. Rename a column with "
            "dataset.rename_column(old, new) or add it, so the rows have `question` and `answer` (+ optional `image`).")
    if len(loaded) == 0:
        raise ConfigError(f"data.{what}: {spec!r} holds no rows.")
    try:
        validate_rows(loaded, f"data.{what}")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _load_hub(repo_id: str, split: str | None, what: str):
    import datasets

    from ..hub.resolve import hub_load_error

    try:
        return datasets.load_dataset(repo_id, split=split)
    except Exception as err:  # noqa: BLE001 - the message says a local folder of that name was not found either
        raise ConfigError(str(hub_load_error(f"data.{what}", repo_id, err))) from None


def load_data(spec: str | dict | None, what: str, benchmark):
    """One dataset from ``builtin:<split>[+<split>...]``, a ``save_to_disk`` folder, data file(s) or a Hub id.

    A name is looked up locally first (folder, file or glob), then on the Hub.
    """
    import datasets

    from ..hub.resolve import locate

    if spec is None:
        return None
    split = None
    if isinstance(spec, dict):
        spec, split = spec["path"], spec.get("split")
    if spec.startswith("builtin"):
        names = spec.partition(":")[2] or ("forget_vqa" if what == "forget" else "retain_vqa+retain_qa+forget_qa")
        parts = [n.strip() for n in names.split("+") if n.strip()]
        missing = [n for n in parts if n not in benchmark]
        if missing:
            raise ConfigError(f"data.{what}: unknown built-in split(s) {missing}; splits: {list(benchmark)}.")
        return datasets.concatenate_datasets([benchmark[n] for n in parts])
    if glob.glob(os.path.expanduser(spec)):
        loaded = _load_local(spec, split, what)
    else:
        try:
            source = locate(spec, f"data.{what}")
        except FileNotFoundError as err:
            raise ConfigError(f"{err} (a datasets.save_to_disk folder, parquet / json / jsonl / csv file(s) or a "
                              "glob, or builtin:<split>)") from None
        loaded = _load_local(source.location, split, what) if source.local else _load_hub(source.location, split,
                                                                                          what)
    if isinstance(loaded, datasets.DatasetDict) and split is None and len(loaded) == 1:
        split = next(iter(loaded))  # one split: no choice to make
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            raise ConfigError(f"data.{what}: {spec!r} holds splits {list(loaded)}; pick one with "
                              f"{{path: {spec}, split: <name>}}.")
        if split not in loaded:
            raise ConfigError(f"data.{what}: split {split!r} not in {list(loaded)}.")
        loaded = loaded[split]
    _check_rows(loaded, spec, what)
    return loaded


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


def _load_mask(spec: dict[str, Any] | None):
    """``mask: {path: ...}`` loads a saved mask (local folder first, then Hub); other keys configure a new one."""
    if spec is None or "path" not in spec:
        return spec
    from ..hub.resolve import hub_load_error, locate
    from ..saliency import SaliencyMask

    try:
        source = locate(spec["path"], "mask.path")
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    try:
        return SaliencyMask.from_pretrained(source.location, subfolder=spec.get("subfolder"))
    except OSError as err:
        if source.local:
            raise ConfigError(f"mask.path: {err}") from None
        raise ConfigError(str(hub_load_error("mask.path", source.location, err.__cause__ or err))) from None
    except ValueError as err:
        raise ConfigError(f"mask.path: {err}") from None


# ------------------------------------------------------------------------------------------------------------------
# Run
# ------------------------------------------------------------------------------------------------------------------
def _help(args: argparse.Namespace) -> int:
    print(args.run_parser.format_help())
    method = next((args.extra_args[i + 1] for i, a in enumerate(args.extra_args[:-1]) if a == "--method"), None)
    if method is not None:
        try:
            print(method_parser(method).format_help())
        except KeyError:
            print(f"(no registered method {method!r}: see hf-unlearn demo --list-methods)")
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    """Errors propagate to ``hf_unlearn.cli`` (one line each, ``commands/failures.py``)."""
    from ..disk import DiskWriteError, explain_disk_errors
    from .eval import RUN_INFO

    if args.help:
        return _help(args)
    if not args.config:
        raise ConfigError("the following arguments are required: --config")
    plan = read_run_config(args.config, args.extra_args)
    created = not os.path.exists(plan.output_dir)
    try:
        with explain_disk_errors(plan.output_dir):
            return run_plan(plan)
    except BaseException as err:
        if created and os.path.isdir(plan.output_dir) and not os.listdir(plan.output_dir):
            os.rmdir(plan.output_dir)  # a failed run leaves no empty output_dir behind (what it wrote, it keeps)
        elif isinstance(err, DiskWriteError) and os.path.isdir(plan.output_dir):
            raise DiskWriteError(f"{err} The run in {plan.output_dir!r} did not finish (it has no {RUN_INFO}); "
                                 "delete that folder before running again.", err.errno) from err
        raise


def run_plan(plan: RunPlan) -> int:
    """Execute a validated configuration (see the module docstring)."""
    from transformers import set_seed

    from ..data.synthetic import SyntheticBenchmarkConfig, build_synthetic_benchmark
    from ..evaluation import Evaluator, RelearnConfig, relearn_attack
    from ..evaluation.report import write_text
    from ..trainers.registry import MethodData, MethodUnavailableError, get_method
    from .eval import RUN_INFO, format_metrics, load_benchmark, load_model_and_processor

    name, output_dir, seed = plan.method, plan.output_dir, plan.seed
    try:
        bench_config = SyntheticBenchmarkConfig(**{"seed": seed, **plan.benchmark})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.benchmark: {err}") from err
    evaluate = plan.eval
    uses_builtin = any(isinstance(plan.data.get(k), str) and plan.data[k].startswith("builtin")
                       for k in ("forget", "retain")) or (evaluate or {}).get("benchmark") == "builtin"
    benchmark = build_synthetic_benchmark(bench_config) if uses_builtin else None
    forget = load_data(plan.data["forget"], "forget", benchmark)
    retain = load_data(plan.data.get("retain"), "retain", benchmark)
    if len(forget) == 0:
        raise ConfigError("data.forget is empty: there is nothing to unlearn.")
    data = MethodData(forget=forget, retain=retain, preserve=_preserve_sets(retain))
    mask = _load_mask(plan.mask)

    try:
        model, processor = load_model_and_processor(plan.model)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model: {err}" if not str(err).startswith("model") else str(err)) from err

    eval_bench = None
    if evaluate:
        try:
            eval_bench = benchmark if evaluate["benchmark"] == "builtin" else load_benchmark(
                evaluate["benchmark"], forget_split=evaluate["forget_split"])
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"eval.benchmark: {_first_line(err)}") from err

    def measure(current_model) -> dict[str, float]:
        set_seed(seed)
        evaluator = Evaluator(current_model, processor, eval_bench, batch_size=evaluate["batch_size"])
        metrics = evaluator.evaluate(rouge=evaluate["rouge"], mia=evaluate["mia"])
        if evaluate["relearn"] and "forget_vqa" in eval_bench:
            metrics.update(relearn_attack(current_model, processor, eval_bench["forget_vqa"],
                                          RelearnConfig(seed=seed), eval_batch_size=evaluate["batch_size"]))
        return metrics

    before = measure(model) if eval_bench is not None else None
    set_seed(seed)
    start = time.perf_counter()
    try:
        args = run_args(name, plan.overrides, output_dir, seed)
        trainer = get_method(name).build_trainer(model, processor, data, args, mask=mask, ref_model=plan.run.ref_model)
    except MethodUnavailableError as err:
        raise ConfigError(f"method {name!r} is not available: {err}") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: {err}") from err
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_state()  # trainer_state.json: the log history, next to the logs of `report_to`
    after = measure(trainer.model) if eval_bench is not None else None
    if hasattr(trainer, "set_card_metadata"):
        trainer.set_card_metadata(license=plan.run.license, base_model=plan.run.base_model)
    if after is not None and hasattr(trainer, "record_evaluation"):
        trainer.record_evaluation(before, after)

    # The final model (with its processor) is one staged save published into output_dir (model_folder.py): an
    # earlier run's files there are replaced, never mixed in; the run record is written last, so a run directory
    # without it is an interrupted run.
    trainer.save_model(output_dir)
    mask_used = getattr(trainer, "saliency_mask", None)
    info = {
        "method": name, "model": plan.model, "seed": seed,
        "overrides": plan.overrides,  # what the file and the command line set
        "args": trainer.args.to_dict(),  # every training argument as used (registry defaults + overrides)
        "mask": getattr(getattr(mask_used, "config", None), "to_dict", lambda: None)(),
        "ref_model": plan.run.ref_model, "data": plan.data, "eval": evaluate, "train_time_s": seconds,
        "rows": {"forget": len(forget), "retain": len(retain) if retain is not None else 0},
        "global_step": trainer.state.global_step,
        "benchmark": asdict(bench_config) if uses_builtin else None,
        "metrics_before": before, "metrics_after": after,
    }
    write_text(os.path.join(output_dir, RUN_INFO), json.dumps(info, indent=2, default=str) + "\n")
    print(f"{name}: unlearned in {seconds:.1f} s ({trainer.state.global_step} steps); saved to {output_dir}")
    if after is not None:
        print(format_metrics({f"{k} (before -> after)": f"{before.get(k, float('nan')):.4f} -> {v:.4f}"
                              for k, v in after.items()}))
    return 0
