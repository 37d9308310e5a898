"""Worker for ``tests/test_deepspeed.py``: trains every method on a tiny LLaVA, with or without DeepSpeed.

Modes (one process tree each, several methods in sequence, results in ``WORKDIR/<tag>/``):

* ``python tests/deepspeed_worker.py reference WORKDIR``: writes the starting model (``WORKDIR/init``), then one
  single-process, non-DeepSpeed run per method (gradient accumulation replaces the second rank: same global batch).
* ``torchrun --nproc_per_node 2 tests/deepspeed_worker.py ds WORKDIR --stage {2,3}``: the same methods under ZeRO-2/3
  with 2 ranks; plus, for the resume method, a second run resumed from its step-3 checkpoint.

Per method: ``losses`` (the Trainer's logged step losses) in ``results.json``; ``fp32.safetensors`` (full fp32
master weights gathered from every rank); ``logits.safetensors`` (trained model on a probe batch); ``model/`` (
``save_model``). Under ZeRO-3 the policy and the NPO reference are loaded with ``from_pretrained`` after the
``TrainingArguments`` exist, i.e. partitioned while loading (``zero.Init``), as a 13B run would.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from hf_unlearn.config import GAConfig, NPOConfig  # noqa: E402
from hf_unlearn.data.synthetic import (  # noqa: E402
    SyntheticBenchmarkConfig,
    benchmark_corpus,
    build_synthetic_benchmark,
)
from hf_unlearn.trainers import GATrainer, NPOTrainer  # noqa: E402

LR = 1e-3
MAX_STEPS = 3
RESUME_METHOD, RESUME_STEPS = "masked_forget", 6
FULL_GRAD_METHOD = "ga_diff"


def zero_config(stage: int) -> dict:
    """The HF-style config of examples/deepspeed/zero{2,3}.json, fp32 (CPU)."""
    zero = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True, "reduce_bucket_size": "auto",
                     "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto"})
    return {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto", "zero_optimization": zero,
            "bf16": {"enabled": False}, "fp16": {"enabled": False}}


@functools.lru_cache(maxsize=1)
def data():
    dsd = build_synthetic_benchmark(SyntheticBenchmarkConfig(
        num_people=6, num_holdout_people=0, forget_ratio=1 / 3, num_general=0, image_size=32))
    return dsd, dsd["forget_vqa"].select(range(8)), dsd["retain_vqa"].select(range(12))


def write_init(workdir: str) -> None:
    from hf_unlearn.testing.models import tiny_llava

    dsd, _, _ = data()
    model, processor = tiny_llava(seed=0, corpus=benchmark_corpus(dsd))
    path = os.path.join(workdir, "init")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    # Starting weights by parameter name (checkpoint keys may use the legacy LLaVA layout).
    save_file({n: p.detach().clone().contiguous() for n, p in model.named_parameters()},
              os.path.join(path, "named_params.safetensors"))


def vision_mask(model, seed: int = 1234) -> dict[str, torch.Tensor]:
    """A seeded random mask over the vision tower and projector (same on every rank and in every process)."""
    from hf_unlearn.integrations.deepspeed import param_shape
    from hf_unlearn.models import vision_parameter_names

    shapes = {n: param_shape(p) for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(tuple(shapes[n]), generator=g) < 0.5 for n in sorted(vision_parameter_names(model))}


def optional_methods() -> dict:
    """Trainers of other modules (MMUnlearner, VKD), included when they exist."""
    found = {}
    try:
        from hf_unlearn.config import MMUnlearnerConfig
        from hf_unlearn.trainers.mmunlearner import MMUnlearnerTrainer

        found["mmunlearner"] = (MMUnlearnerTrainer, MMUnlearnerConfig, {"schedule": "alternate", "forget_every": 2},
                                {"mask": True})
    except ImportError:
        pass
    try:
        from hf_unlearn.config import VKDConfig
        from hf_unlearn.trainers.vkd import VKDTrainer

        # Under ZeRO-3 the teacher must be loaded partitioned: pass its path. At the default 10x vision learning rate
        # the losses grow so fast that ZeRO-3's reduction order alone moves them by more than LOSS_TOL; the scaled
        # optimizer groups are covered under DeepSpeed by MMUnlearner (masked_lr_scale).
        found["vkd"] = (VKDTrainer, VKDConfig, {"vision_lr_scale": 1.0}, {"reference": True, "mask": True})
    except ImportError:
        pass
    return found


def methods() -> dict:
    """name -> (trainer class, config class, extra config, options)."""
    table = {
        "ga_diff": (GATrainer, GAConfig, {"retain_loss_type": "nll"}, {}),
        "npo": (NPOTrainer, NPOConfig, {"retain_loss_type": "nll", "beta": 0.4}, {"reference": True}),
        "npo_precompute": (NPOTrainer, NPOConfig, {"retain_loss_type": "nll", "beta": 0.4,
                                                   "precompute_ref_log_probs": True}, {}),
        "masked_all": (GATrainer, GAConfig, {"retain_loss_type": "nll", "mask_scope": "all", "weight_decay": 0.1},
                       {"mask": True}),
        # Two backward passes per step (masked forget, unmasked retain) and gradient accumulation on top.
        "masked_forget": (GATrainer, GAConfig, {"retain_loss_type": "nll", "mask_scope": "forget",
                                                "weight_decay": 0.1}, {"mask": True, "micro_batch": 1}),
    }
    table.update(optional_methods())
    return table


def run_method(name: str, spec, workdir: str, tag: str, stage: int | None, ranks: int, resume: str | None = None):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    trainer_cls, config_cls, extra, options = spec
    init = os.path.join(workdir, "init")
    micro = options.get("micro_batch", 2)
    accumulation = (4 // micro) // ranks  # global batch of 4 forget rows per step in every run
    steps = RESUME_STEPS if name == RESUME_METHOD else MAX_STEPS
    out = os.path.join(workdir, tag, name if resume is None else name + "_resumed")
    args = config_cls(
        output_dir=out, per_device_train_batch_size=micro, per_device_eval_batch_size=2,
        gradient_accumulation_steps=accumulation, max_steps=steps, learning_rate=LR, logging_steps=1,
        save_strategy="steps" if name == RESUME_METHOD else "no", save_steps=3, seed=0, report_to="none",
        use_cpu=True, deepspeed=zero_config(stage) if stage else None, disable_tqdm=True, **extra,
    )
    if stage:
        import deepspeed

        # On GPUs the arguments' PartialState initialises deepspeed.comm; on CPU (use_cpu) only torch.distributed
        # is up, and zero.Init would see a world size of 1.
        deepspeed.init_distributed(dist_backend="gloo")
    # Loaded after the arguments: under ZeRO-3 this is a zero.Init (partitioned) load.
    model = AutoModelForImageTextToText.from_pretrained(init)
    processor = AutoProcessor.from_pretrained(init)
    _, forget, retain = data()
    kwargs = {}
    if options.get("mask"):
        # "mask_differs_per_rank": a user bug (unseeded mask) that must be caught, not train silently apart.
        seed = 1234 + int(os.environ.get("RANK", "0")) if options.get("mask_differs_per_rank") else 1234
        kwargs["saliency_mask"] = vision_mask(model, seed)
    if options.get("reference") and stage == 3:
        kwargs["ref_model"] = init  # a deep copy of a partitioned model is not a model
    trainer = trainer_cls(model=model, args=args, train_dataset=forget, retain_dataset=retain,
                          processing_class=processor, **kwargs)
    trainer.train(resume_from_checkpoint=resume)

    if stage:
        from hf_unlearn.integrations.deepspeed import gather_full_fp32_params

        fp32 = gather_full_fp32_params(trainer.model)
    else:
        fp32 = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
    trainer.model.eval()
    probe = trainer._prepare_inputs(trainer.data_collator.collator([forget[0], forget[1]]))
    with torch.no_grad():
        logits = trainer.model(**probe).logits.float().cpu()
    grads = full_grads(trainer, probe) if stage and name == FULL_GRAD_METHOD and resume is None else None
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if resume is None:
        trainer.save_model(os.path.join(out, "model"))
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        save_file({k: v.contiguous() for k, v in fp32.items()}, os.path.join(out, "fp32.safetensors"))
        save_file({"logits": logits.contiguous(), **{k: v.cpu() for k, v in probe.items()}},
                  os.path.join(out, "logits.safetensors"))
        if grads is not None:
            save_file(grads, os.path.join(out, "full_grad.safetensors"))
    masker = trainer.masker
    result = {"losses": losses, "global_step": trainer.state.global_step,
              "mask_names": sorted(kwargs.get("saliency_mask", {})),
              # ZeRO-3 keeps small parameters gathered (ds_persist): the restore must re-gather them.
              "persistent_masked": sum(bool(getattr(p, "ds_persist", False)) for p in masker.params.values())
              if masker is not None else 0}
    del trainer, model
    gc.collect()
    return result


def full_grads(trainer, probe: dict) -> dict[str, torch.Tensor]:
    """Gradients of the probe loss read with ``full_grad`` after ``engine.backward`` (no step; run after training).

    Both ranks use the same batch, so DeepSpeed's rank average equals the single-process gradient. Under ZeRO the
    backward must go through the engine: a plain ``loss.backward()`` skips the reduction epilogue (ZeRO-2 then has
    no gradient to return).
    """
    from hf_unlearn.integrations.deepspeed import full_grad

    engine = trainer.model_wrapped
    engine.set_gradient_accumulation_boundary(is_boundary=True)
    engine.backward(engine(**probe).loss, scale_wrt_gas=False)
    return {n: full_grad(p).detach().float().cpu().clone() for n, p in trainer.model.named_parameters()
            if p.requires_grad}


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["reference", "ds"])
    parser.add_argument("workdir")
    parser.add_argument("--stage", type=int, choices=[2, 3])
    parser.add_argument("--only", nargs="*", help="run only these methods")
    args = parser.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    torch.set_num_threads(1)
    table = methods()
    if args.only:
        table = {k: v for k, v in table.items() if k in args.only}
    results: dict = {"methods": sorted(table)}
    if args.mode == "reference":
        if not os.path.isdir(os.path.join(args.workdir, "init")):
            write_init(args.workdir)
        tag, stage, ranks = "reference", None, 1
    else:
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no 20-70 s JIT build; plain gloo
        tag, stage, ranks = f"zero{args.stage}", args.stage, int(os.environ["WORLD_SIZE"])
    optional = optional_methods()
    for name, spec in table.items():
        if name not in optional:
            results[name] = run_method(name, spec, args.workdir, tag, stage, ranks)
    if stage and RESUME_METHOD in table:
        checkpoint = os.path.join(args.workdir, tag, RESUME_METHOD, "checkpoint-3")
        results[RESUME_METHOD + "_resumed"] = run_method(
            RESUME_METHOD, table[RESUME_METHOD], args.workdir, tag, stage, ranks, resume=checkpoint)
    if stage == 2:  # every rank must hold the same mask: checked when training starts
        try:
            run_method("mask_differs_per_rank", (GATrainer, GAConfig, {"retain_loss_type": "nll"},
                                                 {"mask": True, "mask_differs_per_rank": True}),
                       args.workdir, tag, stage, ranks)
            results["mask_differs_per_rank"] = {"error": None}
        except ValueError as error:
            results["mask_differs_per_rank"] = {"error": str(error)}
            gc.collect()
    # Trainers of other modules last, errors recorded (both ranks fail alike) so the core results still get written.
    for name, spec in table.items():
        if name in optional:
            try:
                results[name] = run_method(name, spec, args.workdir, tag, stage, ranks)
            except Exception as error:  # noqa: BLE001 - reported to the test, which fails on it
                results[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
                gc.collect()
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(os.path.join(args.workdir, tag, "results.json"), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
