"""Model card builder: metadata, sections, and that nothing about the forget set or local paths is published."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard, create_repo
from transformers import TrainingArguments

from hf_unlearn.hub import build_model_card, safe_settings
from hf_unlearn.testing.hub_server import local_hub

PLANT = "ZQ7PLANTED"  # a unique marker planted in every field that must never reach the card

NPO_PAPER = {
    "title": "Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning",
    "id": "2404.05868",
    "citation": "@article{zhang2024negative,\n  title={Negative Preference Optimization},\n  year={2024}\n}",
}


def _card(**overrides):
    kwargs = dict(
        method_name="NPO", method_tag="npo", paper=NPO_PAPER, base_model="llava-hf/llava-1.5-7b-hf",
        model_name="me/llava-npo", settings={"beta": 0.1, "learning_rate": 1e-5, "lr_scheduler_type": "cosine"},
        mask_summary={"config": {"score": "fisher", "threshold": 0.5},
                      "sparsity": {"total": 0.1234, "by_module": {"model.vision_tower": 0.3}}},
        metrics_before={"forget_rouge": 0.8125, "retain_rouge": 0.75},
        metrics_after={"forget_rouge": 0.125, "retain_rouge": 0.7431, "mia_auc": 0.51},
        tags=["llava"], pipeline_tag="image-text-to-text",
        library_versions={"transformers": "5.23.0", "hf_unlearn": "0.1.0"},
    )
    kwargs.update(overrides)
    return build_model_card(**kwargs)


def test_yaml_metadata_round_trips_through_modelcard_load(tmp_path):
    card = _card()
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    assert loaded.data.to_dict() == card.data.to_dict()
    assert loaded.data.library_name == "transformers"
    assert loaded.data.base_model == "llava-hf/llava-1.5-7b-hf"
    assert loaded.data.pipeline_tag == "image-text-to-text"
    assert loaded.data.tags == ["hf_unlearn", "unlearning", "npo", "llava"]
    assert loaded.data.to_dict().get("datasets") is None
    assert str(loaded) == str(card)


def test_sections_render_method_citation_settings_mask_and_snippet():
    text = str(_card())
    assert "[Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning]" \
           "(https://huggingface.co/papers/2404.05868)" in text
    assert "@article{zhang2024negative," in text
    assert "| `beta` | 0.1 |" in text and "| `lr_scheduler_type` | cosine |" in text
    # A legacy summary ("sparsity" meant the selected fraction) renders with the new, explicit wording.
    assert "| `score` | fisher |" in text
    assert "Selected fraction (allowed to move, whole mask): **0.1234**; sparsity (held fixed): 0.8766" in text
    assert "| `model.vision_tower` | 0.3 |" in text
    assert 'AutoModelForImageTextToText.from_pretrained("me/llava-npo")' in text
    assert 'AutoProcessor.from_pretrained("me/llava-npo")' in text
    assert "forget set" in text and "not included in this card" in text
    assert "- transformers: 5.23.0" in text
    assert "\n\n\n" not in text

    text_lm = str(_card(pipeline_tag="text-generation", mask_summary=None, paper=None))
    assert 'AutoModelForCausalLM.from_pretrained("me/llava-npo")' in text_lm
    assert 'AutoTokenizer.from_pretrained("me/llava-npo")' in text_lm
    assert "## Saliency mask" not in text_lm and "## Citation" not in text_lm


def test_metric_table_renders_the_numbers_given():
    text = str(_card())
    assert "| metric | before | after |" in text
    assert "| `forget_rouge` | 0.8125 | 0.125 |" in text
    assert "| `retain_rouge` | 0.75 | 0.7431 |" in text
    assert "| `mia_auc` | — | 0.51 |" in text  # only measured after
    nested = str(_card(metrics_before={"forget": {"rouge": 0.5}}, metrics_after={"forget": {"rouge": 0.0625}}))
    assert "| `forget/rouge` | 0.5 | 0.0625 |" in nested
    assert "## Evaluation" not in str(_card(metrics_before=None, metrics_after=None))
    with pytest.raises(ValueError, match="must be numbers"):
        _card(metrics_after={"forget_outputs": ["an answer"]})


@pytest.mark.parametrize("base", ["/tmp/models/llava", "./checkpoints/run1", "~/models/llava", "a/b/c"])
def test_local_path_base_model_is_dropped(tmp_path, base):
    card = _card(base_model=base)
    assert card.data.base_model is None
    assert base not in str(card)
    existing_dir = tmp_path / "llava-base"
    existing_dir.mkdir()
    card = _card(base_model=str(existing_dir), model_name=str(tmp_path / "out"))
    assert card.data.base_model is None and str(tmp_path) not in str(card)
    assert 'from_pretrained("your-username/your-model")' in str(card)


def test_planted_secrets_never_reach_the_card():
    settings = {
        "beta": 0.1, "alpha": 1, "use_mask": True, "loss_type": "npo", "target_modules": ["q_proj", "v_proj"],
        "output_dir": f"/tmp/{PLANT}_x", "logging_dir": f"/tmp/{PLANT}/logs", "run_name": f"forget-{PLANT}",
        "hub_model_id": f"me/{PLANT}", "forget_dataset": f"{PLANT}_x", "forget_data_files": f"{PLANT}.jsonl",
        "hf_token": f"hf_{PLANT}", "forget_entity": PLANT, "note": f"forget the person {PLANT}",
        "target": f"{PLANT.lower()}.png", "model_name_or_path": PLANT.lower(), "where": f"C:\\{PLANT}",
        "nested": {"gamma": 2, "cache_dir": f"/x/{PLANT}"}, "mixed": ["ok", f"/{PLANT}"], PLANT: 1,
    }
    card = _card(
        settings=settings, model_name=f"/home/{PLANT}/model", base_model=f"/data/{PLANT}/llava",
        mask_summary={"config": {"output_dir": f"/tmp/{PLANT}", "threshold": 0.5},
                      "sparsity": {"total": 0.2, "by_module": {f"/{PLANT}": 0.1, "model.vision_tower": 0.4}}},
        dataset_ids=[f"me/{PLANT}-forget"], include_dataset_ids=False, tags=["llava", f"/tmp/{PLANT}"],
        library_versions={"torch": f"2.0+{PLANT}/local"},
    )
    text = str(card)
    assert PLANT.lower() not in text.lower()
    for kept in ("| `beta` | 0.1 |", "| `alpha` | 1 |", "| `use_mask` | true |", "| `loss_type` | npo |",
                 "| `target_modules` | q_proj, v_proj |", "| `nested.gamma` | 2 |", "| `threshold` | 0.5 |"):
        assert kept in text


def test_safe_settings_keeps_knobs_and_drops_leaky_fields():
    assert safe_settings({
        "beta": 0.1, "steps": 30, "bf16": False, "optim": "adamw_torch", "betas": (0.9, 0.999),
        "output_dir": "out", "forget_dataset": "tofu", "image_dir": "imgs", "run_name": "r", "hub_token": "t",
        "resume_from_checkpoint": None, "label": "Jane Doe", "data": "forget.json", "mode": "a/b", "opt": None,
    }) == {"beta": 0.1, "steps": 30, "bf16": False, "optim": "adamw_torch", "betas": [0.9, 0.999]}
    with pytest.raises(TypeError, match="expects a dict"):
        safe_settings(["beta", 0.1])


def test_training_arguments_reduce_to_safe_settings(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / f"{PLANT}_run"), run_name=f"{PLANT}-run",
                             learning_rate=2e-5, num_train_epochs=3, report_to=[], use_cpu=True)
    safe = safe_settings(args.to_dict())
    assert safe["learning_rate"] == 2e-5 and safe["num_train_epochs"] == 3
    assert safe["lr_scheduler_type"] == "linear"
    assert not any(k in safe for k in ("output_dir", "logging_dir", "run_name", "hub_model_id", "report_to"))
    assert PLANT not in repr(safe) and str(tmp_path) not in repr(safe)


def test_dataset_ids_only_when_opted_in():
    ids = ["me/forget-set", "/data/local/forget", "me/retain-set"]
    assert _card(dataset_ids=ids).data.to_dict().get("datasets") is None
    card = _card(dataset_ids=ids, include_dataset_ids=True)
    assert card.data.datasets == ["me/forget-set", "me/retain-set"]
    assert "/data/local/forget" not in str(card)
    assert "[me/forget-set](https://huggingface.co/datasets/me/forget-set)" in str(card)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="'title'"):
        _card(paper={"id": "2404.05868"})
    with pytest.raises(ValueError, match="method_tag"):
        _card(method_tag="NPO loss!")
    with pytest.raises(TypeError, match="settings must be a dict"):
        _card(settings=None)


def test_card_pushes_to_the_local_hub_and_loads_back(tmp_path):
    card = _card()
    with local_hub(tmp_path) as hub:
        create_repo("local-user/llava-npo")  # ModelCard.push_to_hub commits to an existing repo, as on the Hub
        card.push_to_hub("local-user/llava-npo")
        assert hub.files("local-user/llava-npo")["README.md"].decode() == str(card)
        loaded = ModelCard.load("local-user/llava-npo")
        assert loaded.data.tags == ["hf_unlearn", "unlearning", "npo", "llava"]
