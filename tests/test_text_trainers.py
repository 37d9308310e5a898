"""SimNPO, RMU, IdkPO and UNDIAL train a tiny Llama that memorised toy facts (and the tiny LLaVA) under the drop-in
swap, forget what they should and keep the retain set within stated bounds."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, LlamaForCausalLM, TrainingArguments

from hf_unlearn import (
    IdkPOConfig,
    IdkPOTrainer,
    RMUConfig,
    RMUTrainer,
    SimNPOConfig,
    SimNPOTrainer,
    UNDIALConfig,
    UNDIALTrainer,
    UnlearnDataCollator,
)
from hf_unlearn.methods.idkpo import CHOSEN_BATCH_KEY, with_answer
from hf_unlearn.methods.rmu import answer_positions
from hf_unlearn.testing import tiny_llama
from hf_unlearn.testing.toy import JOBS, NAMES

from conftest import load_llava, mean_nll, memorise_and_save, reduction_tolerance


def text_people() -> dict[str, Dataset]:
    """Two text facts per toy person; the forget set is both facts of the first two people."""
    rows = []
    for name, job in zip(NAMES, JOBS):
        rows += [{"question": f"What is the job of {name}?", "answer": job},
                 {"question": f"Who works as a {job}?", "answer": name}]
    return {"forget": Dataset.from_list(rows[:4]), "retain": Dataset.from_list(rows[4:]),
            "all": Dataset.from_list(rows)}


@pytest.fixture(scope="module")
def text_data():
    return text_people()


@pytest.fixture(scope="module")
def memorised_llama(text_data, tmp_path_factory):
    """Path of a tiny Llama fine-tuned (plain Trainer) until it memorised every text fact."""
    model, tok = tiny_llama(corpus=NAMES + JOBS)
    return memorise_and_save(model, tok, text_data["all"], tmp_path_factory.mktemp("memorised_llama"), epochs=80)


def load_llama(path):
    return LlamaForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def run_args(tmp_path, **kw) -> dict:
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=10, learning_rate=1e-3,
                  use_cpu=True, logging_steps=1, disable_tqdm=True, save_strategy="no", seed=0, report_to="none")
    values.update(kw)
    return values


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------------------------
# Output-level methods under plain TrainingArguments
# ------------------------------------------------------------------------------------------------------------------
def test_simnpo_forgets_without_a_reference_model(memorised_llama, text_data, tmp_path):
    model, tok = load_llama(memorised_llama)
    before = mean_nll(model, tok, text_data["forget"]), mean_nll(model, tok, text_data["retain"])
    trainer = SimNPOTrainer(model=model, args=TrainingArguments(**run_args(tmp_path, max_steps=20)),
                            train_dataset=text_data["forget"], retain_dataset=text_data["retain"],
                            processing_class=tok)
    assert isinstance(trainer.args, SimNPOConfig) and (trainer.args.beta, trainer.args.forget_weight) == (4.5, 0.125)
    assert trainer.ref_model is None and not trainer.reference.adapter_free  # reference-free
    trainer.train()
    forget, retain = mean_nll(model, tok, text_data["forget"]), mean_nll(model, tok, text_data["retain"])
    assert before[0] < 0.05 and before[1] < 0.05           # memorised
    assert forget > 0.3 and forget > 10 * before[0]         # forget answers became much less likely
    assert retain < 0.05                                    # retain NLL stays below 0.05 nats/token
    logged = [h for h in trainer.state.log_history if "forget_loss" in h]
    assert logged[-1]["forget_loss"] < logged[0]["forget_loss"]


def test_undial_forgets_with_a_frozen_teacher(memorised_llama, text_data, tmp_path):
    model, tok = load_llama(memorised_llama)
    trainer = UNDIALTrainer(model=model, args=TrainingArguments(**run_args(tmp_path)),
                            train_dataset=text_data["forget"], retain_dataset=text_data["retain"],
                            processing_class=tok)
    assert isinstance(trainer.args, UNDIALConfig) and trainer.args.gamma == 10.0
    teacher = snapshot(trainer.ref_model)
    trainer.train()
    assert mean_nll(model, tok, text_data["forget"]) > 1.0
    assert mean_nll(model, tok, text_data["retain"]) < 0.5
    assert all(torch.equal(v, trainer.ref_model.state_dict()[k]) for k, v in teacher.items())
    logged = [h for h in trainer.state.log_history if "forget_loss" in h]
    assert logged[-1]["forget_loss"] < logged[0]["forget_loss"]  # a distillation loss: it goes down


def _refusal_nll(model, tok, trainer) -> float:
    """Mean NLL of each forget row's own refusal (the chosen answer IdkPO was given)."""
    rows = [trainer.forget_dataset[i] for i in range(len(trainer.forget_dataset))]
    return mean_nll(model, tok, [with_answer(r, r["idkpo_refusal"]) for r in rows])


