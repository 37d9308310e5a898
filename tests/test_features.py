"""Feature capture at the three VKD feature sites on LLaVA, Qwen2-VL and Qwen2.5-VL."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_unlearn import UnlearnDataCollator
from hf_unlearn.features import (
    FeatureCapture,
    extract_features,
    feature_module,
    features_per_row,
    image_token_id,
    language_blocks,
    vision_blocks,
)
from hf_unlearn.models import get_language_model
from hf_unlearn.testing import tiny_vlm

ARCHS = ["llava", "qwen2_vl", "qwen2_5_vl"]


# (tokens, dim) for a batch of 2 images at image_size=32 (+ one text-only row): LLaVA 16 patches + CLS per image,
# vision width 32, text width 64; Qwen 64 patches of width 32 per image, merged 4:1 into 16 tokens of width 64.
EXPECTED = {
    "llava": {"vision_layer": (2 * 17, 32), "projector": (2 * 16, 64), "llm_hidden": (2 * 16, 64)},
    "qwen2_vl": {"vision_layer": (2 * 64, 32), "projector": (2 * 16, 64), "llm_hidden": (2 * 16, 64)},
    "qwen2_5_vl": {"vision_layer": (2 * 64, 32), "projector": (2 * 16, 64), "llm_hidden": (2 * 16, 64)},
}


def _rows():
    rng = np.random.default_rng(0)
    img = lambda: Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))  # noqa: E731
    return [
        {"image": img(), "question": "Who is this?", "answer": "Alice Smith"},
        {"image": None, "question": "What is the job of Bob?", "answer": "pilot"},
        {"image": img(), "question": "Who is in the picture?", "answer": "Carol White"},
    ]


@pytest.fixture(scope="module", params=ARCHS)
def arch_batch(request):
    model, processor = tiny_vlm(request.param)
    rows = _rows()
    return request.param, model, processor, rows, UnlearnDataCollator(processor)(rows)


@pytest.mark.parametrize("site", ["vision_layer", "projector", "llm_hidden"])
def test_feature_shapes_and_row_split(arch_batch, site):
    arch, model, processor, rows, batch = arch_batch
    with torch.no_grad():
        feats, outputs = extract_features(model, batch, site, -1)
    assert tuple(feats.shape) == EXPECTED[arch][site]
    assert outputs is None  # not asked for

    # One tensor per row, the text-only row empty; each equals the features of that row alone.
    parts = features_per_row(feats, batch, model)
    per_image = EXPECTED[arch][site][0] // 2
    assert [p.shape[0] for p in parts] == [per_image, 0, per_image]
    collate = UnlearnDataCollator(processor)
    for row, part in zip(rows, parts):
        if row["image"] is None:
            continue
        with torch.no_grad():
            alone, _ = extract_features(model, collate([row]), site, -1)
        torch.testing.assert_close(part, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("site", ["vision_layer", "projector"])
def test_vision_sites_skip_the_language_model(arch_batch, site):
    """The vision-only pass gives the same features as a full forward and never runs the language model."""
    arch, model, _, _, batch = arch_batch
    lm_calls = FeatureCapture(get_language_model(model))
    with torch.no_grad(), lm_calls:
        fast, _ = extract_features(model, batch, site, -1)
    assert lm_calls.calls == 0
    with torch.no_grad():
        full, outputs = extract_features(model, batch, site, -1, need_outputs=True)
    assert outputs.logits.shape[:2] == batch["input_ids"].shape
    torch.testing.assert_close(fast, full)


def test_projector_features_are_what_the_language_model_receives(arch_batch):
    """Hooked projector output == HF get_image_features (up to Qwen2.5-VL's within-image window order)."""
    arch, model, _, _, batch = arch_batch
    with torch.no_grad():
        feats, _ = extract_features(model, batch, "projector", -1)
        kw = {k: batch[k] for k in ("pixel_values", "image_grid_thw") if k in batch}
        ref = model.model.get_image_features(**kw).pooler_output
    ref = torch.cat([r.reshape(-1, r.shape[-1]) for r in ref])
    if arch == "qwen2_5_vl":  # merger output is in window order; compare as sets of rows, per image
        key = lambda t: t[torch.argsort(t[:, 0])]  # noqa: E731
        for a, b in zip(feats.split(16), ref.split(16)):
            torch.testing.assert_close(key(a), key(b))
    else:
        torch.testing.assert_close(feats, ref)


def test_llm_hidden_selects_image_token_positions(arch_batch):
    arch, model, _, _, batch = arch_batch
    with torch.no_grad():
        feats, out = extract_features(model, batch, "llm_hidden", 0, need_outputs=True)
        hidden = model(**batch, output_hidden_states=True).hidden_states[1]  # output of decoder layer 0
    mask = batch["input_ids"] == image_token_id(model)
    assert int(mask.sum()) == 32
    torch.testing.assert_close(feats, hidden[mask])


def test_bad_sites_and_layers_raise(arch_batch):
    _, model, _, _, _ = arch_batch
    with pytest.raises(ValueError, match="Unknown feature site"):
        feature_module(model, "encoder")
    with pytest.raises(ValueError, match="out of range for the 2 vision blocks"):
        feature_module(model, "vision_layer", 2)
    with pytest.raises(ValueError, match="language-model blocks"):
        feature_module(model, "llm_hidden", -3)
    assert feature_module(model, "vision_layer", -1) is vision_blocks(model)[1]
    assert feature_module(model, "llm_hidden", 0) is language_blocks(model)[0]


def test_text_only_batch_has_no_features():
    model, processor = tiny_vlm("llava")
    batch = UnlearnDataCollator(processor)([_rows()[1]])
    with torch.no_grad():
        feats, outputs = extract_features(model, batch, "projector", need_outputs=True)
    assert feats is None and outputs.loss.item() > 0
    assert [p.shape[0] for p in features_per_row(None, batch, model)] == [0]
