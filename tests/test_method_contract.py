"""Every registered method keeps one contract (the registry is the list, so a new method is tested by adding it):

* it trains on a tiny LLaVA (its weights move, stay finite), and resumes from a checkpoint to the same weights bit for
  bit as an uninterrupted run;
* ``push_to_hub`` publishes the weights and a card that names the method;
* every numeric knob of its own config refuses NaN with one error naming the knob;
* ``hf-unlearn run`` with a file naming only the method, the model and the data trains with exactly the values
  ``hf-unlearn run --method <name> --help`` shows (the library's defaults, not a benchmark's recipe).
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import LlavaForConditionalGeneration

from hf_unlearn import METHODS, UnlearnConfig, cli
from hf_unlearn.commands.run_config import method_parser, run_args
from hf_unlearn.testing import tiny_llava
from hf_unlearn.testing.hub_server import local_hub
from hf_unlearn.trainers.registry import MethodData

NAMES = sorted(METHODS)


@pytest.fixture(scope="module")
def contract_data(toy_data):
    retain = toy_data["retain"]
    images = [i for i, row in enumerate(retain) if row["image"] is not None]
    texts = [i for i, row in enumerate(retain) if row["image"] is None]
    # Multiple-choice options on the forget rows, as benchmarks have them (AltPO draws its alternatives from them).
    names = list(toy_data["all"]["answer"])
    forget = toy_data["forget"].map(lambda row: {"options": [row["answer"]] + [n for n in names if n != row["answer"]][:3],
                                                 "label": 0})
    return MethodData(forget=forget, retain=retain,
                      preserve={"retain": retain.select(images), "text": retain.select(texts)})


def _trainer(name: str, data: MethodData, output_dir: str, **values):
    model, processor = tiny_llava(seed=0, corpus=[r["answer"] for r in data.retain] + [r["answer"] for r in data.forget])
    spec = METHODS[name]
    args = spec.config(output_dir=output_dir, max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3,
                       save_strategy="steps", save_steps=2, logging_steps=1, report_to="none", use_cpu=True,
                       disable_tqdm=True, seed=0, **values)
    return spec.build_trainer(model, processor, data, args), processor


@pytest.mark.parametrize("name", NAMES)
def test_every_method_trains_saves_resumes_bit_for_bit_and_pushes(name, contract_data, tmp_path):
    straight, processor = _trainer(name, contract_data, str(tmp_path / "run"))
    start = {k: v.clone() for k, v in straight.model.state_dict().items()}
    straight.train()
    assert straight.state.global_step == 4
    final = {k: v.clone() for k, v in straight.model.state_dict().items()}
    moved = [k for k, v in final.items() if not torch.equal(v, start[k])]
    assert moved and all(torch.isfinite(final[k]).all() for k in moved)  # it trained (how well: the demo's job)

    resumed, _ = _trainer(name, contract_data, str(tmp_path / "run"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    assert all(torch.equal(v, final[k]) for k, v in resumed.model.state_dict().items())

    with local_hub(tmp_path / "hub"):
        resumed.args.hub_model_id = f"me/contract-{name}"
        resumed.push_to_hub()
        card = ModelCard.load(f"me/contract-{name}")
        reloaded = LlavaForConditionalGeneration.from_pretrained(f"me/contract-{name}")
    assert type(resumed)._method_tag in card.data.tags
    assert all(torch.equal(v, final[k]) for k, v in reloaded.state_dict().items())


def _own_numeric_fields(config_class) -> list[str]:
    base = {f.name for f in dataclasses.fields(UnlearnConfig)}
    return [f.name for f in dataclasses.fields(config_class) if f.name not in base
            and isinstance(f.default, float) and not isinstance(f.default, bool)]


@pytest.mark.parametrize("name", NAMES)
def test_every_numeric_knob_of_a_method_refuses_nan_by_name(name, tmp_path):
    spec = METHODS[name]
    for field in _own_numeric_fields(spec.config_class):
        with pytest.raises(ValueError, match=field):
            spec.config(output_dir=str(tmp_path), **{field: math.nan})


# TrainingArguments derives a few values in __post_init__ (logging_dir, the resolved report_to, ...), and a trainer
# resolves a few None knobs from the data it gets (documented per knob): not what --help shows, by design.
DERIVED = {"output_dir", "logging_dir", "report_to", "run_name", "hub_model_id", "fsdp_config", "deepspeed",
           "accelerator_config", "lr_scheduler_kwargs", "optim_args", "data_seed", "torch_compile_mode", "fsdp",
           "parallelism_config", "hub_token", "debug", "activation_checkpointing", "disable_tqdm",
           "gradient_checkpointing", "include_num_input_tokens_seen",
           "retain_loss_type", "steer_layer", "trainable_layers", "forget_feature_loss"}


def _differences(name: str, used: dict) -> dict:
    defaults, _ = method_parser(name).parse_known_args([])  # what --help shows, as argparse resolves it
    shown = {k: v for k, v in vars(defaults).items() if k in used and k not in DERIVED}
    return {k: (v, used[k]) for k, v in shown.items() if v != used[k]
            and not (isinstance(v, float) and isinstance(used[k], float) and math.isclose(v, used[k]))}


@pytest.mark.parametrize("name", NAMES)
def test_hf_unlearn_run_builds_every_method_with_exactly_the_defaults_help_shows(name, tmp_path):
    seed = METHODS[name].config_class.__dataclass_fields__["seed"].default
    used = run_args(name, {}, str(tmp_path / "out"), seed).to_dict()
    assert _differences(name, used) == {}
    # The library's defaults, not the demo's recipe (which trains at 1e-3 with a constant schedule).
    assert used["learning_rate"] == METHODS[name].config_class.__dataclass_fields__["learning_rate"].default
    assert not used["disable_tqdm"]  # progress bars on, as in any transformers run


def test_hf_unlearn_run_trains_with_the_arguments_it_builds(tiny_llava_dir, tmp_path):
    """End to end, for one method: a file naming only method, model and data trains with those values."""
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(f"method: npo\nmodel: {tiny_llava_dir}\noutput_dir: {out}\ndata:\n"
                      "  benchmark: {num_people: 4, num_holdout_people: 2, forget_ratio: 0.25, num_general: 4}\n")
    assert cli.main(["run", "--config", str(config)]) == 0
    used = json.loads((out / "hf_unlearn_run.json").read_text())["args"]
    assert _differences("npo", used) == {} and used["disable_tqdm"] is False