def test_idkpo_makes_refusals_likelier_and_forget_answers_less_likely(memorised_llama, text_data, tmp_path):
    model, tok = load_llama(memorised_llama)
    trainer = IdkPOTrainer(model=model, args=TrainingArguments(**run_args(tmp_path)),
                           train_dataset=text_data["forget"], retain_dataset=text_data["retain"],
                           processing_class=tok)
    assert isinstance(trainer.args, IdkPOConfig) and trainer.args.beta == 0.1
    refusal_before, forget_before = _refusal_nll(model, tok, trainer), mean_nll(model, tok, text_data["forget"])
    trainer.train()
    assert _refusal_nll(model, tok, trainer) < refusal_before - 1.5   # nats/token
    assert mean_nll(model, tok, text_data["forget"]) > 3 * forget_before
    assert mean_nll(model, tok, text_data["retain"]) < 0.05
    logged = [h for h in trainer.state.log_history if "reward_margin" in h]
    assert logged[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4) and logged[-1]["reward_margin"] > 5


def test_idkpo_pairs_each_row_with_its_refusal_column(memorised_llama, text_data, tmp_path):
    model, tok = load_llama(memorised_llama)
    forget = text_data["forget"].add_column("idk", [f"No comment {i}." for i in range(4)])
    args = IdkPOConfig(**run_args(tmp_path, refusal_column="idk"))
    trainer = IdkPOTrainer(model=model, args=args, train_dataset=forget, retain_dataset=text_data["retain"],
                           processing_class=tok)
    batch = trainer.data_collator([trainer.pairing[i] for i in range(4)])
    chosen = tok.batch_decode(batch["forget"][CHOSEN_BATCH_KEY]["input_ids"], skip_special_tokens=True)
    rejected = tok.batch_decode(batch["forget"]["input_ids"], skip_special_tokens=True)
    assert [c.split("ASSISTANT:")[1].strip() for c in chosen] == [f"No comment {i}." for i in range(4)]
    assert [r.split("ASSISTANT:")[1].strip() for r in rejected] == list(forget["answer"])
    assert CHOSEN_BATCH_KEY not in batch["retain"]
    with pytest.raises(ValueError, match="refusal_column='nope' is not a column.*columns found"):
        IdkPOTrainer(model=model, args=IdkPOConfig(**run_args(tmp_path, refusal_column="nope")),
                     train_dataset=forget, processing_class=tok)


# ------------------------------------------------------------------------------------------------------------------
# RMU
# ------------------------------------------------------------------------------------------------------------------
def _target_distance(trainer, model, dataset) -> float:
    """Mean squared distance (over d) of the steered layer's answer-position activations to c * u."""
    batch = trainer.data_collator.collator(list(dataset))
    with torch.no_grad():
        h = trainer.layer_output(model, trainer.model_inputs(batch))
    mask = answer_positions(batch["labels"])
    return (h[mask] - trainer.control_vector(h.shape[-1])).pow(2).mean().item()


def test_rmu_steers_forget_activations_and_keeps_retain(memorised_llama, text_data, tmp_path):
    model, tok = load_llama(memorised_llama)
    start = snapshot(model)
    args = RMUConfig(**run_args(tmp_path, max_steps=20, lr_scheduler_type="constant", steer_layer=1,
                                trainable_params=None, retain_weight=100.0))
    trainer = RMUTrainer(model=model, args=args, train_dataset=text_data["forget"],
                         retain_dataset=text_data["retain"], processing_class=tok)
    assert trainer.trainable_layer_indices == [0, 1]
    distance_before = _target_distance(trainer, model, text_data["forget"])
    trainer.train()
    assert _target_distance(trainer, model, text_data["forget"]) < 0.4 * distance_before
    assert mean_nll(model, tok, text_data["forget"]) > 1.0    # steering layer 1 breaks the forget answers ...
    assert mean_nll(model, tok, text_data["retain"]) < 0.05   # ... while retain answers stay memorised
    after = model.state_dict()
    frozen = [k for k in start if not k.startswith("model.layers.")]  # embeddings, final norm, lm_head
    assert frozen and all(torch.equal(start[k], after[k]) for k in frozen)
    assert not torch.equal(start["model.layers.1.mlp.down_proj.weight"], after["model.layers.1.mlp.down_proj.weight"])


