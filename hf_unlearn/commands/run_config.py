"""Reading and validating ``hf-unlearn run --config run.yaml [--any_training_argument value ...]``.

The file follows ``trl sft``: training arguments are flat top-level keys, parsed (with the method's own knobs) by
``trl.TrlParser`` from the method's config class (``NPOConfig``, ...), and flags on the command line override the
file. The model's loading and PEFT keys are ``trl.ModelConfig``'s (``use_peft``, ``lora_r``, ``lora_alpha``,
``lora_target_modules``, ``dtype`` / ``torch_dtype``, ``attn_implementation``, ``load_in_4bit``, ...), flat too, as in
``trl sft``. Four sections hold what is not a training argument: ``data:``, ``mask:``, ``eval:`` (mappings) and the
run keys of ``RunArguments`` (``method``, ``model``, ``ref_model``, ``license``, ``base_model``). Every key at every level is
checked against the allowed list, with a close-match suggestion; every problem is one ``ConfigError`` whose message
names the key and the fix. Nothing is loaded or written here.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigError", "RunArguments", "RunPlan", "read_run_config"]

SECTIONS = ("data", "mask", "eval")
DATA_KEYS = ("forget", "retain", "holdout", "benchmark")
DATA_SETS = ("forget", "retain", "holdout")  # the row sets a run reads (holdout: never trained on, the stop rule)
DATA_ENTRY_KEYS = ("path", "split")
EVAL_KEYS = ("benchmark", "forget", "retain", "holdout", "batch_size", "forget_split", "rouge", "mia", "relearn",
             "attacks")
# Benchmarks by prefix (``builtin`` alone; the others name a local snapshot or a Hub id after the colon).
BENCHMARKS = ("builtin", "mllmu", "clear", "tofu", "muse", "fiubench", "umubench", "safeeraser", "covubench")
BENCHMARK_SPECS = ", ".join(b if b == "builtin" else f"{b}:PATH" for b in BENCHMARKS)
OWN_DATA = "data"  # eval.benchmark's value for "the run's own rows" (the default when the data is not built in)
MASK_FILE_KEYS = ("path", "subfolder")  # a saved mask instead of computing one
MASK_RESERVED = ("hf_unlearn_version", "mask_type")  # filled in by the library
# Keys of the earlier nested schema, with where they went.
MOVED = {
    "training": "training arguments are flat top-level keys now (like `trl sft`): write `max_steps: 20` at the top "
                "level instead of under `training:`",
    "evaluate": "use `eval: {benchmark: builtin}`",
    "eval_batch_size": "use `eval: {batch_size: 16}`",
    "mask_threshold": "use `mask: {threshold: 1.0}`",
    # transformers 5 dropped the training argument; TensorBoard reads its folder from the environment instead
    "logging_dir": "transformers 5 has no `logging_dir`: TensorBoard logs go to output_dir/runs/<date>; set the "
                   "TENSORBOARD_LOGGING_DIR environment variable to put them elsewhere",
}


class ConfigError(ValueError):
    """The run configuration is invalid; the message names the key and the fix (one line)."""


@dataclass
class RunArguments:
    """The run's own keys (top level of the YAML, or ``--method`` ... on the command line)."""

    method: str | None = field(default=None, metadata={"help": "A registered method (hf-unlearn demo --list-methods)."})
    model: str | None = field(
        default=None, metadata={"help": "The model to unlearn: a local folder (looked up first) or a Hub id."})
    ref_model: str | None = field(
        default=None,
        metadata={"help": "Reference model (NPO, retain_loss_type=kl) or teacher (VKD): a local folder or a Hub id. "
                          "Default: a frozen copy of `model`."})
    license: str | None = field(
        default=None, metadata={"help": "License of the model card when the base model's card does not give one."})
    base_model: str | None = field(
        default=None,
        metadata={"help": "Hub id published as the card's base_model (and a LoRA adapter's base) when `model` is a "
                          "local folder."})


