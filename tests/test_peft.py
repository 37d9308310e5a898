"""``peft_config=`` on every trainer, as TRL's trainers take it; adapter cards; QLoRA on the CPU (issue 28, item 4)."""

from __future__ import annotations

import copy
import dataclasses
import gc
import re

import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel, get_peft_model

from hf_unlearn import METHODS, GAConfig, GATrainer, NPOConfig, NPOTrainer
from hf_unlearn.testing import tiny_llama, tiny_llava
from hf_unlearn.testing.toy import JOBS, NAMES
from hf_unlearn.trainers.registry import MethodData

from conftest import ALTERNATE_ARGS, with_alternatives

# Adapters on attention and on RMU's trainable module (mlp.down_proj), in the vision tower and the language model.
TARGETS = r".*\.(q_proj|v_proj|down_proj|fc2)"


def lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)


@pytest.fixture(scope="module")
def llava():
    gc.collect()
    gc.freeze()  # Trainer.train's gc.collect() would walk the whole test session each time (see test_format_matrix)
    yield tiny_llava(corpus=NAMES + JOBS)
    gc.unfreeze()


@pytest.fixture(scope="module")
def data(toy_data):
    retain = toy_data["retain"]
    return MethodData(forget=toy_data["forget"], retain=retain, preserve={"retain": retain, "text": retain})


def _args(spec, tmp_path, **extra):
    return spec.config(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2,
                       use_cpu=True, disable_tqdm=True, logging_steps=1, save_strategy="no", report_to="none",
                       probe_rows=0, **extra)


# Methods whose edit an adapter cannot hold: MANU silences base neurons (training-free), MIP-Editor edits the weight
# rows of its neuron path. Given peft_config, each refuses with one clear error before anything is written.
NO_ADAPTER = {"manu": "MANU is training-free", "mip_editor": "a LoRA adapter cannot hold a row-restricted edit"}
# SMFA trains two adapters of its own with peft_config and, when training ends, adds the forget adapter's delta sculpted
# by the anchor's to the base weights (an entrywise-masked delta is not low-rank): the base weights it targets move.
MERGED = {"smfa"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_trainer_takes_peft_config_and_trains_only_the_adapters(method, llava, data, tmp_path):
    base, processor = llava
    model = copy.deepcopy(base)
    spec = METHODS[method]
    if method in NO_ADAPTER:
        with pytest.raises(ValueError, match=NO_ADAPTER[method]):
            spec.build_trainer(model, processor, data, _args(spec, tmp_path), peft_config=lora())
        assert not any(tmp_path.iterdir())
        return
    if method in MERGED:
        trainer = spec.build_trainer(model, processor, data, _args(spec, tmp_path), peft_config=lora())
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train()
        assert not isinstance(trainer.model, PeftModel)
        moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
        assert moved and all(re.fullmatch(TARGETS + r"\.weight", n) for n in moved), sorted(moved)[:5]
        return
    mask = {"score": "random"} if method == "mmunlearner" else None
    if method == "altpo":  # the toy rows have no options to draw alternatives from
        data = dataclasses.replace(data, forget=with_alternatives(data.forget, JOBS + NAMES))
    trainer = spec.build_trainer(model, processor, data, _args(spec, tmp_path, **ALTERNATE_ARGS.get(method, {})),
                                 mask=mask, peft_config=lora())
    assert isinstance(trainer.model, PeftModel)
    if spec.trainer_class.needs_reference_on_forget or method in ("kl_min", "vkd", "rmu"):
        assert trainer.ref_model is None and trainer.reference.adapter_free  # the base with adapters off, no copy
    if method == "mmunlearner":  # the mask was computed on the wrapped model: it covers the adapter factors only
        assert trainer.saliency_mask.masks and all(".lora_" in n for n in trainer.saliency_mask.masks)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all(".lora_" in n for n in moved), sorted(moved)[:5]
    if method == "vkd":  # the LLM's adapters stay frozen: VKD trains the vision side only
        assert all("vision_tower" in n or "projector" in n for n in moved)
    if method == "rmu":
        assert all("language_model" in n for n in moved)


def test_adapter_weights_move_and_base_weights_stay(llava, data, tmp_path):
    base, processor = llava
    trainer = NPOTrainer(copy.deepcopy(base), _args(METHODS["npo"], tmp_path), train_dataset=data.forget,
                         retain_dataset=data.retain, processing_class=processor, peft_config=lora())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert changed and all(".lora_" in n for n in changed)
    assert all(not after[n].requires_grad for n in before if ".lora_" not in n)


def test_peft_config_errors_name_the_fix(llava, data, tmp_path):
    base, processor = llava
    args = _args(METHODS["ga"], tmp_path)
    with pytest.raises(TypeError, match=r"`peft_config` must be a `peft.PeftConfig` instance .* got dict"):
        GATrainer(copy.deepcopy(base), args, train_dataset=data.forget, processing_class=processor,
                  peft_config={"r": 4})
    wrapped = get_peft_model(copy.deepcopy(base), lora())
    with pytest.raises(ValueError, match="You passed a PEFT model together with `peft_config`.*merge_and_unload"):
        GATrainer(wrapped, args, train_dataset=data.forget, processing_class=processor, peft_config=lora())


def test_adapter_card_says_peft_and_the_adapter_reloads(llava, data, tmp_path):
    base, processor = llava
    trainer = GATrainer(copy.deepcopy(base), GAConfig(output_dir=str(tmp_path / "run"), max_steps=2,
                                                     learning_rate=1e-2, use_cpu=True, report_to="none",
                                                     save_strategy="no", disable_tqdm=True, probe_rows=0),
                        train_dataset=data.forget, processing_class=processor, peft_config=lora())
    trainer.train()
    trainer.save_model()
    out = tmp_path / "run"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft"
    assert "PeftModel.from_pretrained(base" in card.text
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), str(out)).eval()
    batch = trainer.row_collator([data.forget[0]])
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, trainer.model(**batch).logits, atol=1e-5)


