"""SaliencyMaskConfig: validation, JSON round trip, forward compatibility and parameter targeting."""

import dataclasses
import json
import os

import pytest
from peft import LoraConfig, get_peft_model

from hf_unlearn.saliency import CONFIG_NAME, SaliencyMaskConfig
from hf_unlearn.testing import tiny_llama, tiny_llava, tiny_qwen2_vl


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()[0]


def _numel(model, names):
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


# ------------------------------------------------------------------------------------------------- fields, checks
def test_defaults_and_filled_fields():
    import hf_unlearn

    config = SaliencyMaskConfig()
    assert config.target_modules == "vision"
    assert config.score == "fisher_ratio" and config.threshold == 1.0
    assert config.preserve_sets == {"vision": ["retain"], "language": ["retain", "text"]}
    assert config.preserve_combine == "pooled" and config.epsilon == 1e-15
    assert (config.seed, config.batch_size, config.max_batches) == (0, 4, None)
    assert config.mask_type == "saliency"
    assert config.hf_unlearn_version == getattr(hf_unlearn, "__version__", "0.1.0.dev0")
    assert SaliencyMaskConfig(score="grad_magnitude").threshold == 0.5
    assert SaliencyMaskConfig(score="random").threshold == 0.5
    assert SaliencyMaskConfig(score="random", threshold=1).threshold == 1.0
    # default dicts are not shared between instances
    a, b = SaliencyMaskConfig(), SaliencyMaskConfig()
    a.preserve_sets["vision"].append("x")
    assert b.preserve_sets["vision"] == ["retain"]


def test_every_field_is_documented_twice():
    doc = SaliencyMaskConfig.__doc__
    for f in dataclasses.fields(SaliencyMaskConfig):
        assert f.metadata.get("help"), f.name
        assert f"    {f.name} (`" in doc, f.name


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"score": "fisher"}, ["score", "'fisher'", "fisher_ratio", "grad_magnitude", "random"]),
        ({"preserve_combine": "all"}, ["preserve_combine", "'all'", "pooled", "every"]),
        ({"threshold": 0.0}, ["threshold", "0.0", "> 0"]),
        ({"threshold": -1.0}, ["threshold", "-1.0"]),
        ({"score": "grad_magnitude", "threshold": 1.5}, ["threshold", "1.5", "(0, 1]"]),
        ({"score": "random", "threshold": 0}, ["threshold", "(0, 1]"]),
        ({"threshold": "high"}, ["threshold", "'high'"]),
        ({"target_modules": ""}, ["target_modules", "preset", "regex"]),
        ({"target_modules": []}, ["target_modules", "[]"]),
        ({"target_modules": "(unclosed"}, ["target_modules", "'(unclosed'", "regex"]),
        ({"target_modules": ["q_proj", 3]}, ["target_modules", "3"]),
        ({"exclude_modules": "vision"}, ["exclude_modules", "presets cannot be excluded"]),
        ({"preserve_sets": {"audio": ["retain"]}}, ["preserve_sets", "'audio'", "vision", "language"]),
        ({"preserve_sets": {"vision": []}}, ["preserve_sets", "'vision'", "non-empty"]),
        ({"preserve_sets": ["retain"]}, ["preserve_sets", "dict"]),
        ({"epsilon": 0.0}, ["epsilon", "0.0", "> 0"]),
        ({"batch_size": 0}, ["batch_size", "0", ">= 1"]),
        ({"batch_size": 2.5}, ["batch_size", "2.5"]),
        ({"max_batches": 0}, ["max_batches", "0", "None"]),
        ({"seed": "0"}, ["seed", "'0'"]),
        ({"mask_type": "lora"}, ["mask_type", "'lora'", "'saliency'"]),
    ],
)
def test_invalid_values_name_field_value_and_allowed(kwargs, words):
    with pytest.raises(ValueError) as info:
        SaliencyMaskConfig(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_normalisation():
    config = SaliencyMaskConfig(target_modules={"v_proj", "q_proj"}, preserve_sets={"vision": "retain"})
    assert config.target_modules == ["q_proj", "v_proj"]  # sets become sorted lists (JSON-serialisable)
    assert config.preserve_sets == {"vision": ["retain"]}
    with pytest.raises(ValueError, match="no 'language' entry"):
        config.preserve_set_names("language")
    assert config.preserve_set_names("projector") == ["retain"]  # projector falls back to vision
    own = SaliencyMaskConfig(preserve_sets={"vision": ["a"], "projector": ["b"]})
    assert own.preserve_set_names("projector") == ["b"]


# -------------------------------------------------------------------------------------------------- serialisation
def test_save_load_round_trip(tmp_path):
    config = SaliencyMaskConfig(
        target_modules=r".*language_model.*\.(q_proj|v_proj)\..*", exclude_modules=["lm_head"], score="grad_magnitude",
        threshold=0.25, preserve_sets={"vision": ["retain", "extra"], "language": ["text"]}, preserve_combine="every",
        epsilon=1e-12, seed=7, batch_size=2, max_batches=3,
    )
    config.save_pretrained(tmp_path / "cfg")
    assert os.listdir(tmp_path / "cfg") == [CONFIG_NAME]  # no temp file left behind
    text = (tmp_path / "cfg" / CONFIG_NAME).read_text()
    data = json.loads(text)
    assert list(data) == sorted(data)  # sorted keys
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    loaded = SaliencyMaskConfig.from_pretrained(tmp_path / "cfg")
    assert loaded == config
    assert SaliencyMaskConfig.from_pretrained(tmp_path / "cfg" / CONFIG_NAME) == config  # the file itself
    config.save_pretrained(tmp_path / "repo" / "masks")
    assert SaliencyMaskConfig.from_pretrained(tmp_path / "repo", subfolder="masks") == config


def test_save_accepts_push_kwargs_and_overwrites(tmp_path):
    SaliencyMaskConfig(seed=1).save_pretrained(tmp_path, max_shard_size="50GB")
    SaliencyMaskConfig(seed=2).save_pretrained(tmp_path)
    assert SaliencyMaskConfig.from_pretrained(tmp_path).seed == 2


def test_unknown_keys_dropped_with_warning(tmp_path):
    data = SaliencyMaskConfig(seed=3).to_dict()
    data.update({"shiny_new_option": 1, "another": "x"})
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"\['another', 'shiny_new_option'\]"):
        loaded = SaliencyMaskConfig.from_pretrained(tmp_path)
    assert loaded.seed == 3 and not hasattr(loaded, "shiny_new_option")


