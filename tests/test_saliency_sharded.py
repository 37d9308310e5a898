"""Saliency masks computed sharded over 2 CPU ranks (DeepSpeed ZeRO-3 and FSDP2; ``saliency/sharded.py``): the mask of
the single-process computation, bit for bit, with 1/N of the fp32 sums on each rank. One torchrun launch
(``tests/saliency_sharded_worker.py``) computes everything; the tests read its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "saliency_sharded_worker.py"
FILES = ("saliency_mask.safetensors", "saliency_mask_config.json")


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    pytest.importorskip("deepspeed")
    work = tmp_path_factory.mktemp("sharded_saliency")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(WORKER), str(work)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"the 2-rank launch failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    return work


@pytest.fixture(scope="module")
def results(launched) -> dict:
    return json.loads((launched / "results.json").read_text())


def same_files(work: Path, a: str, b: str) -> bool:
    return all((work / a / f).read_bytes() == (work / b / f).read_bytes() for f in FILES)


@pytest.mark.parametrize("score", ["fisher", "fisher_every", "magnitude", "random"])
def test_zero3_sharded_mask_is_the_single_process_mask_over_the_same_gradients(launched, results, score):
    """Each rank keeps its partition of the sums; the file is byte for byte the one of whole-size sums on one rank."""
    sharded, whole = results[f"zero3_{score}"], results[f"zero3_{score}_unsharded"]
    assert sharded["fingerprint"] == whole["fingerprint"] and sharded["covered"] == 169_792
    assert same_files(launched, f"zero3_{score}", f"zero3_{score}_unsharded")
    assert 0 < sharded["selected"] < sharded["covered"]


@pytest.mark.parametrize("score", ["fisher", "fisher_every", "magnitude"])
def test_each_rank_holds_half_of_the_fp32_sums(results, score):
    sharded, whole = results[f"zero3_{score}"]["sums_bytes"], results[f"zero3_{score}_unsharded"]["sums_bytes"]
    assert whole[0] == whole[1] > 0
    assert sum(sharded) == whole[0]  # the ranks' slices tile every sum exactly once
    assert max(sharded) <= 0.5 * whole[0] + 4 * 64  # half, up to the rounding of each partition (ceil(numel / 2))
    # pooled / every: the forget Fisher and one preserve sum per parameter (2 x 4 bytes); grad_magnitude: one sum
    assert whole[0] == (4 if score == "magnitude" else 8) * results[f"zero3_{score}"]["covered"]


def test_fsdp2_sharded_mask_is_the_plain_single_process_mask(launched, results):
    """FSDP2 averages the ranks' identical gradients (exact on 2 ranks): the mask of one process without FSDP."""
    assert results["fsdp2_fisher"]["fingerprint"] == results["plain_fisher"]["fingerprint"]
    assert same_files(launched, "fsdp2_fisher", "plain_fisher")
    assert same_files(launched, "fsdp2_fisher_unsharded", "plain_fisher")
    assert sum(results["fsdp2_fisher"]["sums_bytes"]) == results["fsdp2_fisher_unsharded"]["sums_bytes"][0]


def test_random_scores_sharded_equal_one_process(launched, results):
    assert same_files(launched, "zero3_random", "plain_random")


def test_zero3_differs_from_a_plain_process_only_by_deepspeeds_rounding(results):
    """ZeRO-3's autograd hooks change the order in which some gradient contributions are summed (~1e-8): entries whose
    ratio is rounding noise around gamma (CLIP's key biases, whose gradient is mathematically 0) may flip."""
    assert results["plain_vs_zero3_fisher_differences"] <= 1e-3 * results["zero3_fisher"]["covered"]


def test_distributed_top_fraction_breaks_ties_like_one_process(results):
    """Integer-valued scores (most entries tied, some -0.0): the same entries as ``top_fraction``, exact counts."""
    covered = results["covered_entries"]
    for fraction, outcome in results["ties"].items():
        assert outcome["equal"], fraction
        assert outcome["selected"] == int(float(fraction) * covered + 0.5)


def test_different_rows_on_different_ranks_are_refused(results):
    assert "on different ranks" in results["different_rows_error"]
    assert "same rows in the same order on every rank" in results["different_rows_error"]


def test_sortable_keys_order_like_floats():
    from hf_unlearn.saliency.sharded import sortable_keys

    values = torch.tensor([-float("inf"), -3.5, -1e-30, -0.0, 0.0, 1e-45, 1e-30, 2.0, 3.5, float("inf")])
    keys = sortable_keys(values)
    assert keys[3] == keys[4]  # -0.0 == 0.0
    assert torch.all(keys[1:] >= keys[:-1]) and len(set(keys.tolist())) == len(values) - 1
    assert int(keys.min()) >= 0 and int(keys.max()) < 2**32


def test_sharded_needs_a_partitioned_model():
    from hf_unlearn.saliency import SaliencyMaskConfig, compute_saliency_mask
    from hf_unlearn.testing import tiny_llava

    model, _ = tiny_llava()
    with pytest.raises(ValueError, match="partitioned by DeepSpeed ZeRO-3 or FSDP2"):
        compute_saliency_mask(model, SaliencyMaskConfig(score="random"), None, None, None, sharded=True)


def test_recipe_language_mask_phase_runs_partitioned(launched, results):
    """examples/deepspeed/unlearn_llava.py --compute_mask --mask_target language --deepspeed zero3.json, tiny mode."""
    from hf_unlearn.saliency import SaliencyMask

    assert results["recipe_partitioned"] == [True]  # loaded under zero.Init, computed sharded
    mask = SaliencyMask.from_pretrained(str(launched / "recipe_mask"))
    assert mask.names() and all(n.startswith(("model.language_model.", "lm_head.")) for n in mask.names())
    assert 0 < mask.num_selected < mask.num_covered
    assert mask.scores_summary["num_batches"] == {"forget": 2, "preserve": {"retain": 2, "text": 2}}