def test_rmu_defaults_under_plain_training_arguments_train_only_the_paper_matrix(memorised_llama, text_data,
                                                                                 tmp_path):
    model, tok = load_llama(memorised_llama)
    start = snapshot(model)
    trainer = RMUTrainer(model=model, args=TrainingArguments(**run_args(tmp_path, max_steps=2)),
                         train_dataset=text_data["forget"], retain_dataset=text_data["retain"],
                         processing_class=tok)
    # 2 decoder layers: the paper's relative depth (7 of 32) is layer 0; layers 0-2..0 clip to [0]
    assert isinstance(trainer.args, RMUConfig) and trainer.args.steer_layer == 0
    assert trainer.trainable_names == ["model.layers.0.mlp.down_proj.weight"]
    # The frozen copy shares every frozen weight with the policy and copies only the trainable matrix.
    ref = dict(trainer.ref_model.named_parameters())
    assert ref["model.embed_tokens.weight"] is dict(model.named_parameters())["model.embed_tokens.weight"]
    assert ref["model.layers.0.mlp.down_proj.weight"] is not model.model.layers[0].mlp.down_proj.weight
    trainer.train()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, start[k])]
    assert changed == ["model.layers.0.mlp.down_proj.weight"]


def test_rmu_precomputed_retain_activations_equal_the_frozen_copy(memorised_llama, text_data, tmp_path):
    runs = {}
    for precompute in (False, True):
        model, tok = load_llama(memorised_llama)
        args = RMUConfig(**run_args(tmp_path, max_steps=4, per_device_train_batch_size=2, steer_layer=1,
                                    precompute_retain_activations=precompute))
        trainer = RMUTrainer(model=model, args=args, train_dataset=text_data["forget"],
                             retain_dataset=text_data["retain"], processing_class=tok)
        trainer.train()
        runs[precompute] = ([h["retain_activation_mse"] for h in trainer.state.log_history
                             if "retain_activation_mse" in h], trainer)
    live, pre = runs[False], runs[True]
    assert live[0][-1] > 0 and live[0] == pytest.approx(pre[0], rel=1e-4, abs=1e-9)
    assert live[1].ref_model is not None and pre[1].ref_model is None
    # What was stored is the frozen model's h_l at each retain row's answer positions, row by row (computed here one
    # row at a time, unpadded). Only the summation order differs (batch layout): the longest reduction feeding h_l is
    # one MLP dot product per layer (intermediate size) on top of the residual stream's scale.
    stored = pre[1].precomputed.rows("retain.activation")
    assert len(stored) == len(text_data["retain"])
    frozen, tok = load_llama(memorised_llama)
    collate = UnlearnDataCollator(tok)
    config = frozen.config
    for i in range(len(text_data["retain"])):
        batch = collate([dict(text_data["retain"][i])])
        with torch.no_grad():
            h = pre[1].layer_output(frozen.eval(), {k: v for k, v in batch.items() if k != "labels"})[0]
        expected = h[answer_positions(batch["labels"])[0]]
        tolerance = reduction_tolerance(float(expected.abs().max()) * config.num_hidden_layers,
                                        config.intermediate_size * (pre[1].steer_layer_index + 1))
        assert stored[i].shape == expected.shape
        assert torch.allclose(stored[i], expected, rtol=0, atol=tolerance), (i, (stored[i] - expected).abs().max())


def test_rmu_input_errors(memorised_llama, text_data, tmp_path):
    model, tok = load_llama(memorised_llama)
    common = dict(train_dataset=text_data["forget"], processing_class=tok)
    with pytest.raises(ValueError, match=r"trainable_layers \[1\] come after steer_layer=0"):
        RMUTrainer(model=model, args=RMUConfig(**run_args(tmp_path, steer_layer=0, trainable_layers=[0, 1])), **common)
    with pytest.raises(ValueError, match="steer_layer=5 is out of range for a model with 2 decoder layers"):
        RMUTrainer(model=model, args=RMUConfig(**run_args(tmp_path, steer_layer=5)), **common)
    with pytest.raises(ValueError, match="No parameter of layers .* matches trainable_params='conv'"):
        RMUTrainer(model=model, args=RMUConfig(**run_args(tmp_path, trainable_params="conv")), **common)