@functools.cache
def _model_arguments_class():
    """``trl.ModelConfig`` plus ``torch_dtype``, the name older TRL and transformers releases gave ``dtype``."""
    from trl import ModelConfig

    @dataclass
    class ModelArguments(ModelConfig):
        torch_dtype: str | None = field(
            default=None, metadata={"help": "The older name of `dtype` (TRL < 1.0, transformers < 4.56); use one.",
                                    "choices": ["auto", "bfloat16", "float16", "float32"]})

        def __post_init__(self):
            super().__post_init__()
            if self.torch_dtype is not None:
                if self.dtype not in (None, "float32", self.torch_dtype):
                    raise ConfigError(f"dtype {self.dtype!r} and torch_dtype {self.torch_dtype!r} disagree; set one "
                                      "(torch_dtype is dtype's older name).")
                self.dtype = self.torch_dtype
            # TRL turns a one-name list into a string, which PEFT then reads as a regex over the *full* module name
            # (`[q_proj]` would match nothing); a plain module name stays a list.
            target = self.lora_target_modules
            if isinstance(target, str) and target != "all-linear" and re.fullmatch(r"[\w.]+", target):
                self.lora_target_modules = [target]

    return ModelArguments


def model_argument_names() -> list[str]:
    """The ``trl.ModelConfig`` keys a run accepts (besides the method's and the run's own)."""
    return _field_names(_model_arguments_class())


@dataclass
class RunPlan:
    """A validated run: what to load, how to train, what to evaluate."""

    method: str
    model: str
    output_dir: str
    seed: int
    overrides: dict[str, Any]  # the method config's values given in the file or on the command line (typed)
    run: RunArguments
    data: dict[str, Any]
    mask: dict[str, Any] | None  # SaliencyMaskConfig fields, or {"path": ..., "subfolder": ...}
    eval: dict[str, Any] | None
    benchmark: dict[str, Any]  # SyntheticBenchmarkConfig fields given under data.benchmark
    model_args: Any = None  # trl.ModelConfig (+ torch_dtype): dtype, attention, PEFT / LoRA, quantization
    model_overrides: dict[str, Any] = field(default_factory=dict)  # the ModelConfig keys the file and flags set


# ------------------------------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------------------------------
def _suggest(key: str, allowed) -> str:
    close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_keys(where: str, given, allowed, listing: str | None = None) -> None:
    for key in given:
        if key in allowed:
            continue
        if key in MOVED:
            raise ConfigError(f"{where}: {key!r} is no longer a key: {MOVED[key]}.")
        raise ConfigError(f"{where}: unknown key {key!r}.{_suggest(key, allowed)} "
                          f"Allowed: {listing or ', '.join(sorted(map(str, allowed)))}.")


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


# ------------------------------------------------------------------------------------------------------------------
# YAML
# ------------------------------------------------------------------------------------------------------------------
def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except yaml.reader.ReaderError:
        raise ConfigError(f"{path} is not a text file (it holds binary data); pass a YAML file.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{path} is not valid YAML: {problem}{where}. Fix the file (keys are `name: value`, "
                          "nested sections are indented).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; pass a YAML file.") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (method:, model:, output_dir:, data:, ...), "
                          f"got {type(config).__name__}.")
    return config


# ------------------------------------------------------------------------------------------------------------------
# Typed sections (dataclass fields from YAML scalars)
# ------------------------------------------------------------------------------------------------------------------
def _scalar_types(hint) -> tuple[type, ...]:
    origin = typing.get_origin(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(hint, types.UnionType)):
        return tuple(t for arg in typing.get_args(hint) for t in _scalar_types(arg))
    return (hint,) if hint in (bool, int, float, str) else ()


