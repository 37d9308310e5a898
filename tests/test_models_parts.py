"""Finding the vision tower, projector and language model of LLaVA, Qwen2-VL, Qwen2.5-VL and text-only LMs."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from hf_unlearn.models import (
    canonical_parameter_name,
    get_language_model,
    get_projector,
    get_vision_tower,
    is_vision_language_model,
    language_parameter_names,
    parameter_group,
    parameter_groups,
    unwrap_model,
    vision_parameter_names,
)
from hf_unlearn.testing import tiny_llama, tiny_llava, tiny_qwen2_5_vl, tiny_qwen2_vl


def _numel(model, names):
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()[0]


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen2_vl()[0]


@pytest.mark.parametrize(
    "name, group",
    [
        ("model.vision_tower.encoder.layers.0.mlp.fc1.weight", "vision"),
        ("model.multi_modal_projector.linear_1.weight", "projector"),
        ("model.language_model.layers.1.self_attn.q_proj.weight", "language"),
        ("lm_head.weight", "language"),
        ("model.embed_tokens.weight", "language"),
        ("model.visual.blocks.0.attn.qkv.weight", "vision"),
        ("model.visual.merger.mlp.0.weight", "projector"),
        ("model.image_newline", "projector"),  # LLaVA-NeXT
        ("model.vision_model.encoder.layers.0.mlp.fc1.weight", "vision"),  # Idefics / Mllama
        ("model.connector.modality_projection.proj.weight", "projector"),  # Idefics3
        ("model.text_model.layers.0.mlp.up_proj.weight", "language"),  # Idefics3
        # wrappers: PEFT prefix and LoRA suffix, DDP, torch.compile
        ("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight", "language"),
        ("base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.base_layer.weight", "vision"),
        ("module.model.visual.merger.ln_q.bias", "projector"),
        ("_orig_mod.model.multi_modal_projector.linear_2.bias", "projector"),
        ("model.layers.0.mlp.up_proj.weight", None),  # text-only LM: only parameter_groups(model) knows
    ],
)
def test_parameter_group(name, group):
    assert parameter_group(name) == group


def test_canonical_parameter_name():
    name = "module.base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.weight"
    assert canonical_parameter_name(name) == "model.language_model.layers.0.self_attn.q_proj.weight"
    assert canonical_parameter_name("lm_head.weight") == "lm_head.weight"


@pytest.mark.parametrize(
    "builder, vision, projector, total",
    [
        # counts from shared/research/environment.md §2 and the tiny builders
        (tiny_llava, 23_936, 6_272, 159_680),
        (tiny_qwen2_vl, 20_160, 24_832, 174_976),
        (tiny_qwen2_5_vl, 24_256, 24_800, 179_040),
    ],
)
def test_vlm_parameter_names_partition_the_model(builder, vision, projector, total):
    model = builder()[0]
    groups = parameter_groups(model)
    assert None not in groups.values()  # every parameter of these models has a part
    assert _numel(model, [n for n, g in groups.items() if g == "vision"]) == vision
    assert _numel(model, [n for n, g in groups.items() if g == "projector"]) == projector
    assert _numel(model, vision_parameter_names(model)) == vision + projector
    assert _numel(model, vision_parameter_names(model, include_projector=False)) == vision
    lang = language_parameter_names(model)
    assert _numel(model, lang) == total - vision - projector
    assert "lm_head.weight" in lang and "model.language_model.embed_tokens.weight" in lang
    assert set(lang).isdisjoint(vision_parameter_names(model))
    assert is_vision_language_model(model)


def test_module_getters_llava(llava):
    assert type(get_vision_tower(llava)).__name__ == "CLIPVisionModel"
    assert get_vision_tower(llava) is llava.model.vision_tower
    assert get_projector(llava) is llava.model.multi_modal_projector
    assert get_language_model(llava) is llava.model.language_model


def test_module_getters_qwen(qwen):
    assert get_vision_tower(qwen) is qwen.model.visual
    assert get_projector(qwen) is qwen.model.visual.merger  # nested inside the vision tower
    assert get_language_model(qwen) is qwen.model.language_model


def test_text_only_model_is_all_language():
    model = tiny_llama()[0]
    assert not is_vision_language_model(model)
    names = [n for n, _ in model.named_parameters()]
    assert language_parameter_names(model) == names  # everything, in model order
    assert set(parameter_groups(model).values()) == {"language"}
    assert get_language_model(model) is model


def test_vlm_only_operations_on_text_model_name_class_and_prefixes():
    model = tiny_llama()[0]
    for fn in (vision_parameter_names, get_vision_tower, get_projector):
        with pytest.raises(ValueError) as info:
            fn(model)
        message = str(info.value)
        assert "LlamaForCausalLM" in message and "model.layers" in message and "lm_head.weight" in message


def test_unknown_vlm_language_model_raises():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower = nn.Linear(2, 2)
            self.decoder = nn.Linear(2, 2)

    odd = Odd()
    assert is_vision_language_model(odd)
    with pytest.raises(ValueError, match=r"Odd.*decoder"):
        get_language_model(odd)


def test_idefics_style_names():
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_model = nn.Linear(3, 3)
            self.connector = nn.Linear(3, 4)
            self.text_model = nn.Linear(4, 4)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            self.lm_head = nn.Linear(4, 5)

    m = Outer()
    assert get_vision_tower(m) is m.model.vision_model
    assert get_projector(m) is m.model.connector
    assert get_language_model(m) is m.model.text_model
    assert sorted(language_parameter_names(m)) == sorted(
        ["model.text_model.weight", "model.text_model.bias", "lm_head.weight", "lm_head.bias"]
    )


def test_peft_wrapped_llava():
    model = tiny_llava()[0]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert unwrap_model(peft_model) is model  # LoRA layers stay injected in the returned model
    assert get_projector(peft_model) is model.model.multi_modal_projector
    vision = vision_parameter_names(peft_model)
    assert all(n.startswith("base_model.model.model.") for n in vision)
    # the LoRA factors of the vision q/v projections are vision parameters, under their real names
    lora_vision = [n for n in vision if ".lora_" in n]
    assert len(lora_vision) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert set(lora_vision) <= trainable


def test_data_parallel_wrapper():
    model = tiny_llava()[0]
    wrapped = nn.DataParallel(model)  # CPU: no devices, keeps `.module`
    assert unwrap_model(wrapped) is model
    names = vision_parameter_names(wrapped)
    assert all(n.startswith("module.") for n in names)
    assert _numel(wrapped, names) == 30_208
    assert get_vision_tower(wrapped) is model.model.vision_tower


def test_parameter_groups_cover_every_name_of_given_model(qwen):
    groups = parameter_groups(qwen)
    assert list(groups) == [n for n, _ in qwen.named_parameters()]
    assert groups["model.visual.merger.ln_q.weight"] == "projector"
    assert groups["lm_head.weight"] == "language"
    assert torch.is_tensor(dict(qwen.named_parameters())["lm_head.weight"])
