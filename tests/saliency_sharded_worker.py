"""Worker for ``tests/test_saliency_sharded.py``: saliency masks of a tiny LLaVA computed sharded over 2 ranks.

``torchrun --nproc_per_node 2 tests/saliency_sharded_worker.py WORKDIR`` (gloo, CPU). One launch does everything:

1. Builds the seeded tiny LLaVA; keeps plain copies (the single-process model, and one for FSDP2); saves it and loads
   it back under ZeRO-3 (``HfDeepSpeedConfig`` live, so ``from_pretrained`` runs under ``zero.Init``: partitioned).
2. ZeRO-3: the Fisher-ratio mask over the whole model (vision + language groups, preserve sets retain images and
   text-only questions, pooled and every), ``grad_magnitude`` (a top fraction) and ``random``, each sharded (the
   default) and with ``sharded=False`` (every rank holds whole sums: the single-process computation over the same
   gradients); the peak bytes of fp32 sums each rank held; and the plain single-process masks (Fisher, random).
3. The distributed top fraction on crafted scores with many ties (integers, -0.0), against ``top_fraction``.
4. FSDP2 (``fully_shard`` of the decoder layers and the root): the Fisher-ratio mask, sharded and not.
5. The 13B recipe's language-mask phase (``examples/deepspeed/unlearn_llava.py``) in tiny mode under ZeRO-3.
6. Ranks given different rows: the error.

Rank 0 writes ``WORKDIR/results.json`` and the masks' files (``to_files``) under ``WORKDIR/<name>/``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import weakref
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from hf_unlearn import UnlearnDataCollator  # noqa: E402
from hf_unlearn.data.synthetic import (  # noqa: E402
    SyntheticBenchmarkConfig,
    benchmark_corpus,
    build_synthetic_benchmark,
)
from hf_unlearn.saliency import SaliencyMaskConfig, compute_saliency_mask, top_fraction  # noqa: E402
from hf_unlearn.saliency import compute as saliency_compute  # noqa: E402

ZERO3 = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
         "zero_optimization": {"stage": 3, "overlap_comm": False, "stage3_param_persistence_threshold": "auto",
                               "stage3_prefetch_bucket_size": "auto", "stage3_max_live_parameters": 1e9},
         "bf16": {"enabled": False}, "fp16": {"enabled": False}}


class SumsBytes:
    """Peak bytes of the fp32 sums alive on this rank (every tensor ``_accumulate`` returned, while referenced)."""

    def __init__(self):
        self.alive: list[weakref.ref] = []
        self.peak = 0
        original = saliency_compute._accumulate

        def recording(*args, **kwargs):
            sums, num, touched = original(*args, **kwargs)
            known = {id(ref()) for ref in self.alive if ref() is not None}
            self.alive += [weakref.ref(t) for t in sums.values() if id(t) not in known]
            self.alive = [ref for ref in self.alive if ref() is not None]
            self.peak = max(self.peak, sum(ref().numel() * ref().element_size() for ref in self.alive))
            return sums, num, touched

        saliency_compute._accumulate = recording

    def measure(self, fn):
        self.alive, self.peak = [], 0
        result = fn()
        return result, self.peak


def data():
    dsd = build_synthetic_benchmark(SyntheticBenchmarkConfig(
        num_people=6, num_holdout_people=0, forget_ratio=1 / 3, num_general=0, image_size=32))
    return dsd, dsd["forget_vqa"].select(range(6)), {"retain": dsd["retain_vqa"].select(range(8)),
                                                     "text": dsd["retain_qa"].select(range(8))}


def main(workdir: str) -> int:
    import deepspeed
    import deepspeed.ops

    torch.set_num_threads(1)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no 20-70 s JIT build; plain gloo
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    from transformers import AutoModelForImageTextToText, TrainingArguments

    from hf_unlearn.testing import tiny_llava

    dsd, forget, preserve = data()
    example = _example()
    recipe_tiny = example.tiny_model()  # built before any ZeRO-3 load, as the recipe's main() does
    model, processor = tiny_llava(seed=0, corpus=benchmark_corpus(dsd))
    collator = UnlearnDataCollator(processor)
    plain, fsdp_model = model, copy.deepcopy(model)
    init = os.path.join(workdir, "init")
    if rank == 0:
        model.save_pretrained(init)
    dist.barrier()
    # As a training script does: the arguments first, so that from_pretrained partitions while loading (zero.Init).
    args = TrainingArguments(output_dir=workdir, deepspeed=ZERO3, use_cpu=True, report_to="none")  # noqa: F841
    zero3 = AutoModelForImageTextToText.from_pretrained(init)
    assert all(hasattr(p, "ds_id") for p in zero3.parameters()), "not partitioned by zero.Init"

    sums = SumsBytes()
    results: dict = {"world_size": dist.get_world_size(), "timings": {}}
    files: dict[str, dict[str, bytes]] = {}

    def run(name: str, target, config: SaliencyMaskConfig, **kwargs):
        start = time.perf_counter()
        mask, peak = sums.measure(lambda: compute_saliency_mask(
            target, config, forget, preserve, collator, show_progress=False, **kwargs))
        results["timings"][name] = time.perf_counter() - start
        per_rank = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, peak)
        results[name] = {"sums_bytes": per_rank, "covered": mask.num_covered, "selected": mask.num_selected,
                         "fingerprint": mask.fingerprint()}
        files[name] = mask.to_files()
        return mask

    both = SaliencyMaskConfig(target_modules="both", batch_size=4)
    for tag, config in (("fisher", both),
                        ("fisher_every", SaliencyMaskConfig(target_modules="both", batch_size=4,
                                                            preserve_combine="every", max_batches=1)),
                        ("magnitude", SaliencyMaskConfig(target_modules="both", batch_size=4,
                                                         score="grad_magnitude", threshold=0.3)),
                        ("random", SaliencyMaskConfig(target_modules="both", score="random", threshold=0.4,
                                                      seed=3))):
        run(f"zero3_{tag}", zero3, config)
        run(f"zero3_{tag}_unsharded", zero3, config, sharded=False)
        if tag in ("fisher", "random"):
            run(f"plain_{tag}", plain, config)
    # The first entries of each mask in flat order, to see what differs between ZeRO-3 and one plain process.
    results["plain_vs_zero3_fisher_differences"] = sum(
        int((a != b).sum()) for a, b in zip(_masks(files["plain_fisher"]), _masks(files["zero3_fisher"])))

    # Ties: integer-valued scores (and -0.0) over every covered parameter, one rank's part each.
    from hf_unlearn.saliency.sharded import Layout, sharded_top_fraction

    params = dict(zero3.named_parameters())
    names = list(both.resolve_targets(zero3))
    layout = Layout(zero3, {n: params[n] for n in names})
    g = torch.Generator().manual_seed(7)
    full = {n: torch.randint(-3, 4, tuple(params[n].ds_shape), generator=g).float() for n in names}
    full[names[0]].view(-1)[::5] = -0.0
    ties = {}
    for fraction in (0.0, 0.137, 0.5, 0.9999, 1.0):
        expected = top_fraction(full, fraction)
        local = sharded_top_fraction(layout, {n: layout.part(n, full[n]) for n in names}, fraction)
        whole = layout.full_masks(local)
        ties[str(fraction)] = {"equal": all(torch.equal(whole[n], expected[n]) for n in names),
                               "selected": sum(int(m.sum()) for m in whole.values())}
    results["ties"] = ties
    results["covered_entries"] = sum(full[n].numel() for n in names)

    # FSDP2: the decoder layers and the root as units.
    from torch.distributed.fsdp import fully_shard

    for layer in fsdp_model.model.language_model.layers:
        fully_shard(layer)
    fully_shard(fsdp_model)
    run("fsdp2_fisher", fsdp_model, both)
    run("fsdp2_fisher_unsharded", fsdp_model, both, sharded=False)

    # The 13B recipe's language-mask phase (examples/deepspeed/unlearn_llava.py --compute_mask --mask_target language
    # --deepspeed examples/deepspeed/zero3.json) in tiny mode: loaded partitioned, computed across the ranks.
    from hf_unlearn import MMUnlearnerConfig

    script = example.ScriptArguments(tiny=True, mask_target="language", mask_path=os.path.join(workdir, "recipe_mask"),
                                     mask_max_batches=2)
    recipe_args = MMUnlearnerConfig(output_dir=os.path.join(workdir, "recipe"), use_cpu=True, report_to="none",
                                    deepspeed=str(EXAMPLES / "zero3.json"))
    seen = []
    original = saliency_compute.compute_saliency_mask

    def recording(model, *args, **kwargs):
        seen.append(all(hasattr(p, "ds_id") for p in model.parameters()))
        return original(model, *args, **kwargs)

    saliency_compute.compute_saliency_mask = recording  # the example imports it when it runs
    try:
        example.compute_mask(script, recipe_args, recipe_tiny)
    finally:
        saliency_compute.compute_saliency_mask = original
    results["recipe_partitioned"] = seen

    # Different rows on different ranks: refused.
    try:
        compute_saliency_mask(zero3, SaliencyMaskConfig(batch_size=2, max_batches=1),
                              dsd["forget_vqa"].select([rank]), {"retain": preserve["retain"]}, collator,
                              show_progress=False)
        results["different_rows_error"] = None
    except ValueError as error:
        results["different_rows_error"] = str(error)

    if rank == 0:
        for name, contents in files.items():
            folder = os.path.join(workdir, name)
            os.makedirs(folder, exist_ok=True)
            for filename, data_bytes in contents.items():
                with open(os.path.join(folder, filename), "wb") as f:
                    f.write(data_bytes)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    from hf_unlearn.integrations.ranks import end_distributed

    end_distributed()  # every rank past a barrier, then the group torn down before exit
    return 0


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "deepspeed"


def _example():
    """examples/deepspeed/unlearn_llava.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("unlearn_llava", EXAMPLES / "unlearn_llava.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["unlearn_llava"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _masks(files: dict[str, bytes]) -> list[torch.Tensor]:
    import tempfile

    from hf_unlearn.saliency import SaliencyMask

    with tempfile.TemporaryDirectory() as tmp:
        for filename, contents in files.items():
            with open(os.path.join(tmp, filename), "wb") as f:
                f.write(contents)
        mask = SaliencyMask.from_pretrained(tmp)
    return [mask[n] for n in mask]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
