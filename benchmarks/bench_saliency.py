"""Saliency-mask computation time against one forward + backward pass over the same data (measurement 4).

B: ``compute_saliency_mask`` with the MMUnlearner score (Fisher ratio) over the forget set and the preserve sets.
A: the floor any gradient-based score must pay: one forward + backward pass over exactly the same batches (same
collator, batch size, eval mode, gradients only for the covered parameters), gradients discarded. B / A is the
overhead of squaring and accumulating in fp32, the ratio test and the bookkeeping. Two coverages: ``"vision"``
(vision tower + projector, the MMUnlearner default; preserve set: retain images) and ``"both"`` (the whole model;
preserve sets: retain images and text questions).
"""

from __future__ import annotations

import time

import common
from common import Row, Settings

PRESETS = ("vision", "both")
ROWS_PER_SET = 12  # 3 batches of 4 per dataset


def datasets_for(data) -> tuple:
    forget = data["forget_vqa"]
    forget = forget.select(range(min(ROWS_PER_SET, len(forget))))
    preserve = {"retain": data["retain_vqa"].select(range(ROWS_PER_SET)),
                "text": data["retain_qa"].select(range(ROWS_PER_SET))}
    return forget, preserve


def forward_backward_pass(model, datasets, collator, param_names: list[str], batch_size: int, device: str) -> None:
    """One forward + backward pass over consecutive batches of each dataset; only ``param_names`` get gradients.
    Flags, gradients and training mode are restored, as ``compute_saliency_mask`` does."""
    import torch

    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    wanted = set(param_names)
    was_training = model.training
    try:
        for n, p in params.items():
            p.requires_grad_(n in wanted)
        model.eval()
        for dataset in datasets:
            rows = list(dataset)
            for start in range(0, len(rows), batch_size):
                batch = collator(rows[start:start + batch_size])
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                model(**batch).loss.backward()
                for p in params.values():
                    p.grad = None
    finally:
        model.train(was_training)
        for n, p in params.items():
            p.requires_grad_(flags[n])


def measure(settings: Settings, size: str, log=print) -> list[Row]:
    from hf_unlearn import SaliencyMaskConfig, UnlearnDataCollator, compute_saliency_mask

    model_dir = common.saved_model_dir(settings, size)
    label = common.size_label(size, common.num_parameters(model_dir))
    model, processor = common.load_model(model_dir)
    model.to(settings.device)
    collator = UnlearnDataCollator(processor)
    forget, preserve = datasets_for(common.benchmark_data())
    rows = []
    for preset in PRESETS:
        config = SaliencyMaskConfig(target_modules=preset, batch_size=common.BATCH_SIZE)
        targets = config.resolve_targets(model)  # name -> group
        names = list(targets)
        needed = sorted({s for group in set(targets.values()) for s in config.preserve_set_names(group)})
        sets = {name: preserve[name] for name in needed}
        times = {"pass": [], "mask": []}
        cpu = {"pass": [], "mask": []}
        for rep in range(settings.reps):
            for variant in common.alternating(["pass", "mask"], rep):
                common.synchronize(settings.device)
                t0, c0 = time.perf_counter(), time.thread_time()
                if variant == "pass":
                    forward_backward_pass(model, [forget, *sets.values()], collator, names, common.BATCH_SIZE,
                                          settings.device)
                else:
                    mask = compute_saliency_mask(model, config, forget, sets, collator, show_progress=False)
                common.synchronize(settings.device)
                times[variant].append(time.perf_counter() - t0)
                cpu[variant].append(time.thread_time() - c0)
            log(f"  saliency {size}/{preset} rep {rep + 1}/{settings.reps}: pass={times['pass'][-1]:.2f}s "
                f"mask={times['mask'][-1]:.2f}s")
        rows.append(Row(
            f"4. saliency ({preset}) / one fwd+bwd pass", label,
            f"fwd+bwd over forget + {'+'.join(sets)} ({len(names)} tensors)", "compute_saliency_mask (Fisher ratio)",
            "s", times["pass"], times["mask"], goal=1.1,
            extra={"covered_parameters": mask.num_covered, "rows": {"forget": len(forget),
                                                                    **{k: len(v) for k, v in sets.items()}},
                   "cpu_ratios": [m / p for p, m in zip(cpu["pass"], cpu["mask"])]},
        ))
        common.free_memory()
    return rows


def main(argv=None) -> list[Row]:
    return common.standalone_main(__doc__.splitlines()[0], measure, argv)

if __name__ == "__main__":
    main()
