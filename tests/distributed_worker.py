"""Worker for ``tests/test_distributed.py``: trains every method on a tiny LLaVA under one launcher.

Modes (one process tree each, every method in sequence, results in ``WORKDIR/<tag>/``):

* ``python tests/distributed_worker.py reference WORKDIR``: writes the starting model (``WORKDIR/init``), then one
  single-process run per method (gradient accumulation replaces the second rank: same global batch).
* ``torchrun --nproc_per_node 2 tests/distributed_worker.py ddp WORKDIR``: plain DDP (gloo).
* ``torchrun --nproc_per_node 2 tests/distributed_worker.py ds WORKDIR --stage {2,3}``: DeepSpeed ZeRO-2 / ZeRO-3.
* ``torchrun --nproc_per_node 2 tests/distributed_worker.py fsdp2 WORKDIR``: accelerate's FSDP plugin, version 2.

Every distributed mode also resumes ``RESUME_METHOD`` from its step-3 checkpoint. The data is the hard case of
issue 13: forget rows with images, a retain set of text-only and image rows, so at some steps one rank's retain
batch skips the vision tower while the other's uses it.

Per method: ``losses`` (the Trainer's logged step losses), which retain batches had images on each rank, in
``results.json``; ``fp32.safetensors`` (full fp32 weights, gathered from every rank: DeepSpeed's master weights,
FSDP2's full tensors); under DDP also ``fp32.rank<r>.safetensors`` (each rank's own copy); ``logits.safetensors``
(trained model on a probe batch); ``model/`` (``save_model``). Under ZeRO-3 and FSDP2 the reference models are
loaded from the starting model's path, as a large run would.
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

from hf_unlearn import (  # noqa: E402
    AltPOConfig,
    AltPOTrainer,
    GAConfig,
    GATrainer,
    MMUnlearnerConfig,
    NPOConfig,
    NPOTrainer,
    PDUConfig,
    PDUTrainer,
    VKDConfig,
)
from hf_unlearn.data.synthetic import (  # noqa: E402
    SyntheticBenchmarkConfig,
    benchmark_corpus,
    build_synthetic_benchmark,
)
from hf_unlearn.methods.mmunlearner import MMUnlearnerTrainer  # noqa: E402
from hf_unlearn.methods.vkd import VKDTrainer  # noqa: E402

LR = 1e-3
MAX_STEPS = 3
GLOBAL_BATCH = 4  # forget rows per optimizer step in every run
RESUME_METHOD, RESUME_STEPS = "masked_forget", 6
FULL_GRAD_METHOD = "ga_diff"
# FSDP2 units: the language model's decoder layers. The vision tower stays in the root unit: a rank whose batch has no
# image skips it, and a separate unit there would leave its all-gathers unmatched (docs/distributed.md).
FSDP_WRAP = ["LlamaDecoderLayer"]


def zero_config(stage: int) -> dict:
    """The HF-style config of examples/deepspeed/zero{2,3}.json, fp32 (CPU)."""
    zero = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True, "reduce_bucket_size": "auto",
                     "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto"})
    return {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto", "zero_optimization": zero,
            "bf16": {"enabled": False}, "fp16": {"enabled": False}}


def fsdp_kwargs(wrap: list[str] = FSDP_WRAP) -> dict:
    return {"fsdp": True, "fsdp_config": {"fsdp_version": 2, "transformer_layer_cls_to_wrap": wrap,
                                                  "state_dict_type": "FULL_STATE_DICT"}}


@functools.cache
def data(images_only: bool = False):
    """(benchmark, 8 forget image rows, 12 retain rows: 6 text-only then 6 with images; or 12 with images).

    ZeRO-3 gathers each module's weights in its forward, so its ranks must run the same modules: its runs (and their
    single-process reference, ``reference_images``) use retain rows that all have images.
    """
    import datasets

    dsd = build_synthetic_benchmark(SyntheticBenchmarkConfig(
        num_people=6, num_holdout_people=0, forget_ratio=1 / 3, num_general=0, image_size=32))
    if images_only:
        retain = dsd["retain_vqa"].select(range(12))
    else:
        retain = datasets.concatenate_datasets([dsd["retain_qa"].select(range(6)),
                                                dsd["retain_vqa"].select(range(6))])
    return dsd, dsd["forget_vqa"].select(range(8)), retain


def write_init(workdir: str) -> None:
    from hf_unlearn.testing import tiny_llava

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


ALL = ("reference", "ddp", "zero2", "zero3", "fsdp2")
IMAGES_ONLY = ("zero3", "reference_images")  # launches on retain rows that all have images


def methods() -> dict:
    """name -> (trainer class, config class, extra config, options).

    options: ``reference`` (the method holds a live reference / teacher: under ZeRO-3 and FSDP2 it is loaded from the
    starting model's path), ``mask``, ``micro_batch`` (default 1: gradient accumulation in every launcher),
    ``launchers`` (default all; each launcher runs the methods its special cases concern, to keep the launches
    short), ``same_as`` (a variant that must give the numbers of another method), ``mixed_data`` (ZeRO-3: the mixed
    retain rows).
    """
    everywhere, no_zero3 = ALL, ("reference", "ddp", "zero2", "fsdp2")
    not_zero2 = ("reference", "ddp", "zero3", "fsdp2")
    sharded_refs = not_zero2  # the references ZeRO-3 and FSDP2 shard
    return {
        "ga_diff": (GATrainer, GAConfig, {"retain_loss_type": "nll"}, {}),
        "kl_min": (GATrainer, GAConfig, {"retain_loss_type": "kl"}, {"reference": True, "launchers": sharded_refs}),
        "npo": (NPOTrainer, NPOConfig, {"retain_loss_type": "nll", "beta": 0.4}, {"reference": True}),
        "npo_precompute": (NPOTrainer, NPOConfig, {"retain_loss_type": "nll", "beta": 0.4,
                                                   "precompute_ref_log_probs": True}, {"launchers": not_zero2}),
        # Batches of 2: retain batches mixing a text-only and an image row.
        "masked_all": (GATrainer, GAConfig, {"retain_loss_type": "nll", "mask_scope": "all", "weight_decay": 0.1},
                       {"mask": True, "micro_batch": 2}),
        # Two backward passes per step (masked forget, unmasked retain).
        "masked_forget": (GATrainer, GAConfig, {"retain_loss_type": "nll", "mask_scope": "forget",
                                                "weight_decay": 0.1}, {"mask": True}),
        "mmunlearner": (MMUnlearnerTrainer, MMUnlearnerConfig, {"schedule": "alternate", "forget_every": 2},
                        {"mask": True, "launchers": not_zero2}),
        "mmunlearner_joint": (MMUnlearnerTrainer, MMUnlearnerConfig, {"schedule": "joint"},
                              {"mask": True, "launchers": no_zero3}),
        # VKD's default retain term (feature match) is zero on text-only rows: under FSDP2 refused with a clear error.
        "vkd": (VKDTrainer, VKDConfig, {}, {"reference": True, "mask": True, "launchers": everywhere}),
        "vkd_retain_nll": (VKDTrainer, VKDConfig, {"retain_nll_weight": 1.0},
                           {"reference": True, "mask": True, "launchers": ("reference", "ddp", "fsdp2")}),
        # The stranger target: forget features pulled onto the teacher's features of holdout images (computed once
        # per rank before the first step). Retain NLL as in vkd_retain_nll, so FSDP2 runs it too.
        "vkd_stranger": (VKDTrainer, VKDConfig, {"retain_nll_weight": 1.0, "forget_feature_loss": "stranger",
                                                 "stop_at_holdout": False, "probe_rows": 0},
                         {"reference": True, "holdout": True, "launchers": ("reference", "ddp", "zero3", "fsdp2")}),
        # PDU's dual step averages the retain gap over the ranks; AltPO holds a live reference (ZeRO-3: from the path).
        "pdu": (PDUTrainer, PDUConfig, {"dual_step_size": 0.5}, {"launchers": ("reference", "ddp")}),
        "altpo": (AltPOTrainer, AltPOConfig, {}, {"reference": True, "launchers": ("reference", "ddp", "zero3")}),
        # DDP with ddp_find_unused_parameters set either way (transformers' default is True without checkpointing).
        "ga_diff_find_unused_false": (GATrainer, GAConfig, {"retain_loss_type": "nll",
                                                            "ddp_find_unused_parameters": False},
                                      {"launchers": ("ddp",), "same_as": "ga_diff"}),
        "mmunlearner_joint_find_unused_false": (
            MMUnlearnerTrainer, MMUnlearnerConfig, {"schedule": "joint", "ddp_find_unused_parameters": False},
            {"mask": True, "launchers": ("ddp",), "same_as": "mmunlearner_joint"}),
        "vkd_find_unused_true": (VKDTrainer, VKDConfig, {"ddp_find_unused_parameters": True},
                                 {"reference": True, "mask": True, "launchers": ("ddp",), "same_as": "vkd"}),
        # FSDP2 with the vision tower's layers as their own units: refused before the first step, not a hang.
        "ga_diff_vision_units": (GATrainer, GAConfig, {"retain_loss_type": "nll"},
                                 {"launchers": ("fsdp2",), "fsdp_wrap": FSDP_WRAP + ["CLIPEncoderLayer"]}),
        # ZeRO-3 on the mixed retain set: refused (ranks would gather different modules), not a hang.
        "ga_diff_mixed_batches": (GATrainer, GAConfig, {"retain_loss_type": "nll"},
                                  {"launchers": ("zero3",), "mixed_data": True}),
    }


def run_method(name: str, spec, workdir: str, tag: str, ranks: int, resume: str | None = None):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    trainer_cls, config_cls, extra, options = spec
    init = os.path.join(workdir, "init")
    micro = options.get("micro_batch", 1)
    accumulation = (GLOBAL_BATCH // micro) // ranks
    steps = RESUME_STEPS if name == RESUME_METHOD else MAX_STEPS
    out = os.path.join(workdir, tag, name if resume is None else name + "_resumed")
    launcher_args = {}
    if tag.startswith("zero"):
        launcher_args["deepspeed"] = zero_config(int(tag[-1]))
    elif tag == "fsdp2":
        launcher_args.update(fsdp_kwargs(options.get("fsdp_wrap", FSDP_WRAP)))
    args = config_cls(
        output_dir=out, per_device_train_batch_size=micro, per_device_eval_batch_size=2,
        gradient_accumulation_steps=accumulation, max_steps=steps, learning_rate=LR, logging_steps=1,
        save_strategy="steps" if name == RESUME_METHOD else "no", save_steps=3, seed=0, report_to="none",
        use_cpu=True, disable_tqdm=True, **launcher_args, **extra,
    )
    if tag.startswith("zero"):
        import deepspeed

        # On GPUs the arguments' PartialState initialises deepspeed.comm; on CPU (use_cpu) only torch.distributed
        # is up, and zero.Init would see a world size of 1.
        deepspeed.init_distributed(dist_backend="gloo")
    # Loaded after the arguments: under ZeRO-3 this is a zero.Init (partitioned) load.
    model = AutoModelForImageTextToText.from_pretrained(init)
    processor = AutoProcessor.from_pretrained(init)
    _, forget, retain = data(images_only=tag in IMAGES_ONLY and not options.get("mixed_data"))
    kwargs = {}
    if options.get("mask"):
        # "mask_differs_per_rank": a user bug (unseeded mask) that must be caught, not train silently apart.
        seed = 1234 + int(os.environ.get("RANK", "0")) if options.get("mask_differs_per_rank") else 1234
        kwargs["saliency_mask"] = vision_mask(model, seed)
    if options.get("holdout"):
        kwargs["holdout_dataset"] = data()[0]["validation_vqa"].select(range(4))
    if options.get("reference") and tag in ("zero3", "fsdp2"):
        kwargs["ref_model"] = init  # a deep copy of a partitioned model is not a model
    trainer = trainer_cls(model=model, args=args, train_dataset=forget, retain_dataset=retain,
                          processing_class=processor, **kwargs)
    retain_images = _record_retain_images(trainer)
    trainer.train(resume_from_checkpoint=resume)

    fp32 = full_fp32_params(trainer, tag)
    if resume is None:
        trainer.save_model(os.path.join(out, "model"))
    trainer.model.eval()
    probe = trainer._prepare_inputs(trainer.data_collator.collator([forget[0], forget[1]]))
    with torch.no_grad():
        logits = trainer.model_wrapped(**probe).logits.float().cpu()
    grads = full_grads(trainer, probe) if tag.startswith("zero") and name == FULL_GRAD_METHOD and resume is None \
        else None
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    rank = int(os.environ.get("RANK", "0"))
    os.makedirs(out, exist_ok=True)
    if tag == "ddp":  # every rank's own copy: DDP keeps full replicas that must stay identical
        own = {n: p.detach().float().clone().contiguous() for n, p in trainer.model.named_parameters()}
        save_file(own, os.path.join(out, f"fp32.rank{rank}.safetensors"))
    if rank == 0:
        save_file({k: v.contiguous() for k, v in fp32.items()}, os.path.join(out, "fp32.safetensors"))
        save_file({"logits": logits.contiguous(), **{k: v.cpu() for k, v in probe.items()}},
                  os.path.join(out, "logits.safetensors"))
        if grads is not None:
            save_file(grads, os.path.join(out, "full_grad.safetensors"))
    masker = trainer.masker
    result = {"losses": losses, "global_step": trainer.state.global_step,
              "mask_names": sorted(kwargs.get("saliency_mask", {})),
              "retain_images": _gather(retain_images),
              "wrapper": type(trainer.model_wrapped).__name__,
              "reference_wrapper": type(trainer.ref_model).__name__ if trainer.ref_model is not None else None,
              # ZeRO-3 keeps small parameters gathered (ds_persist): the restore must re-gather them.
              "persistent_masked": sum(bool(getattr(p, "ds_persist", False)) for p in masker.params.values())
              if masker is not None else 0,
              # Bytes of masks and of saved master values each rank holds at the end of training.
              "mask_bytes": _gather(masker.mask_bytes() if masker is not None and hasattr(masker, "mask_bytes")
                                    else 0),
              "snapshot_bytes": _gather(snapshot_bytes(trainer))}
    del trainer, model
    gc.collect()
    return result


def _record_retain_images(trainer) -> list[bool]:
    """Whether each retain batch this rank trained on had images (wraps the instance's retain_loss)."""
    seen: list[bool] = []
    retain_loss = trainer.retain_loss

    def recording(model, retain):
        seen.append("pixel_values" in retain)
        return retain_loss(model, retain)

    trainer.retain_loss = recording
    return seen


def snapshot_bytes(trainer) -> int:
    """Saved values for the exact-mask restore: DeepSpeed's guard (master partitions) or the masker's own."""
    if trainer.masker is None:
        return 0
    control = getattr(getattr(trainer.accelerator, "deepspeed_engine_wrapped", None), "_hf_unlearn_step_control", None)
    if control is not None and control.guard is not None:
        return control.guard.saved_bytes()
    return trainer.masker.snapshot_bytes() if hasattr(trainer.masker, "snapshot_bytes") else 0


def _gather(value) -> list:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def full_fp32_params(trainer, tag: str) -> dict[str, torch.Tensor]:
    if tag.startswith("zero"):
        from hf_unlearn.integrations.deepspeed import gather_full_fp32_params

        return gather_full_fp32_params(trainer.model)
    if tag == "fsdp2":
        from hf_unlearn.integrations.fsdp import gather_full_params

        return gather_full_params(trainer.model)
    return {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}


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
    parser.add_argument("mode", choices=["reference", "ddp", "ds", "fsdp2"])
    parser.add_argument("workdir")
    parser.add_argument("--stage", type=int, choices=[2, 3])
    parser.add_argument("--images-only", action="store_true", help="reference: the retain rows of ZeRO-3")
    parser.add_argument("--only", nargs="*", help="run only these methods")
    args = parser.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    torch.set_num_threads(1)
    tag = f"zero{args.stage}" if args.mode == "ds" else args.mode
    if tag == "reference" and args.images_only:
        tag = "reference_images"
    launcher = "zero3" if tag == "reference_images" else tag
    table = {k: v for k, v in methods().items() if launcher in v[3].get("launchers", ALL)
             and not (tag == "reference_images" and v[3].get("mixed_data"))}
    if args.only:
        table = {k: v for k, v in table.items() if k in args.only}
    results: dict = {"methods": sorted(table)}
    if tag.startswith("reference"):
        if not os.path.isdir(os.path.join(args.workdir, "init")):
            write_init(args.workdir)
        ranks = 1
    else:
        ranks = int(os.environ["WORLD_SIZE"])
    if args.mode == "ds":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no 20-70 s JIT build; plain gloo
    if tag == "fsdp2":
        from hf_unlearn.integrations.fsdp import allow_fsdp_on_cpu

        allow_fsdp_on_cpu()  # accelerate enables its FSDP plugin on accelerators only
    for name, spec in table.items():
        try:
            results[name] = run_method(name, spec, args.workdir, tag, ranks)
        except Exception as error:  # noqa: BLE001 - reported to the test, which fails on it
            if ranks == 1:
                raise
            # Both ranks fail alike (same data, same code); record it so the other results still get written.
            import traceback

            traceback.print_exc()
            results[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            gc.collect()
    if ranks > 1 and RESUME_METHOD in table:
        checkpoint = os.path.join(args.workdir, tag, RESUME_METHOD, "checkpoint-3")
        results[RESUME_METHOD + "_resumed"] = run_method(
            RESUME_METHOD, table[RESUME_METHOD], args.workdir, tag, ranks, resume=checkpoint)
    if tag == "zero2":  # every rank must hold the same mask: checked when training starts
        try:
            run_method("mask_differs_per_rank", (GATrainer, GAConfig, {"retain_loss_type": "nll"},
                                                 {"mask": True, "mask_differs_per_rank": True}),
                       args.workdir, tag, ranks)
            results["mask_differs_per_rank"] = {"error": None}
        except ValueError as error:
            results["mask_differs_per_rank"] = {"error": str(error)}
            gc.collect()
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(os.path.join(args.workdir, tag, "results.json"), results)
    return 0


if __name__ == "__main__":
    from hf_unlearn.integrations.ranks import end_distributed

    code = main()
    end_distributed()
    sys.exit(code)
