"""Saliency-mask file size in bits per covered parameter (measurement 5).

B: ``SaliencyMask.save_pretrained`` writes ``saliency_mask.safetensors``: every mask bit-packed (``np.packbits``) as
uint8, plus a JSON header (tensor names, shapes, summary). Its size on disk, in bits, divided by the number of covered
parameters. A: the public MMUnlearner reference code stores, per covered weight, a bool (8 bits) and the two fp32
Fisher maps (64 bits): 72 bits per parameter (analytic; pickles are not written here). The size does not depend on
which entries are selected, so the masks are computed with the seeded ``random`` score on models built on the
``meta`` device (shapes only, no weights): this measurement is exact, deterministic and takes seconds.

Besides the benchmark sizes, a mask over the vision tower and projector of a LLaVA-1.5-7B-shaped model (CLIP ViT-L/14
at 336 px, 2-layer projector) shows the real-size figure; that mask is built directly (all-False; same file layout)
because scoring 0.3 billion random entries would only cost time.
"""

from __future__ import annotations

import os
import tempfile

import common
from common import Row, Settings

REFERENCE_BITS = 8 + 2 * 32  # bool + two fp32 Fisher maps per covered weight
PRESETS = ("vision", "both")


def llava_1_5_7b_meta():
    """A LLaVA-1.5-7B-shaped ``LlavaForConditionalGeneration`` on the meta device (no weights allocated)."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32064)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, vision_feature_layer=-2)
    with torch.device("meta"):
        return LlavaForConditionalGeneration(cfg)


def file_bits(mask) -> dict[str, float]:
    """Save ``mask`` into a temporary directory and measure its files."""
    from hf_unlearn.saliency import CONFIG_NAME, MASK_NAME

    with tempfile.TemporaryDirectory() as tmp:
        mask.save_pretrained(tmp)
        size = os.path.getsize(os.path.join(tmp, MASK_NAME))
        config_path = os.path.join(tmp, CONFIG_NAME)
        config_size = os.path.getsize(config_path) if os.path.exists(config_path) else 0
        with open(os.path.join(tmp, MASK_NAME), "rb") as f:
            header = 8 + int.from_bytes(f.read(8), "little")  # safetensors: u64 header length, then JSON header
    covered = mask.num_covered
    return {"file_bytes": size, "header_bytes": header, "config_json_bytes": config_size, "covered": covered,
            "tensors": len(mask), "bits_per_param": 8 * size / covered,
            "payload_bits_per_param": 8 * (size - header) / covered}


def mask_row(label: str, preset: str, stats: dict[str, float], note: str = "") -> Row:
    return Row(f"5. mask file size ({preset})", label, "reference: bool + 2 fp32 maps", "saliency_mask.safetensors",
               "bits/param", [float(REFERENCE_BITS)], [stats["bits_per_param"]], goal=1.1, goal_on="b", note=note,
               extra=stats, load_sensitive=False)


def measure(settings: Settings, size: str, log=print) -> list[Row]:
    from hf_unlearn import SaliencyMaskConfig, compute_saliency_mask

    model, _ = common.build_model(size, device="meta")
    label = common.size_label(size, sum(p.numel() for p in model.parameters()))
    rows = []
    for preset in PRESETS:
        config = SaliencyMaskConfig(target_modules=preset, score="random", threshold=0.5)
        stats = file_bits(compute_saliency_mask(model, config, None, None, None, show_progress=False))
        log(f"  mask size {size}/{preset}: {stats['bits_per_param']:.4f} bits/param over {stats['covered']} params")
        rows.append(mask_row(label, preset, stats))
    return rows


def measure_llava_7b_vision(log=print) -> Row:
    import torch

    from hf_unlearn import SaliencyMask
    from hf_unlearn.models import vision_parameter_names

    model = llava_1_5_7b_meta()
    params = dict(model.named_parameters())
    names = vision_parameter_names(model, include_projector=True)
    mask = SaliencyMask({n: torch.zeros(params[n].shape, dtype=torch.bool) for n in names})
    stats = file_bits(mask)
    del mask
    common.free_memory()
    total = sum(p.numel() for p in params.values())
    log(f"  mask size llava-1.5-7b shape/vision: {stats['bits_per_param']:.4f} bits/param")
    return mask_row(f"LLaVA-1.5-7B shape ({total / 1e9:.1f}B)", "vision", stats,
                    note="mask built directly (all-False); same file layout")


def main(argv=None) -> list[Row]:
    return common.standalone_main(__doc__.splitlines()[0], measure, argv, full_reps=1,
                                  extra_rows=lambda: [measure_llava_7b_vision()])

if __name__ == "__main__":
    main()
