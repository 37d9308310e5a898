"""Bad input, all of it: every case gets one clear error (or a documented warning) before anything is written.

Issue 23 ("Reliability, round 3"). Each case gives the input, the expected exit status (CLI) or exception type
(Python), a key phrase of the message, and checks that nothing was written: every file and folder under the test's
folder and the shared input files is as it was before (an earlier ``output_dir`` included). No case takes an
optimizer step (most fail before a model is loaded), so the tiny model is built once and the battery stays fast.

Cases that need a real read-only or full disk mount a small tmpfs (root only) and are in their own tests below.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import TrainingArguments

from hf_unlearn import (
    GAConfig,
    GATrainer,
    IdkPOConfig,
    MMUnlearnerConfig,
    NPOConfig,
    NPOTrainer,
    RMUConfig,
    SaliencyMaskConfig,
    SimNPOConfig,
    UNDIALConfig,
    UnlearnDataCollator,
    VKDConfig,
    compute_saliency_mask,
)
from hf_unlearn.cli import main
from hf_unlearn.evaluation import RelearnConfig
from hf_unlearn.testing import tiny_llava
from hf_unlearn.testing.toy import toy_portrait

CANARY = "Zebulon Quartermaine"  # forget-row text that must never appear in a message


# ------------------------------------------------------------------------------------------------------------------
# Shared inputs, built once
# ------------------------------------------------------------------------------------------------------------------
def _jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _qa(i: int, answer: Any = "pilot") -> dict:
    return {"question": f"What is the job of {CANARY} number {i}?", "answer": answer}


@pytest.fixture(scope="module")
def files(tiny_llava_dir, tmp_path_factory) -> Path:
    """Data files, damaged model folders and configs every case reads (never written by a case)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    _jsonl(root / "forget.jsonl", [_qa(i) for i in range(4)])
    _jsonl(root / "no_answer.jsonl", [{"question": "q", "ans": "a"}])
    (root / "empty.jsonl").write_text("")
    (root / "empty.csv").write_text("")
    _jsonl(root / "trl.jsonl", [{"prompt": "q", "completion": "a"}])
    _jsonl(root / "prompt_only.jsonl", [{"prompt": "q"}])
    _jsonl(root / "messages.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                   {"role": "assistant", "content": "a"}]}])
    _jsonl(root / "null_answer.jsonl", [_qa(0), _qa(1, None)])
    _jsonl(root / "blank_answer.jsonl", [_qa(0), _qa(1, "  ")])
    _jsonl(root / "int_answer.jsonl", [_qa(0, 7), _qa(1, 8)])
    (root / "malformed.jsonl").write_text('{"question": "q", "answer": \n')
    _jsonl(root / "int_image.jsonl", [{**_qa(0), "image": 7}])
    _jsonl(root / "vqa_no_image.jsonl", [{**_qa(0), "image": None, "kind": "vqa"}])
    (root / "notes.txt").write_text("question,answer\nq,a\n")
    (root / "not_a_dataset").mkdir()
    Dataset.from_dict({"question": [], "answer": []}).to_parquet(str(root / "no_rows.parquet"))
    Dataset.from_dict({"question": [], "answer": []}).save_to_disk(str(root / "saved_no_rows"))
    DatasetDict({"train": Dataset.from_list([_qa(0)])}).save_to_disk(str(root / "dataset_dict"))
    DatasetDict({"a": Dataset.from_list([_qa(0)]), "b": Dataset.from_list([_qa(1)])}).save_to_disk(
        str(root / "two_splits"))

    for name in ("corrupt", "zero_bytes", "pickled", "no_config"):
        shutil.copytree(tiny_llava_dir, root / name)
    weights = (tiny_llava_dir / "model.safetensors").read_bytes()
    (root / "corrupt" / "model.safetensors").write_bytes(weights[:1000])
    (root / "zero_bytes" / "model.safetensors").write_bytes(b"")
    (root / "pickled" / "model.safetensors").unlink()
    torch.save({"payload": _Evil()}, root / "pickled" / "pytorch_model.bin")
    (root / "no_config" / "config.json").unlink()

    (root / "run.yaml").write_text(f"method: ga\nmodel: {tiny_llava_dir}\noutput_dir: out\n")
    (root / "not_json.txt").write_text("hello\n")
    (root / "no_model_type.json").write_text('{"hidden_size": 8}')
    (root / "bad_model_type.json").write_text('{"model_type": "no_such_architecture"}')
    return root


class _Evil:
    """A pickle that would run code when loaded (it never is: loading is weights_only)."""

    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


def _tree(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under ``roots`` with its size and modification time: what "nothing written" compares."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                stat = os.stat(path)
                out[path] = (stat.st_size if name in filenames else None, stat.st_mtime_ns)
    return out


# ------------------------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------------------------
RUN = "method: @METHOD@\nmodel: @MODEL@\noutput_dir: @OUT@\nmax_steps: 1\ndata:\n  forget: @FILES@/forget.jsonl\n"


@dataclass(frozen=True)
class CliCase:
    """``hf-unlearn <argv>`` with ``@CONFIG@`` (the YAML below), ``@OUT@``, ``@MODEL@``, ``@FILES@``, ``@TMP@``."""

    argv: tuple[str, ...]
    phrase: str
    yaml: str | None = None
    exit_code: int = 2
    setup: Callable[[Path], None] | None = None  # earlier files in the test's folder (they must stay as they were)
    prog: str | None = None  # who reports it: `hf-unlearn <argv[0]>` unless the top-level parser does

    @property
    def prefix(self) -> str:
        return f"{self.prog or 'hf-unlearn ' + self.argv[0]}: error: "


def run_case(phrase: str, extra: str = "", argv: tuple[str, ...] = (), method: str = "ga",
             data: str | None = None, **kw) -> CliCase:
    yaml = RUN.replace("@METHOD@", method) + extra
    if data is not None:
        yaml = yaml.replace("@FILES@/forget.jsonl", data)
    return CliCase(("run", "--config", "@CONFIG@", *argv), phrase, yaml, **kw)


def _earlier_output(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "model.safetensors").write_bytes(b"an earlier run's weights")


def _running_output(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "hf_unlearn.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))


def _file_at_out(tmp: Path) -> None:
    (tmp / "out").write_text("not a folder")


def _earlier_eval(tmp: Path) -> None:
    (tmp / "eval.json").write_text('{"metrics": {"earlier": 1}}')


CLI_CASES: dict[str, CliCase] = {
    # Numbers: refused where they are set (the method's config), before any file is read.
    "lr-nan": run_case("learning_rate must be > 0 and finite, got nan", argv=("--learning_rate", "nan")),
    "lr-negative": run_case("learning_rate must be > 0 and finite, got -1e-05", "learning_rate: -1.0e-5\n"),
    "lr-inf": run_case("learning_rate must be > 0 and finite, got inf", argv=("--learning_rate", "inf")),
    "lr-zero": run_case("learning_rate must be > 0 and finite, got 0.0", argv=("--learning_rate", "0")),
    "batch-size-zero": run_case("per_device_train_batch_size must be an integer >= 1, got 0",
                                argv=("--per_device_train_batch_size", "0")),
    "batch-size-negative": run_case("per_device_train_batch_size must be an integer >= 1, got -4",
                                    "per_device_train_batch_size: -4\n"),
    "grad-accumulation-zero": run_case("gradient_accumulation_steps must be an integer >= 1, got 0",
                                       argv=("--gradient_accumulation_steps", "0")),
    "max-steps-negative": run_case("max_steps must be an integer >= 1, or -1 (the default)",
                                   argv=("--max_steps", "-5")),
    "max-steps-zero": run_case("max_steps must be an integer >= 1, or -1 (the default)", argv=("--max_steps", "0")),
    "epochs-zero": run_case("num_train_epochs=0 with max_steps=-1 trains zero steps",
                            argv=("--max_steps", "-1", "--num_train_epochs", "0")),
    "epochs-negative": run_case("num_train_epochs must be >= 0 and finite, got -1.0",
                                argv=("--max_steps", "-1", "--num_train_epochs", "-1")),
    "epochs-nan": run_case("num_train_epochs must be >= 0 and finite, got nan", "num_train_epochs: .nan\n"),
    "save-steps-negative": run_case("save_steps must be > 0 with save_strategy='steps'",
                                    argv=("--save_strategy", "steps", "--save_steps", "-1")),
    "save-steps-zero": run_case("save_steps must be > 0 with save_strategy='steps'",
                                "save_strategy: steps\nsave_steps: 0\n"),
    "logging-steps-negative": run_case("logging_steps must be > 0 with logging_strategy='steps'",
                                       argv=("--logging_steps", "-1")),
    "warmup-negative": run_case("warmup_steps >= 0", argv=("--warmup_steps", "-1")),
    "weight-decay-negative": run_case("weight_decay must be >= 0 and finite, got -0.1",
                                      argv=("--weight_decay", "-0.1")),
    "weight-decay-nan": run_case("weight_decay must be >= 0 and finite, got nan", argv=("--weight_decay", "nan")),
    "max-grad-norm-negative": run_case("max_grad_norm must be >= 0 and finite", argv=("--max_grad_norm", "-1")),
    "adam-beta1-one": run_case("adam_beta1 must be in [0.0, 1.0), got 1.0", argv=("--adam_beta1", "1")),
    "adam-epsilon-negative": run_case("adam_epsilon must be >= 0 and finite", argv=("--adam_epsilon=-1e-8",)),
    "max-length-zero": run_case("max_length must be an integer >= 1 or None, got 0", argv=("--max_length", "0")),
    "forget-weight-nan": run_case("forget_weight must be >= 0 and finite, got nan", argv=("--forget_weight", "nan")),
    "retain-weight-negative": run_case("retain_weight must be >= 0 and finite, got -1.0",
                                       argv=("--retain_weight", "-1")),
    "stop-loss-nan": run_case("stop_forget_loss_above must be finite", argv=("--stop_forget_loss_above", "nan")),
    "probe-rows-negative": run_case("probe_rows must be >= 0 and finite, got -1", argv=("--probe_rows", "-1")),
    "npo-beta-nan": run_case("beta must be > 0 and finite, got nan", argv=("--beta", "nan"), method="npo"),
    "npo-beta-zero": run_case("beta must be > 0 and finite, got 0.0", "beta: 0\n", method="npo"),
    "seed-not-a-number": run_case("argument --seed: invalid int value: 'abc'", argv=("--seed", "abc")),
    "flag-without-value": run_case("argument --max_steps/--max-steps: expected one argument", argv=("--max_steps",)),
    "lr-scheduler-typo": run_case("cosin", argv=("--lr_scheduler_type", "cosin")),
    # The file itself and the run keys
    "method-key-typo": CliCase(("run", "--config", "@CONFIG@"),
                               "method: missing. @CONFIG@ has 'methd': did you mean 'method'?",
                               "methd: ga\nmodel: @MODEL@\noutput_dir: @OUT@\n"),
    "method-missing": CliCase(("run", "--config", "@CONFIG@"), "method: missing. Set `method:` in the file",
                              "model: @MODEL@\noutput_dir: @OUT@\n"),
    "output-dir-missing": CliCase(("run", "--config", "@CONFIG@"), "missing `output_dir:`",
                                  "method: ga\nmodel: @MODEL@\n"),
    "output-dir-not-empty": run_case("output_dir '@TMP@/out' exists and is not empty", setup=_earlier_output),
    "output-dir-in-use": run_case("output_dir '@TMP@/out' is in use by another run (it holds hf_unlearn.lock)",
                                  setup=_running_output),
    "output-dir-is-a-file": run_case("output_dir '@TMP@/out' is a file", setup=_file_at_out),
    "model-missing": run_case("model: '@TMP@/no-model' does not exist", argv=("--model", "@TMP@/no-model")),
    "config-missing": CliCase(("run", "--config", "@TMP@/nope.yaml"), "config file '@TMP@/nope.yaml' does not exist"),
    "config-not-a-mapping": CliCase(("run", "--config", "@CONFIG@"), "the top level must be a mapping",
                                    "- method: ga\n"),
    "config-not-text": CliCase(("run", "--config", "@FILES@/corrupt/model.safetensors"),
                               "is not a text file (it holds binary data)"),
    "config-flag-missing": CliCase(("run",), "the following arguments are required: --config"),
    "eval-mllmu-missing-path": run_case("eval.benchmark: '@TMP@/no-bench' does not exist",
                                        "eval: mllmu:@TMP@/no-bench\n"),
    "eval-clear-missing-path": run_case("eval.benchmark: './no-clear' does not exist", "eval: clear:./no-clear\n"),
    "eval-batch-size-zero": run_case("eval.batch_size: must be an integer >= 1, got 0", "eval: {batch_size: 0}\n"),
    "eval-flag-not-bool": run_case("eval.rouge: must be true or false", "eval: {rouge: maybe}\n"),
    "license-unknown": run_case("is not a Hub license id", "license: My License\n"),
    "base-model-local-path": run_case("base_model: '/local/base' is not a Hub id", "base_model: /local/base\n"),
    "mask-threshold-nan": run_case("mask: threshold=nan must be a number", "mask: {threshold: .nan}\n"),
    # Data: read and checked row by row before the model is loaded
    "data-not-a-mapping": CliCase(("run", "--config", "@CONFIG@"), "`data` must be a mapping",
                                  "method: ga\nmodel: @MODEL@\noutput_dir: @OUT@\ndata: [a]\n"),
    "data-forget-a-number": run_case("data.forget must be builtin:<split>", data="5"),
    "data-forget-missing-file": run_case("data.forget: '@FILES@/nothing.jsonl' does not exist",
                                         data="@FILES@/nothing.jsonl"),
    "data-forget-txt": run_case("files must share one of the extensions", data="@FILES@/notes.txt"),
    "data-forget-no-answer-column": run_case("lacks column(s) ['answer']; columns found: ['question', 'ans']",
                                             data="@FILES@/no_answer.jsonl"),
    "data-forget-empty-jsonl": run_case("data.forget: '@FILES@/empty.jsonl' is empty (0 bytes)",
                                        data="@FILES@/empty.jsonl"),
    "data-forget-empty-csv": run_case("data.forget: '@FILES@/empty.csv' is empty (0 bytes)", data="@FILES@/empty.csv"),
    "data-forget-no-rows": run_case("data.forget: '@FILES@/no_rows.parquet' holds no rows",
                                    data="@FILES@/no_rows.parquet"),
    "data-forget-saved-without-rows": run_case("is a folder that datasets.load_from_disk cannot read",
                                               data="@FILES@/saved_no_rows"),
    # (TRL prompt/completion and `messages` rows are read now: tests/test_cli_ecosystem.py trains on them.)
    "data-forget-prompt-without-completion": run_case(
        "lacks column(s) ['completion']; columns found: ['prompt']", data="@FILES@/prompt_only.jsonl"),
    "data-forget-null-answer": run_case("data.forget row 1: `answer` must be a non-empty string, got NoneType",
                                        data="@FILES@/null_answer.jsonl"),
    "data-forget-blank-answer": run_case("data.forget row 1: `answer` is an empty string",
                                         data="@FILES@/blank_answer.jsonl"),
    "data-forget-number-answer": run_case("data.forget row 0: `answer` must be a non-empty string, got int",
                                          data="@FILES@/int_answer.jsonl"),
    "data-forget-malformed-json": run_case("data.forget: '@FILES@/malformed.jsonl' could not be read as json",
                                           data="@FILES@/malformed.jsonl"),
    "data-forget-integer-image": run_case("data.forget row 0: `image` must be an image",
                                          data="@FILES@/int_image.jsonl"),
    "data-forget-vqa-without-image": run_case("data.forget row 0: is an image question (kind='vqa') without an image",
                                              data="@FILES@/vqa_no_image.jsonl"),
    "data-forget-folder-not-a-dataset": run_case("is a folder that datasets.load_from_disk cannot read",
                                                 data="@FILES@/not_a_dataset"),
    "data-forget-unknown-split": run_case("data.forget: split 'nope' not in ['train']",
                                          data="{path: @FILES@/dataset_dict, split: nope}"),
    "data-forget-which-split": run_case("holds splits ['a', 'b']; pick one", data="@FILES@/two_splits"),
    "data-retain-no-answer-column": run_case("data.retain: '@FILES@/no_answer.jsonl' lacks column(s) ['answer']",
                                             "  retain: @FILES@/no_answer.jsonl\n", method="ga_diff"),
    "data-retain-empty": run_case("data.retain: '@FILES@/empty.jsonl' is empty", "  retain: @FILES@/empty.jsonl\n",
                                  method="ga_diff"),
    "data-retain-null-answer": run_case("data.retain row 1: `answer` must be a non-empty string",
                                        "  retain: @FILES@/null_answer.jsonl\n", method="ga_diff"),
    "mask-path-missing": run_case("mask.path: '@TMP@/no-mask' does not exist", "mask: {path: @TMP@/no-mask}\n"),
    # The model's files: refused with what is wrong with them, not safetensors' / torch's own words
    "model-truncated-weights": run_case("model: the weight files in '@FILES@/corrupt' are damaged or truncated",
                                        argv=("--model", "@FILES@/corrupt")),
    "model-zero-byte-weights": run_case("are damaged or truncated", argv=("--model", "@FILES@/zero_bytes")),
    "model-pickled-code": run_case("the pickled weights in '@FILES@/pickled' hold objects other than tensors",
                                   argv=("--model", "@FILES@/pickled")),
    "model-without-config": run_case("config.json", argv=("--model", "@FILES@/no_config")),
    # Zero steps, known from the data before anything is written
    "zero-steps-drop-last": run_case(
        "would train 0 optimizer steps and save the starting model as the unlearned one: 4 forget row(s)",
        argv=("--max_steps", "-1", "--num_train_epochs", "1", "--dataloader_drop_last", "true",
              "--per_device_train_batch_size", "8")),
    # Found while batching (the first batch): still one line, and the empty output_dir is removed
    "max-length-below-the-prompt": run_case("but max_length=4: truncating it would cut image tokens",
                                            argv=("--max_length", "4")),
    # eval
    "eval-model-missing": CliCase(("eval", "--model", "@TMP@/no-model"), "--model: '@TMP@/no-model' does not exist"),
    "eval-model-truncated": CliCase(("eval", "--model", "@FILES@/corrupt", "--benchmark", "builtin",
                                     "--output", "@TMP@/eval.json"),
                                    "are damaged or truncated", setup=_earlier_eval),
    "eval-model-pickled": CliCase(("eval", "--model", "@FILES@/pickled", "--benchmark", "builtin",
                                     "--output", "@TMP@/eval.json"),
                                  "hold objects other than tensors", setup=_earlier_eval),
    "eval-model-without-config": CliCase(("eval", "--model", "@FILES@/no_config", "--benchmark", "builtin",
                                     "--output", "@TMP@/e.json"),
                                         "config.json"),
    "eval-cmd-batch-size-zero": CliCase(("eval", "--model", "@MODEL@", "--batch-size", "0"),
                                    "--batch-size must be >= 1, got 0"),
    "eval-unknown-benchmark": CliCase(("eval", "--model", "@MODEL@", "--benchmark", "bogus:x", "--output",
                                       "@TMP@/e.json"), "Unknown benchmark 'bogus:x'"),
    "eval-nothing-to-score": CliCase(("eval", "--model", "@MODEL@", "--output", "@TMP@/e.json"),
                                     "records no data it was trained on (no hf_unlearn_run.json of `hf-unlearn run`)"),
    "eval-benchmark-and-rows": CliCase(("eval", "--model", "@MODEL@", "--benchmark", "builtin", "--forget", "x",
                                        "--output", "@TMP@/e.json"), "--benchmark and --forget are two different"),
    "eval-mllmu-missing": CliCase(("eval", "--model", "@MODEL@", "--benchmark", "mllmu:@TMP@/nothing", "--output",
                                   "@TMP@/e.json"), "'@TMP@/nothing' is not a directory"),
    "eval-output-folder-missing": CliCase(("eval", "--model", "@MODEL@", "--output", "@TMP@/no/e.json"),
                                          "--output: the folder '@TMP@/no' does not exist"),
    "eval-output-is-a-folder": CliCase(("eval", "--model", "@MODEL@", "--output", "@TMP@"),
                                       "--output '@TMP@' is a folder"),
    "eval-unknown-attack": CliCase(("eval", "--model", "@MODEL@", "--attacks", "probing,jailbrek"),
                                   "--attacks: Unknown attack 'jailbrek'. Did you mean 'jailbreak'? Known attacks:"),
    "eval-attacks-on-rows": CliCase(("eval", "--model", "@MODEL@", "--attacks", "probing", "--forget", "x"),
                                    "--attacks and --reference need a benchmark's multiple-choice splits"),
    "eval-probe-layer-out-of-range": CliCase(("eval", "--model", "@MODEL@", "--benchmark", "builtin", "--attacks",
                                              "probing", "--probe-layer", "9", "--no-rouge", "--no-mia",
                                              "--output", "@TMP@/e.json"),
                                             "--probe-layer 9 is out of range: the model has 2 layers"),
    "eval-unknown-flag": CliCase(("eval", "--model", "@MODEL@", "--bogus"), "unrecognized arguments: --bogus",
                                 prog="hf-unlearn"),
    "eval-model-flag-missing": CliCase(("eval",), "the following arguments are required: --model"),
    "eval-batch-size-text": CliCase(("eval", "--model", "@MODEL@", "--batch-size", "many"),
                                    "argument --batch-size: invalid int value: 'many'"),
    # estimate-memory
    "estimate-run-yaml": CliCase(("estimate-memory", "@FILES@/run.yaml"),
                                 "is an hf-unlearn run config, not a model config: pass the run's `model:`"),
    "estimate-not-json": CliCase(("estimate-memory", "@FILES@/not_json.txt"), "is not a JSON model config"),
    "estimate-no-model-type": CliCase(("estimate-memory", "@FILES@/no_model_type.json"), "has no `model_type`"),
    "estimate-unknown-model-type": CliCase(("estimate-memory", "@FILES@/bad_model_type.json"),
                                           "model_type 'no_such_architecture' is not known to transformers"),
    "estimate-no-gpus": CliCase(("estimate-memory", "@MODEL@", "--num-gpus", "0"), "--num-gpus must be >= 1, got 0"),
    "estimate-missing-path": CliCase(("estimate-memory", "./no-such-model/config"), "Could not load a model config"),
    "estimate-trainable-typo": CliCase(("estimate-memory", "@MODEL@", "--trainable", "visoin"),
                                       "argument --trainable: invalid choice: 'visoin'"),
    # demo, tune and the command itself
    "demo-seeds-not-numbers": CliCase(("demo", "--seeds", "a,b"), "--seeds must be comma-separated integers"),
    "demo-seeds-repeated": CliCase(("demo", "--seeds", "1,1"), "--seeds must list distinct integers"),
    "demo-seed-and-seeds": CliCase(("demo", "--seed", "1", "--seeds", "2,3"), "pass --seed N or --seeds A,B,..."),
    "demo-threads-zero": CliCase(("demo", "--threads", "0"), "--threads must be >= 1, got 0"),
    "demo-two-benchmarks": CliCase(("demo", "--text", "--v3"), "--text and --v3 pick different benchmarks; pass one"),
    "demo-v2-and-v3": CliCase(("demo", "--v2", "--v3"), "--v2 and --v3 pick different benchmarks; pass one"),
    "demo-workers-on-v2": CliCase(("demo", "--v2", "--workers", "2"), "--workers 2: pass a number >= 1, and more "
                                  "than 1 only on benchmark v3"),
    "demo-workers-zero": CliCase(("demo", "--workers", "0"), "--workers 0: pass a number >= 1"),
    "demo-workers-on-text": CliCase(("demo", "--text", "--workers", "2"), "more than 1 only on benchmark v3"),
    "demo-unknown-method": CliCase(("demo", "--methods", "ga,bogus"), "unknown method(s) ['bogus']"),
    "demo-output-is-a-file": CliCase(("demo", "--output", "@TMP@/out"), "--output '@TMP@/out' is a file; pass a folder",
                                     setup=_file_at_out),
    "tune-unknown-method": CliCase(("tune", "--methods", "bogus"), "no tuning grid for ['bogus']"),
    "tune-threads-zero": CliCase(("tune", "--threads", "0"), "--threads must be >= 1, got 0"),
    "tune-v3-quick": CliCase(("tune", "--v3", "--quick"), "--v3 tunes the methods at v3's one configuration"),
    "tune-output-folder-missing": CliCase(("tune", "--output", "@TMP@/no/tuned.json"),
                                          "--output: the folder '@TMP@/no' does not exist"),
    "no-command": CliCase((), "the following arguments are required: command", prog="hf-unlearn"),
    "unknown-command": CliCase(("unlearn",), "invalid choice: 'unlearn'", prog="hf-unlearn"),
}


def _fill(text: str, tmp: Path, files: Path, model: Path) -> str:
    return (text.replace("@CONFIG@", str(tmp / "run.yaml")).replace("@OUT@", str(tmp / "out"))
            .replace("@MODEL@", str(model)).replace("@FILES@", str(files)).replace("@TMP@", str(tmp)))


def _expect_one_line(err: str, prefix: str, phrase: str) -> str:
    """One ``hf-unlearn ...: error:`` line, the last on stderr (model loading may show a progress bar before it)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("hf-unlearn")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    assert lines[0].startswith(prefix), err
    assert phrase in lines[0], (phrase, lines[0])
    assert CANARY not in err
    return lines[0]


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input(case, files, tiny_llava_dir, tmp_path, capsys, monkeypatch):
    spec = CLI_CASES[case]
    monkeypatch.chdir(tmp_path)
    if spec.yaml is not None:
        (tmp_path / "run.yaml").write_text(_fill(spec.yaml, tmp_path, files, tiny_llava_dir))
    if spec.setup is not None:
        spec.setup(tmp_path)
    before = _tree(tmp_path, files)
    argv = [_fill(a, tmp_path, files, tiny_llava_dir) for a in spec.argv]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own usage errors exit (one line too)
        code = exit_info.code
    assert code == spec.exit_code
    _expect_one_line(capsys.readouterr().err, spec.prefix, _fill(spec.phrase, tmp_path, files, tiny_llava_dir))
    assert _tree(tmp_path, files) == before  # nothing written, nothing earlier changed


# ------------------------------------------------------------------------------------------------------------------
# The Python API
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class Env:
    model: Any
    processor: Any
    out: Path

    def args(self, **kw) -> GAConfig:
        return GAConfig(output_dir=str(self.out), use_cpu=True, report_to="none", max_steps=1, **kw)

    def ga(self, forget, retain=None, args=None, **kw) -> GATrainer:
        return GATrainer(model=self.model, args=args or self.args(), train_dataset=forget, retain_dataset=retain,
                         processing_class=self.processor, **kw)


def _own_collator(rows):
    """A user's collator that trusts its rows (what made `answer=None` train as " None")."""
    return {"texts": [f"{r.get('question')} {r.get('answer')}" for r in rows]}


def _rows(*answers) -> Dataset:
    return Dataset.from_list([_qa(i, a) for i, a in enumerate(answers)])


def _vqa(i: int = 0, **kw) -> dict:
    return {"image": toy_portrait(i), "question": "Who is this?", "answer": "Alice Smith", **kw}


def _mask(env: Env, make) -> dict:
    name, param = next((n, p) for n, p in env.model.named_parameters() if "vision" in n)
    return {name: make(param)}


def _mutated(env: Env, **changes) -> GAConfig:
    args = env.args()
    for key, value in changes.items():
        setattr(args, key, value)  # TrainingArguments are mutable after __post_init__ checked them
    return args


@dataclass(frozen=True)
class ApiCase:
    call: Callable[[Env], Any]
    error: type[BaseException]
    phrase: str


def config_case(config_class, phrase: str, **kw) -> ApiCase:
    return ApiCase(lambda env: config_class(output_dir=str(env.out), **kw), ValueError, phrase)


NAN, INF = float("nan"), float("inf")
API_CASES: dict[str, ApiCase] = {
    # Numbers, where they are set
    "config-lr-nan": config_case(GAConfig, "learning_rate must be > 0 and finite, got nan", learning_rate=NAN),
    "config-lr-negative": config_case(GAConfig, "learning_rate must be > 0 and finite, got -1", learning_rate=-1),
    "config-lr-inf": config_case(GAConfig, "learning_rate must be > 0 and finite, got inf", learning_rate=INF),
    "config-lr-zero": config_case(GAConfig, "learning_rate must be > 0 and finite, got 0", learning_rate=0.0),
    "config-batch-size-zero": config_case(GAConfig, "per_device_train_batch_size must be an integer >= 1",
                                          per_device_train_batch_size=0),
    "config-eval-batch-size-zero": config_case(GAConfig, "per_device_eval_batch_size must be an integer >= 1",
                                               per_device_eval_batch_size=0),
    "config-grad-accumulation-zero": config_case(GAConfig, "gradient_accumulation_steps must be an integer >= 1",
                                                 gradient_accumulation_steps=0),
    "config-max-steps-negative": config_case(GAConfig, "max_steps must be an integer >= 1, or -1", max_steps=-5),
    "config-max-steps-zero": config_case(GAConfig, "max_steps must be an integer >= 1, or -1", max_steps=0),
    "config-epochs-zero": config_case(GAConfig, "num_train_epochs=0 with max_steps=-1 trains zero steps",
                                      num_train_epochs=0),
    "config-epochs-negative": config_case(GAConfig, "num_train_epochs must be >= 0 and finite",
                                          num_train_epochs=-1, max_steps=5),
    "config-save-steps-negative": config_case(GAConfig, "save_steps must be > 0 with save_strategy='steps'",
                                              save_steps=-1),
    "config-eval-steps-negative": config_case(GAConfig, "eval_steps must be > 0 with eval_strategy='steps'",
                                              eval_strategy="steps", eval_steps=-2),
    "config-logging-steps-zero": config_case(GAConfig, "requires non-zero --logging_steps", logging_steps=0),
    "config-weight-decay-nan": config_case(GAConfig, "weight_decay must be >= 0 and finite", weight_decay=NAN),
    "config-adam-beta2": config_case(GAConfig, "adam_beta2 must be in [0.0, 1.0)", adam_beta2=1.5),
    "config-max-length-zero": config_case(GAConfig, "max_length must be an integer >= 1 or None", max_length=0),
    "config-forget-weight-nan": config_case(GAConfig, "forget_weight must be >= 0 and finite", forget_weight=NAN),
    "config-npo-beta-nan": config_case(NPOConfig, "beta must be > 0 and finite, got nan", beta=NAN),
    "config-simnpo-gamma-nan": config_case(SimNPOConfig, "gamma must be >= 0 and finite", gamma=NAN),
    "config-vkd-vision-lr-scale-zero": config_case(VKDConfig, "vision_lr_scale must be > 0", vision_lr_scale=0.0),
    "config-mmunlearner-masked-lr-nan": config_case(MMUnlearnerConfig, "masked_lr_scale must be > 0 and finite",
                                                    masked_lr_scale=NAN),
    "config-mmunlearner-beta-zero": config_case(MMUnlearnerConfig, "beta must be > 0", beta=0.0),
    "config-mmunlearner-guard-nan": config_case(MMUnlearnerConfig, "retain_guard_max_loss must be finite",
                                                retain_guard_max_loss=NAN),
    "config-rmu-steering-inf": config_case(RMUConfig, "steering_coeff must be > 0 and finite", steering_coeff=INF),
    "config-idkpo-beta-negative": config_case(IdkPOConfig, "beta must be > 0", beta=-1.0),
    "config-undial-gamma-nan": config_case(UNDIALConfig, "gamma must be >= 0 and finite", gamma=NAN),
    "relearn-attack-lr-nan": ApiCase(lambda env: RelearnConfig(learning_rate=NAN), ValueError,
                                     "learning_rate must be > 0 and finite, got nan"),
    "trainer-drop-in-training-arguments-lr": ApiCase(
        lambda env: env.ga(_rows("a"), args=TrainingArguments(output_dir=str(env.out), learning_rate=-1.0,
                                                             report_to="none")),
        ValueError, "learning_rate must be > 0 and finite, got -1.0"),
    "trainer-mutated-max-steps": ApiCase(lambda env: env.ga(_rows("a"), args=_mutated(env, max_steps=-5)),
                                         ValueError, "max_steps must be an integer >= 1, or -1"),
    "trainer-mutated-lr": ApiCase(lambda env: env.ga(_rows("a"), args=_mutated(env, learning_rate=NAN)),
                                  ValueError, "learning_rate must be > 0 and finite, got nan"),
    "trainer-mutated-epochs": ApiCase(lambda env: env.ga(_rows("a"), args=_mutated(env, max_steps=-1,
                                                                                    num_train_epochs=0)),
                                      ValueError, "num_train_epochs=0 with max_steps=-1 trains zero steps"),
    "trainer-zero-steps-drop-last": ApiCase(
        lambda env: env.ga(_rows("a", "b"), args=env.args(per_device_train_batch_size=4, dataloader_drop_last=True)),
        ValueError, "would train 0 optimizer steps and save the starting model as the unlearned one: 2 forget row(s)"),
    # Rows are checked whatever the collator
    "own-collator-null-answer": ApiCase(lambda env: env.ga(_rows("a", None), data_collator=_own_collator),
                                        ValueError, "forget set row 1: `answer` must be a non-empty string, got "
                                                    "NoneType"),
    "own-collator-blank-answer": ApiCase(lambda env: env.ga(_rows("a", " "), data_collator=_own_collator),
                                         ValueError, "forget set row 1: `answer` is an empty string"),
    "own-collator-list-answer": ApiCase(lambda env: env.ga([_qa(0), _qa(1, [CANARY])], data_collator=_own_collator),
                                        ValueError, "forget set row 1: `answer` must be a non-empty string, got list"),
    "own-collator-retain-null-answer": ApiCase(
        lambda env: env.ga(_rows("a"), _rows("b", None), data_collator=_own_collator),
        ValueError, "retain set row 1: `answer` must be a non-empty string"),
    "own-collator-holdout-null-answer": ApiCase(
        lambda env: env.ga(_rows("a"), data_collator=_own_collator, holdout_dataset=_rows(None)),
        ValueError, "holdout set row 0: `answer` must be a non-empty string"),
    "own-collator-null-completion": ApiCase(
        lambda env: env.ga(Dataset.from_list([{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": None}]),
                           data_collator=_own_collator),
        ValueError, "forget set row 1: `prompt` and `completion` must both be strings"),
    "own-collator-messages-without-answer": ApiCase(
        lambda env: env.ga([{"messages": [{"role": "user", "content": CANARY}]}], data_collator=_own_collator),
        ValueError, "forget set row 0: a `messages` row must end with an assistant turn"),
    "own-collator-vqa-without-image": ApiCase(
        lambda env: env.ga(Dataset.from_list([_qa(0) | {"image": None, "kind": "vqa"}]), data_collator=_own_collator),
        ValueError, "forget set row 0: is an image question (kind='vqa') without an image"),
    "own-collator-integer-image": ApiCase(
        lambda env: env.ga(Dataset.from_list([_qa(0) | {"image": 3}]), data_collator=_own_collator),
        ValueError, "forget set row 0: `image` must be an image"),
    # Images that are not images: named with the row and the column, not transformers' words
    "integer-image-dataset": ApiCase(lambda env: env.ga(Dataset.from_list([_qa(0) | {"image": 7}])),
                                     ValueError, "forget set row 0: `image` must be an image (a PIL image, an array, "
                                                 "a file path or {'bytes': ..., 'path': ...}), got int"),
    "integer-image-list": ApiCase(lambda env: env.ga([_qa(0), _qa(1) | {"image": 7}]),
                                  ValueError, "forget set row 1: `image` must be an image"),
    "float-image": ApiCase(lambda env: env.ga(Dataset.from_list([_qa(0) | {"image": 0.5}])),
                           ValueError, "`image` must be an image (a PIL image, an array, a file path or {'bytes': ..., "
                                       "'path': ...}), got float"),
    "bool-image": ApiCase(lambda env: env.ga([_qa(0) | {"image": True}]), ValueError, "got bool"),
    "integer-images-list": ApiCase(
        lambda env: env.ga(Dataset.from_list([{"images": [1, 2], "messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])),
        ValueError, "forget set row 0: `images` must be an image"),
    "retain-integer-image": ApiCase(lambda env: env.ga(_rows("a"), Dataset.from_list([_qa(0) | {"image": 1}])),
                                    ValueError, "retain set row 0: `image` must be an image"),
    "vqa-without-image": ApiCase(lambda env: env.ga([_vqa(0), _qa(1) | {"image": None, "kind": "vqa"}]),
                                 ValueError, "forget set row 1: is an image question (kind='vqa') without an image"),
    "messages-image-part-without-image": ApiCase(
        lambda env: env.ga([{"messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]},
            {"role": "assistant", "content": "a"}]}]),
        ValueError, "`messages` marks 1 image(s)"),
    "unknown-columns-with-our-collator": ApiCase(lambda env: env.ga([{"text": CANARY, "label": 1}]),
                                                 ValueError, "forget set row 0: missing column(s) ['question', "
                                                             "'answer']; columns found: ['label', 'text']"),
    "row-not-a-dict": ApiCase(lambda env: env.ga(["just text"]), ValueError, "a row must be a dict of columns"),
    # The sets themselves
    "empty-forget-set": ApiCase(lambda env: env.ga(_rows()), ValueError, "The forget set (`train_dataset`) is empty"),
    "empty-retain-set": ApiCase(lambda env: env.ga(_rows("a"), _rows()), ValueError, "`retain_dataset` is empty"),
    "empty-holdout-set": ApiCase(lambda env: env.ga(_rows("a"), holdout_dataset=_rows()), ValueError,
                                 "`holdout_dataset` is empty"),
    "retain-term-without-retain-set": ApiCase(lambda env: env.ga(_rows("a"), args=env.args(retain_loss_type="nll")),
                                              ValueError, "needs `retain_dataset=`"),
    "no-processing-class-no-collator": ApiCase(
        lambda env: GATrainer(model=env.model, args=env.args(), train_dataset=_rows("a")), ValueError,
        "Pass `processing_class` (tokenizer or processor) or a `data_collator`"),
    # Masks: bool tensors or a SaliencyMask, nothing cast silently
    "mask-of-floats": ApiCase(lambda env: env.ga(_rows("a"), saliency_mask=_mask(env, torch.rand_like)), TypeError,
                              "`saliency_mask` values must be bool tensors (True: the entry may move); got"),
    "mask-of-integers": ApiCase(
        lambda env: env.ga(_rows("a"), saliency_mask=_mask(env, lambda p: torch.ones_like(p, dtype=torch.long))),
        TypeError, "torch.int64. Threshold scores first"),
    "mask-of-lists": ApiCase(lambda env: env.ga(_rows("a"), saliency_mask=_mask(env, lambda p: [True])), TypeError,
                             ": list. Threshold scores first"),
    "mask-shape-mismatch": ApiCase(
        lambda env: env.ga(_rows("a"), saliency_mask=_mask(env, lambda p: torch.ones(3, dtype=torch.bool))),
        ValueError, "The saliency mask does not match the model"),
    "mask-unknown-parameter": ApiCase(
        lambda env: env.ga(_rows("a"), saliency_mask={"no.such.weight": torch.ones(2, dtype=torch.bool)}),
        ValueError, "no.such.weight: not a parameter of the model"),
    "mask-not-a-mask": ApiCase(lambda env: env.ga(_rows("a"), saliency_mask=[1, 2]), TypeError,
                               "`saliency_mask` must be a SaliencyMask or a dict"),
    # Reference models
    "ref-model-missing-path": ApiCase(
        lambda env: NPOTrainer(model=env.model, args=NPOConfig(output_dir=str(env.out), max_steps=1, use_cpu=True),
                               train_dataset=_rows("a"), processing_class=env.processor, ref_model="./no-ref"),
        FileNotFoundError, "ref_model: './no-ref' does not exist"),
    "ref-model-is-the-model": ApiCase(
        lambda env: NPOTrainer(model=env.model, args=NPOConfig(output_dir=str(env.out), max_steps=1, use_cpu=True),
                               train_dataset=_rows("a"), processing_class=env.processor, ref_model=env.model),
        ValueError, "`ref_model` is the model being trained"),
    # Saliency masks' inputs
    "saliency-own-collator-null-answer": ApiCase(
        lambda env: compute_saliency_mask(env.model, SaliencyMaskConfig(score="grad_magnitude"), _rows(None), {},
                                          _own_collator),
        ValueError, "forget set row 0: `answer` must be a non-empty string"),
    "saliency-integer-image": ApiCase(
        lambda env: compute_saliency_mask(env.model, SaliencyMaskConfig(), _rows("a"),
                                          {"retain": [_qa(0) | {"image": 5}]}, UnlearnDataCollator(env.processor)),
        ValueError, "preserve set 'retain' row 0: `image` must be an image"),
    "collator-integer-image": ApiCase(lambda env: UnlearnDataCollator(env.processor)([_qa(0) | {"image": 7}]),
                                      ValueError, "Row 0 of this batch: `image` must be an image"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_bad_input(case, llava, tmp_path):
    spec = API_CASES[case]
    env = Env(*llava, out=tmp_path / "out")
    with pytest.raises(spec.error, match=re.escape(spec.phrase)) as caught:
        spec.call(env)
    assert CANARY not in str(caught.value)
    assert not env.out.exists()  # refused before the Trainer created output_dir
    assert all(p.requires_grad for p in env.model.parameters())  # the model is as it was (nothing frozen)


# ------------------------------------------------------------------------------------------------------------------
# Cases that need more than an input: another run, a bug, a disk
# ------------------------------------------------------------------------------------------------------------------
def _write_run(tmp: Path, files: Path, model: Path, extra: str = "") -> str:
    (tmp / "run.yaml").write_text(_fill(RUN.replace("@METHOD@", "ga") + extra, tmp, files, model))
    return str(tmp / "run.yaml")


def test_a_second_run_on_a_folder_another_run_holds_is_one_line(files, tiny_llava_dir, tmp_path, capsys,
                                                                  monkeypatch):
    """Two runs start on the same empty folder; the other one takes the lock first (between the check and train)."""
    import hf_unlearn.commands.run as run_command
    from hf_unlearn.trainers.run_lock import RunLock

    out = tmp_path / "out"
    other = RunLock(str(out))  # the other run: it holds the OS lock for as long as it runs

    def other_run_starts(*args, **kwargs):
        plan = read(*args, **kwargs)
        other.acquire()
        return plan

    read = run_command.read_run_config
    monkeypatch.setattr(run_command, "read_run_config", other_run_starts)
    try:
        assert main(["run", "--config", _write_run(tmp_path, files, tiny_llava_dir)]) == 2
        record = json.loads((out / "hf_unlearn.lock").read_text())
        assert [p.name for p in out.iterdir()] == ["hf_unlearn.lock"]  # the other run's folder, untouched
    finally:
        other.release()
    line = _expect_one_line(capsys.readouterr().err, "hf-unlearn run: error: ", f"output_dir {str(out)!r} is in use "
                            f"by another run (pid {os.getpid()}")
    assert "Use another output_dir, or wait for that run to end" in line
    assert record["pid"] == os.getpid()


def test_an_unexpected_error_is_one_line_exit_1_and_debug_shows_the_traceback(files, tiny_llava_dir, tmp_path,
                                                                               capsys, monkeypatch):
    import hf_unlearn.commands.run as run_command

    def bug(plan):
        raise KeyError("a bug, not the user's mistake")

    monkeypatch.setattr(run_command, "run_plan", bug)
    config = _write_run(tmp_path, files, tiny_llava_dir)
    assert main(["run", "--config", config]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("hf-unlearn run: unexpected error (KeyError: \"a bug, not the user's mistake\"). This may "
                          "be a bug in hf_unlearn: rerun as `hf-unlearn --debug run ...` to see the traceback")
    with pytest.raises(KeyError, match="a bug"):
        main(["--debug", "run", "--config", config])
    # A user's mistake under --debug: its own exception, with the traceback.
    from hf_unlearn.commands.run_config import ConfigError

    with pytest.raises(ConfigError, match="learning_rate must be > 0"):
        main(["--debug", "run", "--config", config, "--learning_rate", "nan"])
    assert not (tmp_path / "out").exists()


def test_debug_flag_in_a_fresh_process_prints_the_traceback(files, tiny_llava_dir, tmp_path):
    config = _write_run(tmp_path, files, tiny_llava_dir, "learning_rate: .nan\n")
    import hf_unlearn

    # The same hf_unlearn as this process imported, whatever is installed.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(hf_unlearn.__file__).parents[1])}
    cli = [sys.executable, "-m", "hf_unlearn.cli"]
    plain = subprocess.run([*cli, "run", "--config", config], capture_output=True, text=True, env=env, timeout=300,
                           cwd=tmp_path)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    debug = subprocess.run([*cli, "--debug", "run", "--config", config], capture_output=True, text=True, env=env,
                           timeout=300, cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "ConfigError: learning_rate must be > 0 and finite, got nan" in debug.stderr


# ---------------------------------------------------------------------------------------------- disks
def test_read_only_or_small_disk_is_refused_before_loading(files, tiny_llava_dir, tmp_path, capsys, monkeypatch):
    """The checks themselves (statvfs and free space, patched here; the tmpfs test below uses real disks)."""
    import hf_unlearn.disk as disk

    config = _write_run(tmp_path, files, tiny_llava_dir)
    before = _tree(tmp_path)
    monkeypatch.setattr(disk, "_read_only", lambda path: True)
    assert main(["run", "--config", config]) == 2
    _expect_one_line(capsys.readouterr().err, "hf-unlearn run: error: ",
                     f"output_dir: {str(tmp_path / 'out')!r} is on a read-only file system. Choose a writable folder "
                     "(output_dir)")
    assert main(["eval", "--model", str(tiny_llava_dir), "--output", str(tmp_path / "e.json")]) == 2
    _expect_one_line(capsys.readouterr().err, "hf-unlearn eval: error: ",
                     f"--output: {str(tmp_path)!r} is on a read-only file system. Choose a writable folder (--output)")
    assert main(["demo", "--output", str(tmp_path / "demo")]) == 2
    _expect_one_line(capsys.readouterr().err, "hf-unlearn demo: error: ",
                     f"--output: {str(tmp_path / 'demo')!r} is on a read-only file system")
    monkeypatch.setattr(disk, "_read_only", lambda path: False)
    monkeypatch.setattr(disk, "_free", lambda folder: 1000)
    assert main(["run", "--config", config]) == 2
    _expect_one_line(capsys.readouterr().err, "hf-unlearn run: error: ",
                     "has 1000 B free, but the unlearned model alone needs at least 670.3 KB")
    assert _tree(tmp_path) == before


# What torch.save raises when the disk fills up under it (seen writing to /dev/full and to a full tmpfs).
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def _torch_save_to_a_full_disk(obj, f, *args, **kwargs):
    raise RuntimeError(TORCH_FULL_DISK)


def test_full_disk_while_saving_names_the_folder_and_keeps_the_earlier_model(llava, tmp_path, monkeypatch):
    model, processor = llava
    trainer = GATrainer(model=model, args=GAConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none",
                                                   max_steps=1),
                        train_dataset=_rows("a"), processing_class=processor)
    target = tmp_path / "saved"
    trainer.save_model(str(target))
    earlier = _tree(target)
    from hf_unlearn.disk import DiskWriteError

    monkeypatch.setattr(torch, "save", _torch_save_to_a_full_disk)  # training_args.bin is written by torch.save
    with pytest.raises(DiskWriteError, match=re.escape(f"the disk holding {str(target)!r} is full")) as caught:
        trainer.save_model(str(target))
    assert "unexpected pos" not in str(caught.value) and "files already in the folder were not replaced" in str(
        caught.value)
    assert {k: v for k, v in _tree(target).items() if ".tmp-hf_unlearn-save" not in k} == earlier


# Real disks: a read-only and a small tmpfs (root only: mounting needs it).
def _mount(folder: Path, options: str) -> bool:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def disks(tmp_path):
    read_only, small = tmp_path / "read_only", tmp_path / "small"
    if os.geteuid() != 0 or not _mount(read_only, "size=64k,ro"):
        pytest.skip("mounting a tmpfs needs root")
    if not _mount(small, "size=1200k"):  # room for the tiny model (670 KB), not for a checkpoint with Adam's state
        subprocess.run(["umount", str(read_only)])
        pytest.skip("mounting a tmpfs failed")
    yield read_only, small
    for folder in (read_only, small):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_real_read_only_and_full_disks_are_one_line(disks, files, tiny_llava_dir, tmp_path, capsys, monkeypatch):
    read_only, small = disks
    monkeypatch.chdir(tmp_path)
    config = _write_run(tmp_path, files, tiny_llava_dir)
    assert main(["run", "--config", config, "--output_dir", str(read_only / "out")]) == 2
    _expect_one_line(capsys.readouterr().err, "hf-unlearn run: error: ", "is on a read-only file system")
    assert main(["eval", "--model", str(tiny_llava_dir), "--output", str(read_only / "e.json")]) == 2
    _expect_one_line(capsys.readouterr().err, "hf-unlearn eval: error: ", "is on a read-only file system")
    (small / "ballast").write_bytes(b"\0" * 800 * 1024)  # leaves less than the model's 670 KB
    assert main(["run", "--config", config, "--output_dir", str(small / "out")]) == 2
    _expect_one_line(capsys.readouterr().err, "hf-unlearn run: error: ", "needs at least 670.3 KB")
    assert not (small / "out").exists()
    (small / "ballast").unlink()
    # Room for the model, not for a checkpoint: the disk fills up during the run.
    assert main(["run", "--config", config, "--output_dir", str(small / "out"), "--save_strategy", "steps",
                 "--save_steps", "1"]) == 2
    line = _expect_one_line(capsys.readouterr().err, "hf-unlearn run: error: ",
                            f"the disk holding {str(small / 'out')!r} is full")
    assert "did not finish (it has no hf_unlearn_run.json); delete that folder before running again" in line
    assert not (small / "out" / "hf_unlearn_run.json").exists()


def test_real_full_disk_while_saving_keeps_the_earlier_model(disks, llava, tmp_path):
    _, small = disks
    model, processor = llava
    trainer = GATrainer(model=model, args=GAConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none",
                                                   max_steps=1),
                        train_dataset=_rows("a"), processing_class=processor)
    trainer.save_model(str(small / "model"))
    earlier = {k: v[0] for k, v in _tree(small / "model").items()}
    from hf_unlearn.disk import DiskWriteError

    (small / "ballast").write_bytes(b"\0" * 300 * 1024)  # the second save no longer fits
    with pytest.raises(DiskWriteError, match=re.escape(f"the disk holding {str(small / 'model')!r} is full")):
        trainer.save_model(str(small / "model"))
    assert {k: v[0] for k, v in _tree(small / "model").items() if ".tmp-hf_unlearn-save" not in k} == earlier
    from transformers import LlavaForConditionalGeneration

    LlavaForConditionalGeneration.from_pretrained(small / "model")  # still loads


# ------------------------------------------------------------------------------------------------------------------
# What keeps working, and what is a documented warning
# ------------------------------------------------------------------------------------------------------------------
def test_own_collator_on_columns_of_its_own_still_trains(llava, tmp_path):
    """No answer/completion/messages column: a format of the user's own, left to their collator (data/rows.py)."""
    model, processor = llava
    tok = processor.tokenizer

    def collate(rows):
        batch = tok([r["text"] for r in rows], return_tensors="pt", padding=True)
        return {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}

    rows = Dataset.from_list([{"text": "Alice Smith is a pilot", "weight": 1.0}, {"text": "Bob is a baker",
                                                                                   "weight": 2.0}])
    trainer = GATrainer(model=model, args=GAConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none",
                                                   max_steps=1, save_strategy="no", probe_rows=0),
                        train_dataset=rows, data_collator=collate)
    trainer.train()
    assert trainer.state.global_step == 1


def test_no_chat_template_uses_the_generic_layout_with_one_warning():
    _, fresh = tiny_llava()
    fresh.chat_template = None
    fresh.tokenizer.chat_template = None
    collator = UnlearnDataCollator(fresh)
    with pytest.warns(UserWarning, match=re.escape("has a chat template, so rows are rendered in hf_unlearn's generic "
                                                   "layout 'USER: <image>\\n<question> ASSISTANT: <answer><eos>'")) \
            as caught:
        batch = collator([_vqa(0), _qa(1)])
        collator([_qa(2)])  # once per collator
    assert sum("generic layout" in str(w.message) for w in caught) == 1
    text = fresh.tokenizer.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()])
    assert text.startswith("<s>USER: What is the job of") and "ASSISTANT: pilot</s>" in text
