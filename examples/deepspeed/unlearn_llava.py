"""MMUnlearner on LLaVA-1.5 (7B / 13B) under any launcher: DeepSpeed ZeRO-2/3, DDP or FSDP2.

Driven by ``launch_llava13b.sh`` (ZeRO-3 on 8 GPUs) and ``examples/accelerate/{ddp,fsdp2,zero2,zero3}.sh``.
Two phases:

1. ``--compute_mask``: the Fisher-ratio saliency mask (MMUnlearner): gradients of forget VQA vs retain VQA (+ retain
   text QA for language parameters). ``--mask_target vision`` (tower + projector) on one GPU: only the covered
   parameters need gradients, so a bf16 13B model fits on one 80 GB GPU. ``--mask_target language`` (the official
   MMUnlearner's language mask) under ``torchrun ... --deepspeed zero3.json``: the model is loaded partitioned and
   every rank keeps the fp32 sums of its own partition (1/N), so the 13B language mask fits where training fits
   (``hf-unlearn estimate-memory``). Saved with ``SaliencyMask.save_pretrained`` (rank 0).
2. Unlearning, e.g. ``torchrun --nproc_per_node 8 ... --deepspeed examples/deepspeed/zero3.json``. The
   ``TrainingArguments`` are parsed *before* the model is loaded, so under ZeRO-3 ``from_pretrained`` partitions the
   weights while loading (``zero.Init``) and no rank ever holds the full 13B model.

Data: MLLMU-Bench (``--benchmark MLLMMU/MLLMU-Bench`` or a local copy; the default), forget split
``--forget_split forget_5``; or any dataset with ``image``, ``question``, ``answer`` columns through
``--forget_dataset`` / ``--retain_dataset`` (``datasets.load_from_disk`` folders; they replace the benchmark).

``--tiny``: the same run on a tiny LLaVA and the built-in synthetic benchmark, on CPU (pass ``--use_cpu``; the launch
scripts do), in seconds: the mask is computed in the same process, no model is downloaded. The test suite runs every
launch script this way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import AutoProcessor, HfArgumentParser, LlavaForConditionalGeneration

from hf_unlearn import MMUnlearnerConfig, MMUnlearnerTrainer, UnlearnDataCollator
from hf_unlearn.integrations.ranks import end_distributed

DEFAULT_BENCHMARK = "MLLMMU/MLLMU-Bench"
# --tiny: 1 forget and 2 retain people of the built-in benchmark (5 forget VQA rows, 10 retain VQA rows).
TINY_BENCHMARK = {"num_people": 3, "num_holdout_people": 0, "forget_ratio": 1 / 3, "num_general": 0}


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="llava-hf/llava-1.5-13b-hf", metadata={"help": "Model to unlearn."})
    benchmark: str | None = field(
        default=None, metadata={"help": f"MLLMU-Bench repo id or local folder (default {DEFAULT_BENCHMARK} unless "
                                        "--forget_dataset / --retain_dataset are given)."})
    forget_split: str = field(default="forget_5", metadata={"help": "MLLMU-Bench forget split."})
    forget_dataset: str | None = field(default=None, metadata={"help": "datasets.load_from_disk folder (forget)."})
    retain_dataset: str | None = field(default=None, metadata={"help": "datasets.load_from_disk folder (retain)."})
    mask_path: str = field(default="saliency-mask", metadata={"help": "Where the saliency mask is saved / loaded."})
    compute_mask: bool = field(default=False, metadata={"help": "Phase 1: compute the mask on one GPU and exit."})
    mask_target: str = field(default="vision", metadata={"help": "Mask coverage: 'vision', 'language' or 'both'."})
    mask_threshold: float = field(default=1.0, metadata={"help": "Fisher-ratio threshold gamma."})
    mask_max_batches: int | None = field(default=None, metadata={"help": "Cap on batches per dataset (mask)."})
    tiny: bool = field(default=False, metadata={"help": "Tiny LLaVA + built-in synthetic benchmark (CPU smoke run)."})

    def __post_init__(self):
        given = [f"--{name}" for name in ("forget_dataset", "retain_dataset") if getattr(self, name)]
        if self.tiny and (self.benchmark or given):
            raise ValueError("--tiny uses the built-in synthetic benchmark; drop --benchmark / " + " / ".join(given))
        if given and self.benchmark:
            raise ValueError(f"Pass --benchmark or {' and '.join(given)}, not both.")
        if given and len(given) == 1:
            raise ValueError("Pass both --forget_dataset and --retain_dataset (or --benchmark).")
        if not (self.tiny or given or self.benchmark):
            self.benchmark = DEFAULT_BENCHMARK


def load_splits(script: ScriptArguments):
    """(forget VQA, retain VQA, retain text QA or None) in the common schema."""
    if script.tiny:
        from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig, build_synthetic_benchmark

        dsd = build_synthetic_benchmark(SyntheticBenchmarkConfig(**TINY_BENCHMARK))
        return dsd["forget_vqa"], dsd["retain_vqa"], dsd["retain_qa"]
    if script.benchmark:
        from hf_unlearn.data.benchmarks import load_mllmu_bench

        dsd = load_mllmu_bench(script.benchmark, script.forget_split)
        return dsd["forget_vqa"], dsd["retain_vqa"], dsd["retain_qa"]
    from datasets import load_from_disk

    return load_from_disk(script.forget_dataset), load_from_disk(script.retain_dataset), None


def tiny_model():
    """The tiny LLaVA, built the same on every rank (seeded), with a tokenizer trained on the benchmark's text."""
    from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig, benchmark_corpus, build_synthetic_benchmark
    from hf_unlearn.testing import tiny_llava

    dsd = build_synthetic_benchmark(SyntheticBenchmarkConfig(**TINY_BENCHMARK))
    return tiny_llava(seed=0, corpus=benchmark_corpus(dsd))


