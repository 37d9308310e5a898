"""``hf-unlearn run --config run.yaml [--any_training_argument value ...]``: unlearn with a registered method.

Like ``trl sft``: training arguments are flat keys of the file (any field of the method's config: ``GAConfig``,
``NPOConfig``, ...), and flags on the command line override the file::

    method: npo                     # a name from `hf-unlearn demo --list-methods`
    model: path/to/model            # a local folder (looked up first) or a Hub id
    output_dir: runs/npo            # must not exist yet (or be empty); the model, logs and checkpoints stay here
    max_steps: 20                   # any field of NPOConfig / TrainingArguments, flat
    learning_rate: 1.0e-3
    beta: 0.4
    use_peft: true                  # optional: trl.ModelConfig keys (lora_r, lora_alpha, lora_target_modules,
    lora_r: 16                      #   torch_dtype / dtype, attn_implementation, load_in_4bit, ...): docs/lora.md
    data:                           # rows in any format of docs/data_formats.md (question/answer, TRL's)
      forget: builtin:forget_vqa    # builtin:<split>[+<split>...], a datasets.save_to_disk folder, parquet / json /
      retain: builtin:retain_vqa+retain_qa+forget_qa   # jsonl / csv file(s), a Hub dataset id, or {path:, split:}
      holdout: data/holdout.jsonl   # optional: never-seen rows, the stop rule's target
      benchmark: {num_people: 20}   # settings of the built-in benchmark (optional)
    mask: {threshold: 0.5}          # optional: any SaliencyMaskConfig field, or {path: <saved mask folder or Hub id>}
    eval: {benchmark: builtin}      # optional: evaluate before and after (default: the run's own rows; or
                                    #   forget/retain/holdout rows, or benchmark: builtin|mllmu:|clear:|tofu:|
                                    #   muse:|fiubench:|umubench:|safeeraser:|covubench:)
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
run directory that has it is complete. The card's model-index holds the ``eval:`` section's before/after metrics, or,
without one, the trainer's own forget / retain / holdout measurements.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from dataclasses import asdict
from typing import Any

from .data_files import first_line, load_data, preserve_sets
from .run_config import DATA_SETS, OWN_DATA, ConfigError, RunPlan, method_parser, read_run_config, run_args

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


def _load_model(plan: RunPlan):
    """The model and processor, loaded with the run's ``trl.ModelConfig`` keys (dtype, attention, quantization)."""
    import torch

    from .eval import load_model_and_processor

    model_args = plan.model_args
    kwargs: dict[str, Any] = {}
    if model_args is not None:
        from trl import get_quantization_config

        if model_args.dtype not in (None, "auto"):
            kwargs["dtype"] = getattr(torch, model_args.dtype)
        elif model_args.dtype == "auto":
            kwargs["dtype"] = "auto"
        kwargs["attn_implementation"] = model_args.attn_implementation
        if model_args.model_revision not in (None, "main"):
            kwargs["revision"] = model_args.model_revision
        quantization = get_quantization_config(model_args)
        if quantization is not None:
            kwargs["quantization_config"] = quantization
            if torch.cuda.is_available():  # one process, one GPU: the quantized weights go there (TRL's kbit map)
                kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        return load_model_and_processor(plan.model, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model: {err}" if not str(err).startswith("model") else str(err)) from err


def _peft_config(plan: RunPlan):
    if plan.model_args is None or not plan.model_args.use_peft:
        return None
    from trl import get_peft_config

    return get_peft_config(plan.model_args)


def _evaluation(plan: RunPlan, processor, benchmark, run_sets: dict[str, Any]):
    """``measure(model) -> metrics`` for the run's ``eval:`` section, or None without one; and what it scores."""
    from transformers import set_seed

    from ..evaluation import Evaluator, RelearnConfig, relearn_attack
    from .eval import load_benchmark

    evaluate, seed = plan.eval, plan.seed
    if not evaluate:
        return None, None
    bench = evaluate["benchmark"]
    if bench == OWN_DATA:  # the run's own rows (eval.<set> replacing data.<set>)
        sets = {what: run_sets[what] if evaluate["sets"].get(what) == plan.data.get(what) and what in run_sets
                else load_data(evaluate["sets"][what], what, benchmark, section="eval")
                for what in evaluate["sets"]}

        def measure(model) -> dict[str, float]:
            set_seed(seed)
            return Evaluator(model, processor, {}, batch_size=evaluate["batch_size"]).evaluate_rows(
                sets, rouge=evaluate["rouge"], mia=evaluate["mia"])

        return measure, "your rows: " + ", ".join(f"{k} ({len(v)} rows)" for k, v in sets.items())
    try:
        eval_bench = benchmark if bench == "builtin" else load_benchmark(bench, forget_split=evaluate["forget_split"])
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"eval.benchmark: {first_line(err)}") from err

    def measure(model) -> dict[str, float]:
        set_seed(seed)
        kind = bench.partition(":")[0]
        if kind in ("tofu", "muse"):
            from ..evaluation.text_evaluator import TextEvaluator

            evaluator = TextEvaluator(model, processor, eval_bench, batch_size=evaluate["batch_size"])
            return evaluator.tofu_metrics(rouge=evaluate["rouge"]) if kind == "tofu" else evaluator.muse_metrics()
        evaluator = Evaluator(model, processor, eval_bench, batch_size=evaluate["batch_size"])
        metrics = evaluator.evaluate(rouge=evaluate["rouge"], mia=evaluate["mia"])
        if evaluate["relearn"] and "forget_vqa" in eval_bench:
            metrics.update(relearn_attack(model, processor, eval_bench["forget_vqa"], RelearnConfig(seed=seed),
                                          eval_batch_size=evaluate["batch_size"]))
        # Each robustness attack adds its own <attack>_... metrics (and so its own rows in the card's model-index).
        attacks = [a for a in evaluate.get("attacks") or () if not (a == "relearn" and evaluate["relearn"])]
        for values in evaluator.run_attacks(attacks, seed=seed).values():
            metrics.update(values)
        return metrics

    return measure, f"the {bench.partition(':')[0]} benchmark"


