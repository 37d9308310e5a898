"""MMUnlearner on LLaVA-1.5 (7B / 13B) with DeepSpeed ZeRO-3, driven by ``launch_llava13b.sh``.

Two phases:

1. ``--compute_mask``: one process, one GPU. Fisher-ratio saliency mask over the vision tower and projector
   (MMUnlearner): gradients of forget VQA vs retain VQA (+ retain text QA for language parameters). Only the covered
   parameters need gradients, so a bf16 13B model fits on one 80 GB GPU. Saved with ``SaliencyMask.save_pretrained``.
2. Unlearning: ``torchrun --nproc_per_node 8 ... --deepspeed examples/deepspeed/zero3.json``. The
   ``TrainingArguments`` are parsed *before* the model is loaded, so under ZeRO-3 ``from_pretrained`` partitions the
   weights while loading (``zero.Init``) and no rank ever holds the full 13B model.

Data: MLLMU-Bench (``--benchmark MLLMMU/MLLMU-Bench`` or a local copy), forget split ``--forget_split forget_5``.
Any dataset with ``image``, ``question``, ``answer`` columns works through ``--forget_dataset`` / ``--retain_dataset``
(``datasets.load_from_disk`` folders).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import AutoProcessor, HfArgumentParser, LlavaForConditionalGeneration

from hf_unlearn import MMUnlearnerConfig, MMUnlearnerTrainer, UnlearnDataCollator


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="llava-hf/llava-1.5-13b-hf", metadata={"help": "Model to unlearn."})
    benchmark: str | None = field(
        default="MLLMMU/MLLMU-Bench", metadata={"help": "MLLMU-Bench repo id or local folder (None: use the "
                                                        "--forget_dataset / --retain_dataset folders)."})
    forget_split: str = field(default="forget_5", metadata={"help": "MLLMU-Bench forget split."})
    forget_dataset: str | None = field(default=None, metadata={"help": "datasets.load_from_disk folder (forget)."})
    retain_dataset: str | None = field(default=None, metadata={"help": "datasets.load_from_disk folder (retain)."})
    mask_path: str = field(default="saliency-mask", metadata={"help": "Where the saliency mask is saved / loaded."})
    compute_mask: bool = field(default=False, metadata={"help": "Phase 1: compute the mask on one GPU and exit."})
    mask_target: str = field(default="vision", metadata={"help": "Mask coverage: 'vision', 'language' or 'both'."})
    mask_threshold: float = field(default=1.0, metadata={"help": "Fisher-ratio threshold gamma."})
    mask_max_batches: int | None = field(default=None, metadata={"help": "Cap on batches per dataset (mask)."})


def load_splits(script: ScriptArguments):
    """(forget VQA, retain VQA, retain text QA or None) in the common schema."""
    if script.benchmark:
        from hf_unlearn.data.benchmarks import load_mllmu_bench

        dsd = load_mllmu_bench(script.benchmark, script.forget_split)
        return dsd["forget_vqa"], dsd["retain_vqa"], dsd["retain_qa"]
    if not (script.forget_dataset and script.retain_dataset):
        raise ValueError("Pass --benchmark, or both --forget_dataset and --retain_dataset.")
    from datasets import load_from_disk

    return load_from_disk(script.forget_dataset), load_from_disk(script.retain_dataset), None


def compute_mask(script: ScriptArguments) -> None:
    from hf_unlearn.saliency.compute import compute_saliency_mask
    from hf_unlearn.saliency.config import SaliencyMaskConfig

    forget, retain, retain_text = load_splits(script)
    model = LlavaForConditionalGeneration.from_pretrained(
        script.model_name_or_path, dtype=torch.bfloat16, device_map={"": 0})
    model.gradient_checkpointing_enable()
    processor = AutoProcessor.from_pretrained(script.model_name_or_path)
    config = SaliencyMaskConfig(target_modules=script.mask_target, score="fisher_ratio",
                                threshold=script.mask_threshold, max_batches=script.mask_max_batches)
    preserve = {"retain": retain, **({"text": retain_text} if retain_text is not None else {})}
    mask = compute_saliency_mask(model, config, forget, preserve, UnlearnDataCollator(processor),
                                 fisher_device="cpu")
    mask.save_pretrained(script.mask_path)
    print(mask)


def unlearn(script: ScriptArguments, args: MMUnlearnerConfig) -> None:
    from hf_unlearn.saliency.mask import SaliencyMask

    forget, retain, _ = load_splits(script)
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
    trainer.save_model(os.path.join(args.output_dir, "final"))  # ZeRO-3: gathered 16-bit weights, rank 0 writes
    if trainer.is_world_process_zero():
        processor.save_pretrained(os.path.join(args.output_dir, "final"))
        mask.save_pretrained(os.path.join(args.output_dir, "final", "saliency_mask"))


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, MMUnlearnerConfig)).parse_args_into_dataclasses()
    if script.compute_mask:
        compute_mask(script)
    else:
        unlearn(script, args)


if __name__ == "__main__":
    main()
