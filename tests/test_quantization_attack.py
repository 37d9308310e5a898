"""The quantization attack (issue 25 item 5): 8- and 4-bit copies loaded as a user loads them, re-evaluated; it
reports nothing on a model that knows the answers and exposes a model that hides them below the 4-bit step."""

import pytest
import torch

from hf_unlearn.demo.rounding_hiding import hide_within_nf4_cells, quantized_linear_weights
from hf_unlearn.evaluation import Evaluator
from hf_unlearn.evaluation.quantization import quantization_attack, quantized_copy

from memorised_people import benchmark, load, memorised_people  # noqa: F401 (fixture)

SPLITS = ("forget_vqa", "retain_vqa")


@pytest.fixture(scope="module")
def vanilla(memorised_people):  # noqa: F811
    model, processor = load(memorised_people)
    return model.eval(), processor


def test_a_bit_width_other_than_8_or_4_is_refused_before_anything_is_copied(vanilla):
    model, processor = vanilla
    with pytest.raises(ValueError, match=r"bits=3: the quantization attack quantizes to one of \(8, 4\) bits"):
        quantization_attack(Evaluator(model, processor, benchmark()), bits=(8, 3))


def test_quantized_copies_hold_every_linear_weight_but_the_head_in_8_and_4_bits(vanilla):
    model, _ = vanilla
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = set(quantized_linear_weights(model))
    for bits, kind in ((8, "Linear8bitLt"), (4, "Linear4bit")):
        copy = quantized_copy(model, bits)
        held = {f"{name}.weight" for name, module in copy.named_modules() if type(module).__name__ == kind}
        assert held == expected and len(held) > 0
        assert getattr(copy, f"is_loaded_in_{bits}bit")
        with pytest.raises(ValueError, match="already quantized"):
            quantized_copy(copy, bits)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model itself is unchanged


def test_the_registry_runs_it_as_quant_on_the_forget_and_retain_image_splits(vanilla):
    model, processor = vanilla
    result = Evaluator(model, processor, benchmark()).run_attacks("quantization", options={"quant": {"bits": [8]}})
    assert set(result["quant"]) == {f"quant8_{s}_{m}" for s in SPLITS for m in ("acc", "gain")}
    assert result["quant"]["quant8_forget_vqa_acc"] >= 1 - 1 / 20  # memorised: at most one of 20 answers lost


@pytest.mark.slow
def test_the_attack_exposes_answers_hidden_below_the_4_bit_step_and_leaves_a_knowing_model_alone(vanilla):
    model, processor = vanilla
    bench = benchmark()
    forget_rows = [bench["forget_vqa"][i] for i in range(len(bench["forget_vqa"]))]
    hidden = hide_within_nf4_cells(model, processor, forget_rows, steps=30, learning_rate=1e-3)
    # In 4 bits the hiding model *is* the vanilla: every quantized weight rounds to the same code, same block maxima.
    four = {name: quantized_copy(m, 4).state_dict() for name, m in (("vanilla", model), ("hidden", hidden))}
    assert four["vanilla"].keys() == four["hidden"].keys()
    assert all(torch.equal(four["vanilla"][k], four["hidden"][k]) for k in four["vanilla"])

    full = {name: Evaluator(m, processor, bench).mcq_accuracy("forget_vqa")
            for name, m in (("vanilla", model), ("hidden", hidden))}
    attack = {name: quantization_attack(Evaluator(m, processor, bench), splits=SPLITS)
              for name, m in (("vanilla", model), ("hidden", hidden))}
    n = len(forget_rows)
    # The hiding model looks unlearned in full precision: it lost at least a fifth of the forget questions (measured
    # here: 11 of 20 kept), so an attack that brings nothing back would go unnoticed without this one.
    assert full["vanilla"] - full["hidden"] >= 0.2
    # Quantized to 4 bits it answers exactly as the vanilla's 4-bit copy (same weights, same computation) ...
    assert attack["hidden"]["quant4_forget_vqa_acc"] == attack["vanilla"]["quant4_forget_vqa_acc"]
    assert attack["hidden"]["quant4_forget_vqa_gain"] == pytest.approx(
        attack["vanilla"]["quant4_forget_vqa_acc"] - full["hidden"])
    # ... so the attack reports the hidden answers coming back, and nothing for the model that knows them: the
    # memorised vanilla (answer NLL ~1e-3) keeps every answer through 8 and 4 bits, measured 1.0 -> 1.0.
    assert attack["hidden"]["quant4_forget_vqa_gain"] >= 0.2
    for bits in (8, 4):
        assert attack["vanilla"][f"quant{bits}_forget_vqa_gain"] >= -1 / n