def test_load_rejects_other_config_types(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"mask_type": "shira", "seed": 0}))
    with pytest.raises(ValueError, match="mask_type='shira'"):
        SaliencyMaskConfig.from_pretrained(tmp_path)


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        SaliencyMaskConfig.from_pretrained(tmp_path)  # a directory without the file
    with pytest.raises(OSError, match="not a local directory"):
        SaliencyMaskConfig.from_pretrained(str(tmp_path / "nope"))  # neither a directory nor a reachable repo


def test_save_to_a_file_path_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        SaliencyMaskConfig().save_pretrained(tmp_path / "f")


# ------------------------------------------------------------------------------------------------------ targeting
def test_presets_on_llava(llava):
    vision = SaliencyMaskConfig(target_modules="vision").resolve_targets(llava)
    assert _numel(llava, vision) == 23_936 + 6_272
    assert set(vision.values()) == {"vision", "projector"}
    assert all(n.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for n in vision)
    language = SaliencyMaskConfig(target_modules="language").resolve_targets(llava)
    assert _numel(llava, language) == 159_680 - 30_208
    assert set(language.values()) == {"language"}
    both = SaliencyMaskConfig(target_modules="both").resolve_targets(llava)
    assert both == {**vision, **language}
    assert list(both) == [n for n, _ in llava.named_parameters()]  # model order


def test_vision_preset_on_qwen2_vl():
    model = tiny_qwen2_vl()[0]
    targets = SaliencyMaskConfig().resolve_targets(model)
    assert all(n.startswith("model.visual.") for n in targets)
    assert _numel(model, [n for n, g in targets.items() if g == "projector"]) == 24_832  # visual.merger
    assert _numel(model, targets) == 44_992