def test_full_model_card_still_says_transformers(llava, data, tmp_path):
    base, processor = llava
    trainer = GATrainer(copy.deepcopy(base), GAConfig(output_dir=str(tmp_path), max_steps=1, use_cpu=True,
                                                     report_to="none", save_strategy="no", disable_tqdm=True,
                                                     probe_rows=0),
                        train_dataset=data.forget, processing_class=processor)
    trainer.save_model()
    assert ModelCard.load(tmp_path / "README.md").data.library_name == "transformers"


def test_qlora_trains_a_4bit_model_on_the_cpu(toy_data, tmp_path):
    """bitsandbytes >= 0.45 runs 4-bit layers on the CPU (its fallback kernels): QLoRA is tested here, not only on
    GPUs. The base model is loaded in 4 bits, prepared (prepare_model_for_kbit_training) and wrapped by the trainer.
    The probe runs before step 1 (an eval-mode forward): on AVX512-BF16 CPUs bitsandbytes would then repack the
    4-bit weights into a format no gradient flows through (peft_setup.keep_4bit_layers_differentiable)."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model, tok = tiny_llama(corpus=NAMES + JOBS)
    model.save_pretrained(tmp_path / "base")
    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=BitsAndBytesConfig(load_in_4bit=True,
                                                                  bnb_4bit_compute_dtype=torch.float32))
    assert quantized.is_loaded_in_4bit
    rows = Dataset.from_list([r for r in toy_data["all"] if r["image"] is None])
    trainer = NPOTrainer(quantized, NPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, learning_rate=1e-2,
                                              per_device_train_batch_size=2, use_cpu=True, report_to="none",
                                              save_strategy="no", disable_tqdm=True, logging_steps=1),
                         train_dataset=rows.select(range(2)), retain_dataset=rows.select(range(2, 6)),
                         processing_class=tok,
                         peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))  # B starts at 0
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert before and all(".lora_" in n for n in before)
    lora_b = {n: p for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.detach().abs().max() > 0 for p in lora_b.values())  # every B moved off 0
    losses = [h["forget_loss"] for h in trainer.state.log_history if "forget_loss" in h]
    assert len(losses) == 2 and losses[0] != losses[1]
