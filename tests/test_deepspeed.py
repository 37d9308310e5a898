"""DeepSpeed ZeRO-2 / ZeRO-3 with 2 processes on CPU: every trainer matches a single-process run.

Three launches of ``tests/deepspeed_worker.py`` (each runs every method in sequence and writes results to disk):
a single-process, non-DeepSpeed reference; ``torchrun --nproc_per_node 2`` under ZeRO-2; the same under ZeRO-3 (which
also resumes one run from its step-3 checkpoint). This process then checks the numbers and reloads every saved model.

Measured on this machine (fp32, lr 1e-3, 3 steps, grad clipping 1.0): step losses within 1e-6 of the reference,
final parameters within 6e-6 (summation order of the gradient all-reduce); masked entries, frozen parameters,
resumed-vs-straight weights, reloaded weights and reloaded logits: bit-identical.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "deepspeed_worker.py"
STAGES = (2, 3)
LOSS_TOL = 1e-5  # measured <= 1e-6
PARAM_TOL = 5e-5  # measured <= 6e-6
# Known failures of trainers owned by other modules, tracked strictly (an unexpected pass fails the test).
def _worker_methods() -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import deepspeed_worker

        return list(deepspeed_worker.methods())
    finally:
        sys.path.remove(str(ROOT / "tests"))


METHODS = _worker_methods()
MASKED = ("masked_all", "masked_forget", "mmunlearner", "vkd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cmd: list[str], what: str) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        pytest.fail(f"{what} failed with exit code {proc.returncode}:\n{tail}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("deepspeed")
    _launch([sys.executable, str(WORKER), "reference", str(work)], "single-process reference")
    for stage in STAGES:
        _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                 str(_free_port()), str(WORKER), "ds", str(work), "--stage", str(stage)], f"ZeRO-{stage} torchrun")
    return work


@lru_cache(maxsize=None)
def _results(work: Path, tag: str) -> dict:
    return json.loads((work / tag / "results.json").read_text())


def _run(work: Path, stage: int | None, method: str) -> tuple[dict, dict[str, torch.Tensor]]:
    tag = f"zero{stage}" if stage else "reference"
    result = _results(work, tag)[method]
    if "error" in result:
        pytest.fail(f"{method} under {tag} raised: {result['error']}")
    return result, load_file(str(work / tag / method / "fp32.safetensors"))


def _masks(work: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The worker's seeded mask, rebuilt from the starting weights' shapes."""
    init = load_file(str(work / "init" / "named_params.safetensors"))
    g = torch.Generator().manual_seed(1234)
    return {n: torch.rand(tuple(init[n].shape), generator=g) < 0.5 for n in sorted(names)}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("stage", STAGES)
def test_matches_single_process_run(workdir, stage, method):
    ds, ds_params = _run(workdir, stage, method)
    ref, ref_params = _run(workdir, None, method)
    assert ds["global_step"] == ref["global_step"] > 0
    assert len(ds["losses"]) == len(ref["losses"]) == ds["global_step"]
    loss_diff = (torch.tensor(ds["losses"]) - torch.tensor(ref["losses"])).abs().max().item()
    assert loss_diff <= LOSS_TOL, (ds["losses"], ref["losses"])
    param_diff = max((ds_params[n] - ref_params[n]).abs().max().item() for n in ref_params)
    assert param_diff <= PARAM_TOL
    init = load_file(str(workdir / "init" / "named_params.safetensors"))
    assert any(not torch.equal(ds_params[n], init[n]) for n in init)  # training moved something


@pytest.mark.parametrize("method", [m for m in METHODS if m in MASKED])
@pytest.mark.parametrize("stage", STAGES)
def test_masks_are_exact_on_fp32_master_weights(workdir, stage, method):
    ds, params = _run(workdir, stage, method)
    init = load_file(str(workdir / "init" / "named_params.safetensors"))
    masks = _masks(workdir, ds["mask_names"])
    assert masks, "the masked run had no mask"
    # Parameters outside the mask are frozen (freeze_unmasked_parameters): bit-identical.
    frozen = [n for n in init if n not in masks]
    assert frozen and all(torch.equal(params[n], init[n]) for n in frozen)
    moved_allowed = sum(int((params[n][m] != init[n][m]).sum()) for n, m in masks.items())
    assert moved_allowed > 0
    if method == "masked_all":  # every gradient masked, weight_decay=0.1: masked entries never move
        leaked = sum(int((params[n][~m] != init[n][~m]).sum()) for n, m in masks.items())
        assert leaked == 0
    if stage == 3 and method == "masked_all":  # the restore path for gathered (persistent) parameters ran
        assert ds["persistent_masked"] > 0