def _probe_metrics(trainer) -> tuple[dict | None, dict | None]:
    """The trainer's own before/after measurements (forget / retain / holdout NLL, the forget-vs-holdout AUC): what a
    run without an ``eval:`` section reports in the card."""
    from ..trainers.callbacks import BUILTIN_SETS

    probe = getattr(trainer, "unlearning_eval", None)
    if probe is None or not probe.before or not probe.after:
        return None, None

    def keep(metrics: dict) -> dict:
        return {k: v for k, v in metrics.items()
                if k == "mia_auc" or any(k == f"{name}_nll" for name in BUILTIN_SETS)}

    before, after = keep(probe.before), keep(probe.after)
    return (before, after) if before and after else (None, None)


def _resolved(spec):
    """A data entry as a later `hf-unlearn eval --model RUN_DIR` can read it again: local paths made absolute."""
    if spec is None:
        return None
    path, split = (spec["path"], spec.get("split")) if isinstance(spec, dict) else (spec, None)
    if not path.startswith("builtin") and glob.glob(os.path.expanduser(path)):
        path = os.path.abspath(os.path.expanduser(path))
    return {"path": path, "split": split} if split is not None else path


def run_plan(plan: RunPlan) -> int:
    """Execute a validated configuration (see the module docstring)."""
    from transformers import set_seed

    from ..data.synthetic import SyntheticBenchmarkConfig, build_synthetic_benchmark
    from ..evaluation.report import write_text
    from ..trainers.registry import MethodData, MethodUnavailableError, get_method
    from .eval import RUN_INFO, format_metrics

    name, output_dir, seed = plan.method, plan.output_dir, plan.seed
    try:
        bench_config = SyntheticBenchmarkConfig(**{"seed": seed, **plan.benchmark})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.benchmark: {err}") from err
    evaluate = plan.eval
    uses_builtin = any(isinstance(plan.data.get(k), str) and plan.data[k].startswith("builtin")
                       for k in DATA_SETS) or (evaluate or {}).get("benchmark") == "builtin" or any(
        isinstance(v, str) and v.startswith("builtin") for v in (evaluate or {}).get("sets", {}).values())
    benchmark = build_synthetic_benchmark(bench_config) if uses_builtin else None
    run_sets = {what: load_data(plan.data.get(what), what, benchmark) for what in DATA_SETS}
    forget, retain, holdout = (run_sets[k] for k in DATA_SETS)
    run_sets = {k: v for k, v in run_sets.items() if v is not None}
    if len(forget) == 0:
        raise ConfigError("data.forget is empty: there is nothing to unlearn.")
    data = MethodData(forget=forget, retain=retain, preserve=preserve_sets(retain), holdout=holdout)
    mask = _load_mask(plan.mask)
    peft_config = _peft_config(plan)

    model, processor = _load_model(plan)
    measure, evaluated = _evaluation(plan, processor, benchmark, run_sets)

    before = measure(model) if measure is not None else None
    set_seed(seed)
    start = time.perf_counter()
    try:
        args = run_args(name, plan.overrides, output_dir, seed)
        trainer = get_method(name).build_trainer(model, processor, data, args, mask=mask,
                                                 ref_model=plan.run.ref_model, peft_config=peft_config)
    except MethodUnavailableError as err:
        raise ConfigError(f"method {name!r} is not available: {err}") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: {err}") from err
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_state()  # trainer_state.json: the log history, next to the logs of `report_to`
    after = measure(trainer.model) if measure is not None else None
    if hasattr(trainer, "set_card_metadata"):
        trainer.set_card_metadata(license=plan.run.license, base_model=plan.run.base_model)
    card_before, card_after = (before, after) if after is not None else _probe_metrics(trainer)
    if card_after is not None and hasattr(trainer, "record_evaluation"):
        trainer.record_evaluation(card_before, card_after)

    # The final model (with its processor) is one staged save published into output_dir (model_folder.py): an
    # earlier run's files there are replaced, never mixed in; the run record is written last, so a run directory
    # without it is an interrupted run.
    trainer.save_model(output_dir)
    mask_used = getattr(trainer, "saliency_mask", None)
    info = {
        "method": name, "model": plan.model, "seed": seed,
        "overrides": plan.overrides,  # what the file and the command line set
        "model_args": plan.model_overrides,  # the trl.ModelConfig keys set (PEFT / LoRA, dtype, quantization)
        "args": trainer.args.to_dict(),  # every training argument as used (registry defaults + overrides)
        "mask": getattr(getattr(mask_used, "config", None), "to_dict", lambda: None)(),
        "ref_model": plan.run.ref_model, "data": plan.data, "eval": evaluate, "train_time_s": seconds,
        # where the rows were read from, for `hf-unlearn eval --model RUN_DIR` (local only: never pushed)
        "data_resolved": {k: _resolved(plan.data.get(k)) for k in DATA_SETS if plan.data.get(k) is not None},
        "rows": {k: len(v) if v is not None else 0 for k, v in (("forget", forget), ("retain", retain),
                                                                ("holdout", holdout))},
        "global_step": trainer.state.global_step,
        "benchmark": asdict(bench_config) if uses_builtin else None,
        "metrics_before": before, "metrics_after": after,
        "card_metrics": "eval" if after is not None else ("probe" if card_after is not None else None),
    }
    write_text(os.path.join(output_dir, RUN_INFO), json.dumps(info, indent=2, default=str) + "\n")
    print(f"{name}: unlearned in {seconds:.1f} s ({trainer.state.global_step} steps); saved to {output_dir}")
    if after is not None:
        print(f"evaluated on {evaluated}")
        print(format_metrics({f"{k} (before -> after)": f"{before.get(k, float('nan')):.4f} -> {v:.4f}"
                              for k, v in after.items()}))
    return 0