def coerce_section(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` with numbers given as strings (YAML reads ``1e-5`` as a string) converted to the field's type."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        allowed = _scalar_types(hints.get(key))
        if isinstance(value, str) and str not in allowed and allowed:
            target = next(t for t in (int, float, bool) if t in allowed)
            try:
                if target is bool:
                    from transformers.hf_argparser import string_to_bool

                    value = string_to_bool(value)
                else:
                    value = target(value)
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                raise ConfigError(f"{where}.{key}: {value!r} is not a valid {target.__name__}.") from None
        elif isinstance(value, bool) and bool not in allowed and allowed and any(t in allowed for t in (int, float)):
            raise ConfigError(f"{where}.{key}: got a boolean ({value}); give a number.")
        out[key] = value
    return out


def _field_names(cls, exclude=()) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in exclude]


# ------------------------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------------------------
def _mapping(config: dict, key: str, path: str) -> dict | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: `{key}` must be a mapping (indented `name: value` lines), got "
                          f"{type(value).__name__} {value!r}.")
    return value


def _data_section(section: dict | None, path: str) -> tuple[dict, dict]:
    from ..data.synthetic import SyntheticBenchmarkConfig

    section = dict(section or {})
    _check_keys(f"{path}: data", section, DATA_KEYS)
    for what in DATA_SETS:
        entry = section.get(what)
        if isinstance(entry, dict):
            _check_keys(f"{path}: data.{what}", entry, DATA_ENTRY_KEYS)
            if not isinstance(entry.get("path"), str) or not entry["path"]:
                raise ConfigError(f"{path}: data.{what} as a mapping needs `path:` (and optionally `split:`).")
        elif entry is not None and not isinstance(entry, str):
            raise ConfigError(f"{path}: data.{what} must be builtin:<split>[+<split>...], a folder, file(s), a Hub "
                              f"dataset id or {{path:, split:}}; got {type(entry).__name__} {entry!r}.")
    # The built-in benchmark's defaults: forget its forget people's image questions, keep everything else.
    section.setdefault("forget", "builtin:forget_vqa")
    if "retain" not in section and str(section["forget"]).startswith("builtin"):
        section["retain"] = "builtin:retain_vqa+retain_qa+forget_qa"
    bench = section.pop("benchmark", None) or {}
    if not isinstance(bench, dict):
        raise ConfigError(f"{path}: data.benchmark must be a mapping of {_field_names(SyntheticBenchmarkConfig)}.")
    _check_keys(f"{path}: data.benchmark", bench, _field_names(SyntheticBenchmarkConfig))
    return section, coerce_section(SyntheticBenchmarkConfig, bench, "data.benchmark")


def _mask_section(section: dict | None, path: str) -> dict | None:
    from ..saliency import SaliencyMaskConfig

    if section is None:
        return None
    knobs = _field_names(SaliencyMaskConfig, exclude=MASK_RESERVED)
    _check_keys(f"{path}: mask", section, [*knobs, *MASK_FILE_KEYS])
    if "path" in section:
        extra = sorted(set(section) - set(MASK_FILE_KEYS))
        if extra:
            raise ConfigError(f"{path}: mask: `path` loads a saved mask, so {extra} cannot be set with it; drop "
                              "`path` to compute a mask with these settings, or drop them.")
        return dict(section)
    if "subfolder" in section:
        raise ConfigError(f"{path}: mask.subfolder needs mask.path (a saved mask folder or Hub id).")
    values = coerce_section(SaliencyMaskConfig, section, "mask")
    try:
        SaliencyMaskConfig(**values)  # every value checked now, before any model is loaded
    except (TypeError, ValueError) as err:
        raise ConfigError(f"mask: {_one_line(err)}") from None
    return values


def _eval_section(value: Any, path: str, data: dict) -> dict | None:
    """``eval:`` as a mapping. Without ``benchmark`` it evaluates the run's own rows (``data:``'s forget / retain /
    holdout, each replaced by ``eval.<set>`` when given), or the built-in benchmark when the run trains on it."""
    if value is None or value is False:
        return None
    if isinstance(value, str):  # `eval: builtin` is short for `eval: {benchmark: builtin}`
        value = {"benchmark": value}
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: `eval` must be a mapping ({', '.join(EVAL_KEYS)}), a benchmark name or false.")
    _check_keys(f"{path}: eval", value, EVAL_KEYS)
    own_sets = {k: value[k] for k in DATA_SETS if value.get(k) is not None}
    for what, entry in own_sets.items():
        if not isinstance(entry, (str, dict)) or (isinstance(entry, dict) and not entry.get("path")):
            raise ConfigError(f"{path}: eval.{what} must be a folder, file(s), a Hub dataset id or {{path:, split:}}; "
                              f"got {type(entry).__name__} {entry!r}.")
    if own_sets and value.get("benchmark") not in (None, OWN_DATA):
        raise ConfigError(f"{path}: eval: `benchmark` and your own rows ({', '.join(own_sets)}) are two different "
                          "evaluations; keep one (drop `benchmark` to score your rows, or the row sets to score the "
                          "benchmark).")
    trains_on_builtin = str(data.get("forget", "")).startswith("builtin")
    default = "builtin" if trains_on_builtin and not own_sets else OWN_DATA
    out = {"benchmark": default, "batch_size": 16, "forget_split": None, "rouge": True, "mia": True,
           "relearn": False, "attacks": None, **value}
    for key in ("rouge", "mia", "relearn"):
        if not isinstance(out[key], bool):
            raise ConfigError(f"eval.{key}: must be true or false, got {out[key]!r}.")
    from ..evaluation.attack_registry import parse_attacks

    try:
        out["attacks"] = parse_attacks(out["attacks"])
    except ValueError as err:
        raise ConfigError(f"eval.attacks: {err} Give a list or a comma-separated string.") from None
    if isinstance(out["batch_size"], bool) or not isinstance(out["batch_size"], int) or out["batch_size"] < 1:
        raise ConfigError(f"eval.batch_size: must be an integer >= 1, got {out['batch_size']!r}.")
    bench = out["benchmark"]
    if bench == OWN_DATA and out["attacks"]:
        raise ConfigError("eval.attacks: the attacks score a benchmark's multiple-choice splits; set eval.benchmark "
                          "(builtin, mllmu:PATH or clear:PATH) or drop `attacks`.")
    if bench == OWN_DATA:
        sets = {k: own_sets.get(k, data.get(k)) for k in DATA_SETS}
        out["sets"] = {k: v for k, v in sets.items() if v is not None}
        return out
    check_benchmark_name(bench, "eval.benchmark")
    return out


def check_benchmark_name(bench: Any, where: str) -> None:
    """``builtin`` or ``<kind>:<path>`` with a known kind; a mistyped local path fails now, not after the model loads."""
    kind, _, location = bench.partition(":") if isinstance(bench, str) else ("", "", "")
    if not (bench == "builtin" or kind in BENCHMARKS[1:] and location):
        raise ConfigError(f"{where}: {bench!r} is not one of {BENCHMARK_SPECS} (PATH: a local snapshot folder or a "
                          "Hub dataset id).")
    if bench != "builtin":
        from ..hub.resolve import locate

        try:
            locate(location, where)
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None


# ------------------------------------------------------------------------------------------------------------------
# Top level: TrlParser over RunArguments and the method's config class
# ------------------------------------------------------------------------------------------------------------------
class _Parser:
    """A ``trl.TrlParser`` whose errors become ``ConfigError`` (one line) instead of a usage dump and ``exit``."""

    @staticmethod
    def build(config_class):
        from trl import TrlParser

        class Parser(TrlParser):
            def error(self, message):  # argparse would print usage and exit; the command prints one line
                raise ConfigError(_one_line(message))

        return Parser([RunArguments, _model_arguments_class(), config_class], prog="hf-unlearn run",
                      allow_abbrev=False)


def method_parser(method: str):
    """The parser of ``method``'s flags (also used for ``hf-unlearn run --method X --help``)."""
    from ..trainers.registry import get_method

    return _Parser.build(get_method(method).config_class)


def _pre_parse_method(argv: list[str]) -> str | None:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--method", default=None)
    known, _ = pre.parse_known_args(argv)
    return known.method


def _check_method(name: Any, config: dict, path: str) -> str:
    from ..trainers.registry import METHODS

    if not isinstance(name, str) or not name:
        typo = difflib.get_close_matches("method", [str(k) for k in config if k != "method"], n=1, cutoff=0.6)
        hint = f" {path} has {typo[0]!r}: did you mean 'method'?" if typo else ""
        raise ConfigError(f"method: missing.{hint} Set `method:` in the file or --method, one of "
                          f"{', '.join(METHODS)}.")
    if name not in METHODS:
        raise ConfigError(f"method: unknown {name!r}.{_suggest(name, METHODS)} Registered methods: "
                          f"{', '.join(METHODS)}.")
    return name


def _flag_dests(parser, argv: list[str]) -> set[str]:
    """The destinations set on the command line (flags as given, ``--x=v`` included)."""
    dests = set()
    for token in argv:
        if token.startswith("--"):
            action = parser._option_string_actions.get(token.split("=", 1)[0])
            if action is not None:
                dests.add(action.dest)
    return dests


def _stringify(value: Any) -> Any:
    """Scalars become strings so argparse type-checks them like flags (``max_steps: abc`` is an error, not a
    crash three modules later); ``None``, lists and mappings stay as they are."""
    if value is None or isinstance(value, (list, dict)):
        return value
    return str(value)


def read_run_config(path: str, argv: list[str] | None = None) -> RunPlan:
    """Parse and validate ``path`` with command-line overrides ``argv`` (``["--learning_rate", "1e-5", ...]``)."""
    argv = list(argv or [])
    config = _load_yaml(path)
    method = _check_method(_pre_parse_method(argv) or config.get("method"), config, path)
    parser = method_parser(method)
    from ..trainers.registry import get_method

    config_class = get_method(method).config_class
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    flat = {k: v for k, v in config.items() if k not in SECTIONS}
    _check_keys(path, flat, dests, listing=(
        f"the run keys {', '.join(f.name for f in dataclasses.fields(RunArguments))}; the sections "
        f"{', '.join(SECTIONS)}; trl.ModelConfig's keys (use_peft, lora_r, lora_alpha, lora_target_modules, dtype, "
        f"attn_implementation, load_in_4bit, ...); and any field of {config_class.__name__} (list them with "
        f"`hf-unlearn run --method {method} --help`)"))
    parser.set_defaults_with_config(**{k: _stringify(v) for k, v in flat.items()})
    on_command_line = _flag_dests(parser, argv)
    try:
        namespace, unknown = parser.parse_known_args(argv)
    except ConfigError as err:  # say whether the bad value came from the file or from a flag
        dest = next((a.dest for a in parser._actions if a.option_strings and f"argument {a.option_strings[0]}"
                     in str(err)), None)
        if dest in flat and dest not in on_command_line:
            raise ConfigError(f"{path}: {dest}: {err}") from None
        raise
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        raise ConfigError(f"unrecognized argument {flag!r}.{_suggest(flag.lstrip('-').split('=')[0], dests)} "
                          f"Flags are the fields of RunArguments and {config_class.__name__} "
                          f"(`hf-unlearn run --method {method} --help`).")
    given = set(flat) | on_command_line
    run_fields = {f.name for f in dataclasses.fields(RunArguments)}
    run = RunArguments(**{k: getattr(namespace, k) for k in run_fields})
    run.method = method
    model_fields = set(model_argument_names())
    model_args = _model_arguments(namespace, model_fields)
    model_overrides = {k: getattr(model_args, k) for k in sorted(given & model_fields)}
    overrides = {k: getattr(namespace, k) for k in sorted(given - run_fields - model_fields)}
    if model_args.model_name_or_path:  # trl sft's name for it
        if run.model and run.model != model_args.model_name_or_path:
            raise ConfigError(f"{path}: `model` and `model_name_or_path` name different models; set one.")
        run.model = model_args.model_name_or_path
    if not run.model:
        raise ConfigError(f"{path}: missing `model:` (a local folder or a Hub id), or pass --model.")
    _check_model_arguments(model_args)
    from ..hub.resolve import locate

    for what, name in (("model", run.model), ("ref_model", run.ref_model)):
        try:
            if name:
                locate(name, what)  # a mistyped local path fails now, named as a path (not as a Hub problem)
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None
    output_dir = overrides.pop("output_dir", None)
    if not output_dir:
        raise ConfigError(f"{path}: missing `output_dir:` (where the model, logs and checkpoints go), or pass "
                          "--output_dir.")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        from ..trainers.checkpointing import LOCK_NAME

        if os.path.exists(os.path.join(output_dir, LOCK_NAME)):  # never advise deleting a folder a run is using
            raise ConfigError(f"output_dir {output_dir!r} is in use by another run (it holds {LOCK_NAME}); choose a "
                              "new folder, or wait for that run to end.")
        raise ConfigError(f"output_dir {output_dir!r} exists and is not empty; choose a new folder or delete it.")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConfigError(f"output_dir {output_dir!r} is a file; choose a folder.")
    seed = overrides.pop("seed", config_class.__dataclass_fields__["seed"].default)  # what --help shows
    _check_values(method, overrides, output_dir, seed)
    _check_disk(output_dir, run.model)
    if run.base_model is not None:
        from ..hub.safety import is_hub_model_id

        if not is_hub_model_id(run.base_model):
            raise ConfigError(f"base_model: {run.base_model!r} is not a Hub id like 'org/name' (a local path is "
                              "never published).")
    if run.license is not None:
        from ..hub.card import check_license

        try:
            check_license(run.license)
        except ValueError as err:
            raise ConfigError(f"license: {_one_line(err)}") from None

    data, benchmark = _data_section(_mapping(config, "data", path), path)
    return RunPlan(method=method, model=str(run.model), output_dir=str(output_dir), seed=int(seed),
                   overrides=overrides, run=run, data=data, mask=_mask_section(_mapping(config, "mask", path), path),
                   eval=_eval_section(config.get("eval"), path, data), benchmark=benchmark, model_args=model_args,
                   model_overrides=model_overrides)


def _model_arguments(namespace, names: set[str]):
    try:
        return _model_arguments_class()(**{k: getattr(namespace, k) for k in names})
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # ModelConfig's own checks (load_in_8bit with load_in_4bit)
        raise ConfigError(_one_line(err)) from None


def _check_model_arguments(model_args) -> None:
    """What TRL leaves to a traceback: quantized weights train only through adapters, and need bitsandbytes."""
    quantized = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit" if model_args.load_in_8bit else None
    if quantized is None:
        return
    if not model_args.use_peft:
        raise ConfigError(f"{quantized}: quantized weights cannot be trained; QLoRA trains adapters on top of them. "
                          "Add `use_peft: true` (and the lora_* keys), or drop the quantization.")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{quantized}: QLoRA needs the bitsandbytes package, which is not installed. Install it "
                          "(`pip install 'hf_unlearn[qlora]'`; its CPU build runs too, slowly), or drop "
                          f"`{quantized}` to train LoRA on unquantized weights.")


def _weights_bytes(model: str) -> int:
    """Bytes of a local model folder's weight files (0 for a Hub id): what the final save writes at least."""
    from ..hub.resolve import locate

    source = locate(model, "model")
    if not source.local or not os.path.isdir(source.location):
        return 0
    return sum(entry.stat().st_size for entry in os.scandir(source.location)
               if entry.is_file() and entry.name.endswith((".safetensors", ".bin")))


def _check_disk(output_dir: str, model: str) -> None:
    """output_dir's disk is writable and has room for the final model (checkpoints need more), before loading."""
    from ..disk import DiskWriteError, check_output_folder

    try:
        check_output_folder(output_dir, _weights_bytes(model), "the unlearned model alone")
    except DiskWriteError as err:
        raise ConfigError(f"output_dir: {err}") from None


def _check_values(method: str, overrides: dict, output_dir: str, seed: int) -> None:
    """Build the method's config once as the run will (``run_args``), so a bad value fails before any model loads.

    The trainer stays the authority (its own errors become ``ConfigError`` too); this check catches values that are
    wrong on their own (``beta: -1``, ``lr_scheduler_type: cosin``) early.
    """
    try:
        run_args(method, overrides, output_dir, seed)
    except (TypeError, ValueError) as err:
        raise ConfigError(_one_line(err)) from None


def run_args(method: str, overrides: dict, output_dir: str, seed: int):
    """The training arguments of a run: the method's library defaults (what ``--help`` shows), then the file's and
    the command line's values. Progress bars stay on, as in any ``transformers`` run."""
    from ..trainers.registry import get_method

    return get_method(method).config(**{"output_dir": output_dir, "seed": seed, **overrides})