# ------------------------------------------------------------------------------------------------------------------
# Vision-language models: forget VQA rows of the tiny LLaVA
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trainer_cls", [SimNPOTrainer, UNDIALTrainer, IdkPOTrainer])
def test_output_level_methods_forget_image_answers_on_llava(trainer_cls, memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    before = mean_nll(model, processor, toy_data["forget"])
    overrides = {"forget_weight": 1.0} if trainer_cls is SimNPOTrainer else {}
    args = trainer_cls.config_class(**run_args(tmp_path, max_steps=6, per_device_train_batch_size=2, **overrides))
    trainer_cls(model=model, args=args, train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                processing_class=processor).train()
    assert mean_nll(model, processor, toy_data["forget"]) > max(0.5, 10 * before)  # measured 0.75-1.3 from 0.04
    assert mean_nll(model, processor, toy_data["retain"]) < 0.3  # measured 0.05-0.1


def test_rmu_on_llava_steers_a_language_model_layer_on_forget_vqa(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    start = snapshot(model)
    args = RMUConfig(**run_args(tmp_path, max_steps=20, per_device_train_batch_size=2, steer_layer=-1,
                                lr_scheduler_type="constant", trainable_params=None, retain_weight=100.0))
    trainer = RMUTrainer(model=model, args=args, train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                         processing_class=processor)
    assert all(n.startswith("model.language_model.layers.") for n in trainer.trainable_names)
    distance_before = _target_distance(trainer, model, toy_data["forget"])
    trainer.train()
    assert _target_distance(trainer, model, toy_data["forget"]) < 0.7 * distance_before  # measured 0.69 -> 0.40
    assert mean_nll(model, processor, toy_data["forget"]) > 0.5  # from 0.04; measured 0.96
    assert mean_nll(model, processor, toy_data["retain"]) < 0.3  # measured 0.05
    after = model.state_dict()
    vision = [k for k in start if "vision_tower" in k or "multi_modal_projector" in k]
    assert vision and all(torch.equal(start[k], after[k]) for k in vision)


# ------------------------------------------------------------------------------------------------------------------
# Registry entries (hf-unlearn run / demos)
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, trainer_cls", [("simnpo", SimNPOTrainer), ("rmu", RMUTrainer),
                                               ("idkpo", IdkPOTrainer), ("undial", UNDIALTrainer)])
def test_registry_entries_build_and_train_with_overrides(name, trainer_cls, memorised_llama, text_data, tmp_path):
    from hf_unlearn.demo.recipe import build_demo_trainer, demo_hyperparameters
    from hf_unlearn.trainers.registry import MethodData

    model, tok = load_llama(memorised_llama)
    trainer = build_demo_trainer(name, model, tok, MethodData(forget=text_data["forget"], retain=text_data["retain"]),
                                 str(tmp_path / name), 0, max_steps=2, use_cpu=True)
    assert type(trainer) is trainer_cls and trainer.args.max_steps == 2
    assert all(getattr(trainer.args, k) == v for k, v in demo_hyperparameters(name).items() if k != "max_steps"
               and not (name == "rmu" and k == "steer_layer"))  # RMU writes the resolved layer back (-1 -> 1)
    trainer.train()
    assert trainer.state.global_step == 2


def test_rmu_resume_needs_no_frozen_model_its_activations_are_in_the_checkpoint(memorised_llama, text_data, tmp_path):
    def run(resume=None):
        model, tok = load_llama(memorised_llama)
        args = RMUConfig(**run_args(tmp_path, max_steps=4, per_device_train_batch_size=2, steer_layer=1,
                                    precompute_retain_activations=True, save_strategy="steps", save_steps=2))
        trainer = RMUTrainer(model=model, args=args, train_dataset=text_data["forget"],
                             retain_dataset=text_data["retain"], processing_class=tok)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, snapshot(model)

    straight, weights = run()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "hf_unlearn_precomputed.safetensors").is_file()
    resumed, resumed_weights = run(resume=str(checkpoint))  # no ref_model: the starting model is not needed
    assert resumed.ref_model is None and resumed.state.global_step == 4
    assert all(torch.equal(v, resumed_weights[k]) for k, v in weights.items())
