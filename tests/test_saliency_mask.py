"""SaliencyMask: bit-packed safetensors round trip, validation against a model, set algebra, reports, Hub push."""

import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from torch import nn

from hf_unlearn.saliency import CONFIG_NAME, MASK_NAME, SaliencyMask, SaliencyMaskConfig
from hf_unlearn.testing import tiny_llama, tiny_llava
from hf_unlearn.testing.hub_server import local_hub


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()[0]


def random_mask(model, config=None, p=0.3, seed=0, names=None):
    """A mask over ``config``'s targets (or ``names``) with each entry True with probability ``p``."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    names = names or list((config or SaliencyMaskConfig()).resolve_targets(model))
    masks = {n: torch.rand(params[n].shape, generator=g) < p for n in names}
    return SaliencyMask(masks, config=config, scores_summary={"note": "hand-built", "seed": seed})


# ------------------------------------------------------------------------------------------------- basic container
def test_counts_and_mapping_interface(llava):
    mask = random_mask(llava, SaliencyMaskConfig())
    assert len(mask) == 43 and mask.names() == list(mask.masks) and list(mask) == mask.names()
    assert "model.multi_modal_projector.linear_1.weight" in mask and "lm_head.weight" not in mask
    assert mask.num_covered == 30_208
    assert mask.num_selected == sum(int(t.sum()) for t in mask.masks.values())
    # selected_fraction = allowed to move; sparsity = held fixed (issue 16 item 4: it used to be the selected one)
    assert mask.selected_fraction == pytest.approx(mask.num_selected / 30_208)
    assert 0.28 < mask.selected_fraction < 0.32
    assert mask.sparsity == pytest.approx(1 - mask.num_selected / 30_208)
    assert f"selected_fraction={mask.selected_fraction:.4f}, sparsity={1 - mask.selected_fraction:.4f}" in repr(mask)
    assert mask["model.vision_tower.pre_layrnorm.bias"].dtype == torch.bool
    assert "covered=30208" in repr(mask)


def test_constructor_rejects_non_bool(llava):
    with pytest.raises(TypeError, match=r"masks\['w'\] must be a torch.bool tensor, got torch.float32.*\.bool\(\)"):
        SaliencyMask({"w": torch.ones(3)})
    with pytest.raises(TypeError, match="dict"):
        SaliencyMask([torch.ones(3, dtype=torch.bool)])


# ------------------------------------------------------------------------------------------------------ file format
def test_round_trip_is_exact_and_about_one_bit_per_entry(tmp_path):
    model = tiny_llava()[0]
    config = SaliencyMaskConfig(target_modules="both")
    mask = random_mask(model, config, p=0.5)
    # odd shapes too: a scalar, an empty tensor, a size that is not a multiple of 8
    extra = {"scalar": torch.tensor(True), "empty": torch.zeros(0, 3, dtype=torch.bool),
             "odd": torch.tensor([True, False, True, True, False, True, False, False, True, True, True])}
    mask = SaliencyMask({**mask.masks, **extra}, config=config, scores_summary=mask.scores_summary)
    mask.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == sorted([MASK_NAME, CONFIG_NAME])  # temp dir removed

    loaded = SaliencyMask.from_pretrained(tmp_path / "m")
    assert loaded.names() == mask.names()
    for name in mask:
        assert loaded[name].dtype == torch.bool and loaded[name].shape == mask[name].shape
        assert torch.equal(loaded[name], mask[name]), name
    assert loaded.config == config
    assert loaded.scores_summary == {"note": "hand-built", "seed": 0}

    size = os.path.getsize(tmp_path / "m" / MASK_NAME)
    bound = 1.1 * mask.num_covered / 8 + 16 * 1024 + 200 * len(mask)
    assert mask.num_covered == 159_680 + 12
    assert size <= bound, (size, bound)
    assert size < mask.num_covered / 4  # far below one byte per entry (a torch.bool file would be 8x)


def test_on_disk_layout_is_packbits_little_endian(tmp_path):
    bits = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0, 1], [1, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    SaliencyMask({"a.weight": bits}).save_pretrained(tmp_path)
    with safe_open(str(tmp_path / MASK_NAME), framework="np") as f:
        data = f.get_tensor("a.weight")
        meta = f.metadata()
    assert data.dtype == np.uint8
    # flattened: 1,0,0,0,0,0,0,0 | 1,1,1,0,0,0,0,0 | 0,0 -> little-endian bytes 0x01, 0x07, 0x00
    assert data.tolist() == [1, 7, 0]
    assert json.loads(meta["shapes"]) == {"a.weight": [2, 9]}
    assert meta["bit_order"] == "little" and meta["format"] == "hf_unlearn.saliency_mask"
    assert not (tmp_path / CONFIG_NAME).exists()  # no config given: mask file only
    assert SaliencyMask.from_pretrained(tmp_path).config is None


def test_loading_never_unpickles(tmp_path, monkeypatch):
    random_mask(tiny_llama()[0], SaliencyMaskConfig(target_modules="language")).save_pretrained(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading a mask")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert SaliencyMask.from_pretrained(tmp_path).num_covered == 129_472


def test_from_pretrained_rejects_foreign_safetensors(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, dtype=np.uint8)}, str(tmp_path / MASK_NAME))
    with pytest.raises(ValueError, match="not a saliency mask written by hf_unlearn"):
        SaliencyMask.from_pretrained(tmp_path)


def test_from_pretrained_rejects_truncated_bits(tmp_path):
    from safetensors.numpy import save_file

    meta = {"format": "hf_unlearn.saliency_mask", "format_version": "1", "bit_order": "little",
            "shapes": json.dumps({"w": [4, 4]}), "scores_summary": "null"}
    save_file({"w": np.zeros(1, dtype=np.uint8)}, str(tmp_path / MASK_NAME), metadata=meta)  # needs 2 bytes
    with pytest.raises(ValueError, match="corrupt.*expected 2 uint8"):
        SaliencyMask.from_pretrained(tmp_path)


def test_save_into_existing_model_dir_keeps_other_files(tmp_path, llava):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    random_mask(llava, SaliencyMaskConfig()).save_pretrained(tmp_path)
    random_mask(llava, SaliencyMaskConfig(), seed=1).save_pretrained(tmp_path)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == sorted(["model.safetensors", MASK_NAME, CONFIG_NAME])
    assert torch.equal(SaliencyMask.from_pretrained(tmp_path)["model.multi_modal_projector.linear_1.weight"],
                       random_mask(llava, SaliencyMaskConfig(), seed=1)["model.multi_modal_projector.linear_1.weight"])


# ------------------------------------------------------------------------------------------------------- validation
def test_validate_lists_every_mismatch_with_both_shapes():
    model = tiny_llava()[0]
    good = random_mask(model, SaliencyMaskConfig())
    good.validate(model)  # fits
    masks = dict(good.masks)
    masks["model.vision_tower.encoder.layers.0.mlp.fc1.weight"] = torch.zeros(5, 7, dtype=torch.bool)
    masks["model.multi_modal_projector.linear_2.bias"] = torch.zeros(3, dtype=torch.bool)
    masks["model.not_a_layer.weight"] = torch.zeros(2, dtype=torch.bool)
    with pytest.raises(ValueError) as info:
        SaliencyMask(masks).validate(model)
    message = str(info.value)
    assert "3 of 44 mask entries" in message
    fc1 = "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    assert f"{fc1}: mask shape (5, 7) != parameter shape (64, 32)" in message
    assert "model.multi_modal_projector.linear_2.bias: mask shape (3,) != parameter shape (64,)" in message
    assert "model.not_a_layer.weight: no such parameter" in message
    assert "compute_saliency_mask" in message  # how to fix
    other = tiny_llava(hidden_size=32)[0]  # a different size: every projector/LM-facing shape differs
    with pytest.raises(ValueError, match="mask shape"):
        good.validate(other)


def test_names_resolve_through_wrappers(llava):
    mask = random_mask(llava, SaliencyMaskConfig())
    wrapped = nn.DataParallel(llava)  # parameters are now "module.model...."
    mask.validate(wrapped)
    by_param = mask.for_model(wrapped)
    params = dict(wrapped.named_parameters())
    key = params["module.model.multi_modal_projector.linear_1.weight"]
    assert torch.equal(by_param[key], mask["model.multi_modal_projector.linear_1.weight"])
    assert len(by_param) == len(mask)
    by_name = mask.masks_for(wrapped)
    assert set(by_name) == {"module." + n for n in mask}


def test_full_model_mask_does_not_fit_lora_parameters():
    model = tiny_llava()[0]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    lora_mask = random_mask(peft_model, SaliencyMaskConfig(target_modules=["q_proj"]))
    lora_mask.validate(peft_model)
    with pytest.raises(ValueError, match="PEFT/LoRA"):
        lora_mask.validate(tiny_llava()[0])


def test_for_model_and_to(llava):
    mask = random_mask(llava, SaliencyMaskConfig())
    by_param = mask.for_model(llava)
    params = dict(llava.named_parameters())
    for name, m in mask.masks.items():
        assert by_param[params[name]] is not None and torch.equal(by_param[params[name]], m)
    moved = mask.to("meta")
    assert all(t.device.type == "meta" for t in moved.masks.values()) and moved.config is mask.config
    assert all(t.device.type == "cpu" for t in mask.masks.values())  # the original is untouched


# ------------------------------------------------------------------------------------------------------ set algebra
def test_union_and_intersection(llava):
    vision = SaliencyMaskConfig()
    a, b = random_mask(llava, vision, seed=1), random_mask(llava, vision, seed=2)
    union, inter = a | b, a & b
    assert union.names() == a.names() == inter.names()
    for n in a:
        assert torch.equal(union[n], a[n] | b[n]) and torch.equal(inter[n], a[n] & b[n])
    # inclusion-exclusion on the counts
    assert union.num_selected + inter.num_selected == a.num_selected + b.num_selected
    assert a.union(b).num_selected == union.num_selected and a.intersection(b).num_selected == inter.num_selected
    assert union.config == vision and union.scores_summary["combined"] == "union"
    # different coverage: union covers both, intersection the common names only
    proj = random_mask(llava, names=["model.multi_modal_projector.linear_1.weight", "lm_head.weight"], seed=3)
    u = a | proj
    assert u.names() == a.names() + ["lm_head.weight"] and u.config is None
    assert torch.equal(u["lm_head.weight"], proj["lm_head.weight"])
    i = a & proj
    assert i.names() == ["model.multi_modal_projector.linear_1.weight"]


def test_combination_errors(llava):
    a = random_mask(llava, SaliencyMaskConfig())
    bad = SaliencyMask({"model.multi_modal_projector.linear_1.weight": torch.zeros(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"linear_1.weight: \(64, 32\) vs \(2, 2\)"):
        a | bad
    with pytest.raises(ValueError, match="no common parameter"):
        a & SaliencyMask({"lm_head.weight": torch.zeros(3, dtype=torch.bool)})
    with pytest.raises(TypeError):
        a | {"x": torch.zeros(1, dtype=torch.bool)}


# ---------------------------------------------------------------------------------------------------------- reports
def test_sparsity_report_rows():
    masks = {
        "model.vision_tower.encoder.layers.0.mlp.fc1.weight": torch.tensor([[True, False], [False, False]]),
        "model.vision_tower.encoder.layers.0.mlp.fc1.bias": torch.tensor([True, True]),
        "model.multi_modal_projector.linear_1.weight": torch.tensor([True, False, False, False]),
        "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight": torch.ones(
            2, 2, dtype=torch.bool),
    }
    rows = SaliencyMask(masks).sparsity_report()
    assert rows == [
        {"module": "model.vision_tower.encoder.layers.0.mlp.fc1", "group": "vision", "covered": 6, "selected": 3,
         "fraction": 0.5, "sparsity": 0.5},
        {"module": "model.multi_modal_projector.linear_1", "group": "projector", "covered": 4, "selected": 1,
         "fraction": 0.25, "sparsity": 0.75},
        {"module": "model.language_model.layers.0.self_attn.q_proj", "group": "language", "covered": 4,
         "selected": 4, "fraction": 1.0, "sparsity": 0.0},
    ]
    by_group = SaliencyMask(masks).sparsity_report(by="group")
    assert [(r["module"], r["covered"], r["selected"]) for r in by_group] == [
        ("vision", 6, 3), ("projector", 4, 1), ("language", 4, 4)
    ]
    table = SaliencyMask(masks).to_markdown()
    assert "| model.multi_modal_projector.linear_1 | projector | 4 | 1 | 0.2500 | 0.7500 |" in table
    assert "| **total** |  | 14 | 8 | 0.5714 | 0.4286 |" in table
    with pytest.raises(ValueError, match="by='layer'"):
        SaliencyMask(masks).sparsity_report(by="layer")


def test_sparsity_report_with_model_validates_and_labels_text_only():
    model = tiny_llama()[0]
    mask = random_mask(model, SaliencyMaskConfig(target_modules="language"), p=0.5)
    rows = mask.sparsity_report(model)
    assert {r["group"] for r in rows} == {"language"}
    assert sum(r["covered"] for r in rows) == 129_472
    assert sum(r["selected"] for r in rows) == mask.num_selected
    with pytest.raises(ValueError, match="does not fit"):
        mask.sparsity_report(tiny_llava()[0])


def test_plot_writes_png(tmp_path, llava):
    mask = random_mask(llava, SaliencyMaskConfig())
    mask.plot(tmp_path / "plots" / "sparsity.png")
    data = (tmp_path / "plots" / "sparsity.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert os.listdir(tmp_path / "plots") == ["sparsity.png"]  # no temp file left
    mask.plot(tmp_path / "group.png", by="group")
    assert (tmp_path / "group.png").stat().st_size > 1_000


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch, llava):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    with pytest.raises(ImportError, match=r"pip install hf_unlearn\[plot\]"):
        random_mask(llava, SaliencyMaskConfig()).plot(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# -------------------------------------------------------------------------------------------------------------- Hub
def test_push_to_hub_and_load_back(tmp_path, llava):
    config = SaliencyMaskConfig(score="grad_magnitude", threshold=0.2)
    mask = random_mask(llava, config, p=0.2)
    with local_hub(tmp_path) as hub:
        mask.push_to_hub("local-user/llava-mask")  # PushToHubMixin: repo, model card, files
        files = hub.files("local-user/llava-mask")
        assert {MASK_NAME, CONFIG_NAME, "README.md"} <= set(files)
        loaded = SaliencyMask.from_pretrained("local-user/llava-mask")
        assert loaded.config == config
        assert all(torch.equal(loaded[n], mask[n]) for n in mask)

        # next to a model: a subfolder of an existing repo
        mask.push_to_hub("local-user/unlearned-llava", subfolder="saliency_mask", commit_message="Add mask")
        config.push_to_hub("local-user/unlearned-llava", subfolder="config_only")
        files = hub.files("local-user/unlearned-llava")
        assert {"saliency_mask/" + MASK_NAME, "saliency_mask/" + CONFIG_NAME, "config_only/" + CONFIG_NAME} <= set(
            files)
        again = SaliencyMask.from_pretrained("local-user/unlearned-llava", subfolder="saliency_mask")
        assert again.num_selected == mask.num_selected and again.config == config

        # the config alone, through PushToHubMixin.push_to_hub
        config.push_to_hub("local-user/mask-config")
        assert SaliencyMaskConfig.from_pretrained("local-user/mask-config") == config
        with pytest.raises(OSError, match="not a local directory"):
            SaliencyMask.from_pretrained("local-user/does-not-exist")