def saliency_mask(script: ScriptArguments, model, processor, forget, retain, retain_text, fisher_device="cpu"):
    from hf_unlearn.saliency.compute import compute_saliency_mask
    from hf_unlearn.saliency.config import SaliencyMaskConfig

    config = SaliencyMaskConfig(target_modules=script.mask_target, score="fisher_ratio",
                                threshold=script.mask_threshold, max_batches=script.mask_max_batches)
    preserve = {"retain": retain, **({"text": retain_text} if retain_text is not None else {})}
    return compute_saliency_mask(model, config, forget, preserve, UnlearnDataCollator(processor),
                                 fisher_device=fisher_device, show_progress=False)


def compute_mask(script: ScriptArguments, args: MMUnlearnerConfig | None = None, tiny=None) -> None:
    """Phase 1. With ``args.deepspeed`` (ZeRO-3, under torchrun): the model loads partitioned and the mask is computed
    across the ranks, every rank running every batch; otherwise on one GPU (or the CPU with ``--tiny``)."""
    forget, retain, retain_text = load_splits(script)
    distributed = args is not None and bool(args.deepspeed)
    if distributed and script.tiny:
        _cpu_launcher_setup(args)
    if script.tiny:
        model, processor = tiny if tiny is not None else tiny_model()
        if distributed:  # as a real run loads it: from a folder, partitioned while loading (zero.Init)
            folder = os.path.join(args.output_dir, "tiny-start")
            if args.process_index == 0:
                model.save_pretrained(folder)
            torch.distributed.barrier()
            model = LlavaForConditionalGeneration.from_pretrained(folder)
    else:
        # One GPU: the whole model on GPU 0. ZeRO-3: the arguments exist, so this load is partitioned (zero.Init).
        model = LlavaForConditionalGeneration.from_pretrained(
            script.model_name_or_path, dtype=torch.bfloat16, **({} if distributed else {"device_map": {"": 0}}))
        model.gradient_checkpointing_enable()
        processor = AutoProcessor.from_pretrained(script.model_name_or_path)
    # One GPU: the fp32 sums in CPU RAM (a 13B vision mask fits the GPU that way). ZeRO-3: 1/N of them per GPU.
    mask = saliency_mask(script, model, processor, forget, retain, retain_text,
                         fisher_device=None if distributed else "cpu")
    if args is None or args.process_index == 0:
        mask.save_pretrained(script.mask_path)
        print(mask)


def _cpu_launcher_setup(args: MMUnlearnerConfig) -> None:
    """CPU runs (--tiny): accelerate's FSDP plugin allowed; DeepSpeed on gloo without its 20-70 s JIT-built shm op."""
    from hf_unlearn.integrations.fsdp import allow_fsdp_on_cpu

    allow_fsdp_on_cpu()  # before the Trainer exists: accelerate enables FSDP on accelerators only
    if args.deepspeed:
        import deepspeed
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="gloo")  # on GPUs the arguments' PartialState does this


def unlearn(script: ScriptArguments, args: MMUnlearnerConfig, tiny=None) -> None:
    from hf_unlearn.saliency.mask import SaliencyMask

    forget, retain, retain_text = load_splits(script)
    if script.tiny:
        if not args.use_cpu:
            raise ValueError("--tiny runs on CPU: add --use_cpu (the launch scripts do).")
        _cpu_launcher_setup(args)
        model, processor = tiny
        # Computed on every rank before the model is distributed: same model, same data, same mask.
        mask = saliency_mask(script, model, processor, forget, retain, retain_text)
    else:
        # After the arguments exist: under ZeRO-3 this load is partitioned across the ranks (zero.Init).
        model = LlavaForConditionalGeneration.from_pretrained(
            script.model_name_or_path, dtype=torch.bfloat16 if args.bf16 else None)
        processor = AutoProcessor.from_pretrained(script.model_name_or_path)
        mask = SaliencyMask.from_pretrained(script.mask_path)
    trainer = MMUnlearnerTrainer(
        model=model, args=args, train_dataset=forget, retain_dataset=retain, processing_class=processor,
        # A plain {name: bool tensor}: its shapes are checked against ZeRO-3's real parameter shapes (ds_shape).
        saliency_mask=dict(mask.masks),
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    final = os.path.join(args.output_dir, "final")
    trainer.save_model(final)  # ZeRO-3: gathered 16-bit weights; FSDP2: the full state dict; rank 0 writes
    if trainer.is_world_process_zero():
        processor.save_pretrained(final)
        mask.save_pretrained(os.path.join(final, "saliency_mask"))
        print(f"launcher: {type(trainer.model_wrapped).__name__}, world size {trainer.args.world_size}, "
              f"steps {trainer.state.global_step}, saved to {final}")
    # No rank exits while another is still in a collective (gloo aborts the early one's pending work).
    trainer.accelerator.wait_for_everyone()


def main() -> None:
    import sys

    # Built before the arguments switch on a ZeRO-3 config, which would partition the model while it is created.
    tiny = tiny_model() if "--tiny" in sys.argv else None
    script, args = HfArgumentParser((ScriptArguments, MMUnlearnerConfig)).parse_args_into_dataclasses()
    if script.compute_mask:
        compute_mask(script, args, tiny)
    else:
        unlearn(script, args, tiny)
    end_distributed()  # under torchrun: the process group torn down before exit, not by the interpreter


if __name__ == "__main__":
    main()
