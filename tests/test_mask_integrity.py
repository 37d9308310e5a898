"""Mask files are checked when read (issue 12, cases 6 and 9, and case 12's non-JSON mask config)."""

import json
import os
import warnings

import numpy as np
import pytest
import torch

from hf_unlearn import GAConfig, GATrainer, MaskFileError, SaliencyMask, SaliencyMaskConfig, compute_saliency_mask
from hf_unlearn.cli import main as cli_main
from hf_unlearn.saliency import CONFIG_NAME, MASK_NAME
from hf_unlearn.testing import tiny_llava

from conftest import load_llava

FIX = "Re-download the mask .* or recompute it with compute_saliency_mask"


@pytest.fixture(scope="module")
def saved_mask(tmp_path_factory):
    """A computed (random-score) vision mask of the 2-layer tiny LLaVA, saved; returns (folder, mask)."""
    model = tiny_llava()[0]
    mask = compute_saliency_mask(model, SaliencyMaskConfig(score="random", threshold=0.3), None, None, None,
                                 show_progress=False)
    folder = tmp_path_factory.mktemp("mask") / "m"
    mask.save_pretrained(folder)
    return folder, mask


def copy_of(folder, tmp_path):
    dst = tmp_path / "copy"
    dst.mkdir()
    for name in os.listdir(folder):
        (dst / name).write_bytes((folder / name).read_bytes())
    return dst


def test_saved_bytes_are_deterministic_and_about_one_bit_per_entry(saved_mask, tmp_path):
    folder, mask = saved_mask
    mask.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / MASK_NAME).read_bytes() == (folder / MASK_NAME).read_bytes()
    assert (tmp_path / "again" / CONFIG_NAME).read_bytes() == (folder / CONFIG_NAME).read_bytes()
    size = os.path.getsize(folder / MASK_NAME)
    # 1 bit per entry (rounded up per tensor) + the tensor headers + a fixed part (checksums, architecture record)
    assert mask.architecture["groups"]["vision"] == {"parameters": 39, "uncovered": {}}
    assert size <= sum((t.numel() + 7) // 8 for t in mask.masks.values()) + 200 * len(mask) + 1024, size
    loaded = SaliencyMask.from_pretrained(folder)
    assert loaded.fingerprint() == mask.fingerprint() and loaded.architecture == mask.architecture


def test_flipped_bytes_in_the_data_fail_the_checksum(saved_mask, tmp_path):
    folder = copy_of(saved_mask[0], tmp_path)
    data = bytearray((folder / MASK_NAME).read_bytes())
    data[-100] ^= 0xFF  # inside the packed bits: still a valid safetensors file, another mask
    (folder / MASK_NAME).write_bytes(bytes(data))
    with pytest.raises(MaskFileError, match=rf"{folder / MASK_NAME}: does not match its checksum.*{FIX}"):
        SaliencyMask.from_pretrained(folder)


def test_truncated_file_is_a_mask_file_error_naming_the_file(saved_mask, tmp_path):
    folder = copy_of(saved_mask[0], tmp_path)
    data = (folder / MASK_NAME).read_bytes()
    (folder / MASK_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(MaskFileError, match=rf"{folder / MASK_NAME}: cannot be read .*truncated or damaged.*{FIX}"):
        SaliencyMask.from_pretrained(folder)


def test_non_json_config_and_newer_version_and_foreign_config(saved_mask, tmp_path):
    folder = copy_of(saved_mask[0], tmp_path)
    original = (folder / CONFIG_NAME).read_text()
    (folder / CONFIG_NAME).write_text(original[:20])
    with pytest.raises(MaskFileError, match=rf"{folder / CONFIG_NAME}: is not valid JSON"):
        SaliencyMask.from_pretrained(folder)
    with pytest.raises(MaskFileError, match=rf"{folder / CONFIG_NAME}: is not valid JSON"):
        SaliencyMaskConfig.from_pretrained(folder)
    newer = {**json.loads(original), "hf_unlearn_version": "99.0.0"}
    (folder / CONFIG_NAME).write_text(json.dumps(newer))
    with pytest.raises(MaskFileError, match=r"written by hf_unlearn 99.0.0, newer than this .*Upgrade hf_unlearn to "
                                            r">= 99.0"):
        SaliencyMaskConfig.from_pretrained(folder)
    other = SaliencyMaskConfig(score="random", threshold=0.9)  # valid, but not the config this mask was made with
    other.save_pretrained(folder)
    with pytest.raises(MaskFileError, match=rf"{folder / CONFIG_NAME}: does not belong to the mask next to it"):
        SaliencyMask.from_pretrained(folder)


def test_old_mask_without_checksum_loads_with_a_warning(tmp_path):
    from safetensors.numpy import save_file

    bits = np.packbits(np.array([1, 0, 1, 1, 0, 0, 0, 1, 1], dtype=bool), bitorder="little")
    meta = {"format": "hf_unlearn.saliency_mask", "format_version": "1", "bit_order": "little",
            "shapes": json.dumps({"w": [9]}), "scores_summary": "null"}  # what hf_unlearn 0.1.0 wrote
    save_file({"w": bits}, str(tmp_path / MASK_NAME), metadata=meta)
    with pytest.warns(UserWarning, match="has no checksum"):
        mask = SaliencyMask.from_pretrained(tmp_path)
    assert mask["w"].tolist() == [True, False, True, True, False, False, False, True, True]


def test_save_model_over_a_damaged_mask_and_push_of_one(memorised_llava, toy_data, tmp_path, capsys):
    model, processor = load_llava(memorised_llava)
    mask = compute_saliency_mask(model, SaliencyMaskConfig(score="random"), None, None, None, show_progress=False)
    out = tmp_path / "run"
    trainer = GATrainer(model=model, args=GAConfig(output_dir=str(out), use_cpu=True, report_to="none"),
                        train_dataset=toy_data["forget"], processing_class=processor, saliency_mask=mask)
    trainer.save_model()
    damaged = out / "saliency_mask" / MASK_NAME
    damaged.write_bytes(damaged.read_bytes()[:-64])
    # hf-unlearn push: one error line naming the file and the fix, no traceback, nothing pushed.
    capsys.readouterr()
    assert cli_main(["push", str(out), "someone/model"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hf-unlearn push: error: {damaged}: cannot be read")
    assert "recompute it with compute_saliency_mask" in err[0]
    # save_model writes a whole new mask (it never reads the damaged one) and a matching card.
    trainer.save_model()
    assert SaliencyMask.from_pretrained(out / "saliency_mask").fingerprint() == mask.fingerprint()


def test_mask_of_a_two_layer_vision_tower_refuses_a_three_layer_one(saved_mask, toy_data):
    folder, _ = saved_mask
    mask = SaliencyMask.from_pretrained(folder)
    three, processor = tiny_llava(vision_layers=3)
    expected = (r"(?s)made for another architecture.*vision: the model has 16 parameter\(s\) the mask was not made "
                r"for \(39 in this group when it was computed, 55 now\), e.g. \['model.vision_tower.encoder.layers.2.")
    with pytest.raises(ValueError, match=expected):
        GATrainer(model=three, args=GAConfig(output_dir="unused", use_cpu=True, report_to="none"),
                  train_dataset=toy_data["forget"], processing_class=processor, saliency_mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask.validate(tiny_llava()[0])  # the model it was made for still fits
    text_only = SaliencyMask(dict(mask.masks))  # without the record (a hand-built mask): the old behaviour
    text_only.validate(three)
    assert torch.equal(text_only["model.multi_modal_projector.linear_1.weight"],
                       mask["model.multi_modal_projector.linear_1.weight"])