def test_regex_and_list_semantics(llava):
    # regex: re.fullmatch on the parameter name
    regex = SaliencyMaskConfig(target_modules=r"model\.language_model\.layers\.\d+\.self_attn\.q_proj\.weight")
    assert list(regex.resolve_targets(llava)) == [
        "model.language_model.layers.0.self_attn.q_proj.weight", "model.language_model.layers.1.self_attn.q_proj.weight"
    ]
    # fullmatch, not search: a bare fragment matches nothing
    with pytest.raises(ValueError, match="covers no parameter"):
        SaliencyMaskConfig(target_modules="q_proj").resolve_targets(llava)
    # list: a module-name suffix covers the module's parameters (CLIP q_proj has a bias, Llama's has not)
    names = list(SaliencyMaskConfig(target_modules=["q_proj"]).resolve_targets(llava))
    assert len(names) == 2 * 2 + 2
    assert "model.vision_tower.encoder.layers.0.self_attn.q_proj.bias" in names
    # a suffix must start at a dot: "proj" does not match "q_proj"
    with pytest.raises(ValueError):
        SaliencyMaskConfig(target_modules=["proj"]).resolve_targets(llava)
    # an exact full parameter name
    assert list(SaliencyMaskConfig(target_modules=["lm_head.weight"]).resolve_targets(llava)) == ["lm_head.weight"]


def test_exclude_modules(llava):
    config = SaliencyMaskConfig(target_modules="vision", exclude_modules=["post_layernorm", "multi_modal_projector"])
    targets = config.resolve_targets(llava)
    assert set(targets.values()) == {"vision"}
    assert _numel(llava, targets) == 23_936 - 64
    regex = SaliencyMaskConfig(target_modules="language", exclude_modules=r".*layers\.1\..*|lm_head\.weight")
    names = regex.resolve_targets(llava)
    assert not any(".layers.1." in n for n in names) and "lm_head.weight" not in names


def test_frozen_parameters_are_not_covered():
    model = tiny_llava()[0]
    model.model.multi_modal_projector.requires_grad_(False)
    targets = SaliencyMaskConfig().resolve_targets(model)
    assert set(targets.values()) == {"vision"} and _numel(model, targets) == 23_936


def test_nothing_matches_names_selector_and_examples():
    model = tiny_llama()[0]
    with pytest.raises(ValueError) as info:
        SaliencyMaskConfig(target_modules=r".*vision_tower.*").resolve_targets(model)
    message = str(info.value)
    assert "'.*vision_tower.*'" in message and "LlamaForCausalLM" in message
    assert "model.embed_tokens.weight" in message and "model.layers.0.self_attn.q_proj.weight" in message
    with pytest.raises(ValueError, match=r"preset 'vision' covers the vision tower.*LlamaForCausalLM.*model\.layers"):
        SaliencyMaskConfig(target_modules="vision").resolve_targets(model)


def test_vlm_with_unrecognised_names_needs_a_regex():
    from torch import nn
    from transformers import PretrainedConfig

    class OddVLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = PretrainedConfig(vision_config={"hidden_size": 2})
            self.image_encoder = nn.Linear(2, 2)
            self.decoder = nn.Linear(2, 2)

    model = OddVLM()
    with pytest.raises(ValueError) as info:
        SaliencyMaskConfig(target_modules="vision").resolve_targets(model)
    assert "OddVLM" in str(info.value) and "image_encoder.weight" in str(info.value) and "regex" in str(info.value)
    # unrecognised parts are not silently counted as language either
    with pytest.raises(ValueError, match="covers no parameter"):
        SaliencyMaskConfig(target_modules="language").resolve_targets(model)
    assert list(SaliencyMaskConfig(target_modules=r"image_encoder\..*").resolve_targets(model)) == [
        "image_encoder.weight", "image_encoder.bias"
    ]


def test_text_only_language_preset():
    model = tiny_llama()[0]
    targets = SaliencyMaskConfig(target_modules="language").resolve_targets(model)
    assert list(targets) == [n for n, _ in model.named_parameters()]


def test_peft_model_covers_lora_parameters_under_real_names():
    model = tiny_llava()[0]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    targets = SaliencyMaskConfig(target_modules="language").resolve_targets(peft_model)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert list(targets) == trainable and len(trainable) == 2 * 2 * 2
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight" in targets
    # PEFT-style module names and regexes written for the bare model work on the wrapped one
    assert list(SaliencyMaskConfig(target_modules=["q_proj"]).resolve_targets(peft_model)) == [
        n for n in trainable if ".q_proj." in n
    ]
    bare_regex = SaliencyMaskConfig(target_modules=r"model\.language_model\.layers\.0\..*")
    assert list(bare_regex.resolve_targets(peft_model)) == [n for n in trainable if ".layers.0." in n]
    # the vision preset matches only frozen base weights: the error says so
    with pytest.raises(ValueError, match="requires_grad=False") as info:
        SaliencyMaskConfig(target_modules="vision").resolve_targets(peft_model)
    assert "lora_A" in str(info.value)