def test_zero3_ranks_hold_only_their_shard_of_masks_and_saved_values(workdir):
    """Per-rank bytes of masks and of saved master values (``masked_all``: weight decay, so values are saved).

    Single process: a bool per covered entry, and a full copy of each decayed partially masked tensor. ZeRO-3 with
    N = 2 ranks: each rank holds 1 bit per entry of its own partition (ceil(numel / N) entries per parameter), and 4
    bytes per *masked* entry of its own partition (every parameter: DeepSpeed's flat groups do not tell which are
    decayed): about 1/(8N) of the single-process mask bytes, and the masked entries split between the ranks."""
    ranks = 2
    ref, _ = _run(workdir, None, "masked_all")
    ds, _ = _run(workdir, 3, "masked_all")
    masks = _masks(workdir, ds["mask_names"])
    partial = {n: m for n, m in masks.items() if not bool(m.all())}
    assert ref["mask_bytes"] == [sum(m.numel() for m in masks.values())]  # bool, full shape
    # Whole fp32 tensors, of the parameters weight decay moves (the Trainer exempts biases and norms; nothing else
    # moves a masked entry while the optimizer state has only seen masked gradients).
    from transformers import AutoModelForImageTextToText, Trainer

    decayed = set(Trainer.get_decay_parameter_names(None, AutoModelForImageTextToText.from_pretrained(
        workdir / "init")))
    assert ref["snapshot_bytes"] == [4 * sum(m.numel() for n, m in partial.items() if n in decayed)]
    assert 0 < len(decayed & set(partial)) < len(partial)
    size = {n: -(-m.numel() // ranks) for n, m in partial.items()}  # ZeRO-3 partition length (padded)
    assert ds["mask_bytes"] == [sum(-(-size[n] // 8) for n in partial)] * ranks
    assert max(ds["mask_bytes"]) <= ref["mask_bytes"][0] / (8 * ranks) + len(partial)  # + padding to whole bytes
    masked_per_rank = [sum(int((~m.reshape(-1)[r * size[n]:(r + 1) * size[n]]).sum()) for n, m in partial.items())
                       for r in range(ranks)]
    assert ds["snapshot_bytes"] == [4 * k for k in masked_per_rank]
    assert sum(ds["snapshot_bytes"]) == 4 * sum(int((~m).sum()) for m in partial.values())
    assert max(ds["snapshot_bytes"]) < 0.55 * 4 * sum(m.numel() for m in partial.values()) / ranks  # 50% masked
    zero2, _ = _run(workdir, 2, "masked_all")  # ZeRO-2: full-shape masks (the hooks see full gradients)
    assert zero2["mask_bytes"] == ref["mask_bytes"] * ranks


@pytest.mark.parametrize("stage", STAGES)
def test_resume_continues_bit_for_bit(workdir, stage):
    results = _results(workdir, f"zero{stage}")
    straight, resumed = results["masked_forget"], results["masked_forget_resumed"]
    assert straight["global_step"] == resumed["global_step"] == 6
    assert straight["losses"] == resumed["losses"]
    a = load_file(str(workdir / f"zero{stage}" / "masked_forget" / "fp32.safetensors"))
    b = load_file(str(workdir / f"zero{stage}" / "masked_forget_resumed" / "fp32.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("stage", STAGES)
def test_saved_model_reloads_in_a_new_process(workdir, stage, method):
    from transformers import AutoModelForImageTextToText

    _, params = _run(workdir, stage, method)
    run = workdir / f"zero{stage}" / method
    model = AutoModelForImageTextToText.from_pretrained(run / "model").eval()
    assert all(torch.equal(p.detach(), params[n]) for n, p in model.named_parameters())
    saved = load_file(str(run / "logits.safetensors"))
    inputs = {k: v for k, v in saved.items() if k != "logits"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker's setting: same kernels, same bits
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(logits, saved["logits"])


@pytest.mark.parametrize("stage", STAGES)
def test_full_grad_after_engine_backward_is_the_full_gradient(workdir, stage):
    """``full_grad`` (saliency scores under ZeRO) equals the plain gradient of the same batch on the saved model."""
    from transformers import AutoModelForImageTextToText

    run = workdir / f"zero{stage}" / "ga_diff"
    full = load_file(str(run / "full_grad.safetensors"))
    saved = load_file(str(run / "logits.safetensors"))
    model = AutoModelForImageTextToText.from_pretrained(run / "model").eval()
    model(**{k: v for k, v in saved.items() if k != "logits"}).loss.backward()
    assert full.keys() == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        expected = p.grad if p.grad is not None else torch.zeros_like(p)  # unused post_layernorm: no grad
        assert full[name].shape == p.shape
        torch.testing.assert_close(full[name], expected, rtol=1e-5, atol=1e-6)  # measured <= 9e-8
    assert sum(float(g.abs().sum()) for g in full.values()) > 0


def test_a_mask_that_differs_between_ranks_is_refused(workdir):
    error = _results(workdir, "zero2")["mask_differs_per_rank"]["error"]
    assert error is not None and "The saliency mask differs between ranks" in error
    assert "same seed" in error
