"""The benchmark harness in quick mode, on its one deterministic measurement: the saliency-mask file size.

Nothing is timed. The tiny model is the brief's smoke target; the mid-size model is built on the meta device (shapes
only), so it costs a few seconds and shows the file reaching ~1 bit per covered parameter.
"""

import json
import logging
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def run_all():
    """Import ``benchmarks/run_all.py``; undo the global settings the harness changes (threads, log levels, env)."""
    sys.path.insert(0, str(BENCHMARKS))
    environ = dict(os.environ)
    threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    bars, level = hf_logging.is_progress_bar_enabled(), logging.getLogger("hf_unlearn").level
    try:
        import run_all

        yield run_all
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        logging.getLogger("hf_unlearn").setLevel(level)
        sys.path.remove(str(BENCHMARKS))
        os.environ.clear()
        os.environ.update(environ)


def expected_payload_bytes(size: str, preset: str) -> tuple[int, int]:
    """(packed bytes, covered parameters) computed independently: one bit per entry, a byte boundary per tensor."""
    import common

    from hf_unlearn import SaliencyMaskConfig

    model, _ = common.build_model(size, device="meta")
    names = SaliencyMaskConfig(target_modules=preset, score="random", threshold=0.5).resolve_targets(model)
    params = dict(model.named_parameters())
    numels = [params[n].numel() for n in names]
    return sum(math.ceil(n / 8) for n in numels), sum(numels)


def test_quick_mask_size_bits_per_parameter(run_all, tmp_path):
    out, js = tmp_path / "benchmarks.md", tmp_path / "results.json"
    run_all.main(["--quick", "--only", "mask_size", "--sizes", "tiny", "mid", "--output", str(out),
                  "--json", str(js)])
    rows = {(r["size"].split()[0], r["measurement"]): r for r in json.loads(js.read_text())["rows"]}
    assert len(rows) == 4  # 2 sizes x {vision, whole model}

    for size in ("tiny", "mid"):
        for preset in ("vision", "both"):
            row = rows[(size, f"5. mask file size ({preset})")]
            stats = row["extra"]
            payload, covered = expected_payload_bytes(size, preset)
            assert stats["covered"] == covered
            # The file is exactly the safetensors header plus one bit per covered entry (byte-padded per tensor).
            assert stats["file_bytes"] == stats["header_bytes"] + payload
            assert row["values_b"] == [pytest.approx(8 * stats["file_bytes"] / covered)]
            assert 1.0 <= stats["payload_bits_per_param"] <= 1.0 + 7 * stats["tensors"] / covered
            assert row["values_a"] == [72.0]  # reference: bool + two fp32 maps
            assert row["ratio_median"] == pytest.approx(row["values_b"][0] / 72.0)

    # Mid-size: within the 1.1 bits/parameter goal. Tiny: the fixed header (~180 bytes a tensor) dominates.
    assert rows[("mid", "5. mask file size (vision)")]["values_b"][0] == pytest.approx(1.0445, abs=2e-3)
    assert rows[("mid", "5. mask file size (both)")]["values_b"][0] == pytest.approx(1.012, abs=2e-3)
    assert all(rows[("mid", f"5. mask file size ({p})")]["met"] for p in ("vision", "both"))
    assert rows[("tiny", "5. mask file size (vision)")]["values_b"][0] > 1.1
    assert not rows[("tiny", "5. mask file size (vision)")]["met"]

    text = out.read_text()
    assert "| 5. mask file size (both) | mid (23M) |" in text and "2 of 4 goal rows met." in text
