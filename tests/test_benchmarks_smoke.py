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
    from hf_unlearn import SaliencyMaskConfig

    import common

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


def test_timings_taken_under_load_are_rerun_then_marked_not_judged(run_all, tmp_path, monkeypatch, capsys):
    """A fake load average above half the cores: the saliency timing is re-run once, then its rows say "measured
    under load" (table, summary, page warning, stderr) instead of a verdict; the mask-size rows (file sizes do not
    depend on load) are neither re-run nor marked."""
    import common

    monkeypatch.setattr(common, "load_average", lambda: 5.0)
    monkeypatch.setattr(common, "load_limit", lambda: 1.0)
    out, js = tmp_path / "benchmarks.md", tmp_path / "results.json"
    run_all.main(["--quick", "--only", "mask_size", "saliency", "--sizes", "tiny", "--output", str(out),
                  "--json", str(js)])
    rows = json.loads(js.read_text())["rows"]
    timed = [r for r in rows if r["measurement"].startswith("4.")]
    sizes = [r for r in rows if r["measurement"].startswith("5.")]
    assert len(timed) == 2 and len(sizes) == 2
    assert all(r["under_load"] and r["attempts"] == 2 and r["load"] == [5.0, 5.0] for r in timed)
    assert all(not r["under_load"] and r["attempts"] == 1 for r in sizes)
    page = out.read_text()
    assert "**Warning: 2 timing row(s) were measured under load**" in page
    assert page.count("| **measured under load** | **5.0→5.0 (try 2)** |") == 2
    assert "of 2 goal rows met; 2 measured under load (no verdict)." in page  # the 2 mask-size rows are judged
    err = capsys.readouterr().err
    assert err.count("WARNING: load average 5.0 -> 5.0 exceeds its own threads plus half the other cores") == 2  # first try, and the re-run
    assert "re-running it" in err and "marked 'measured under load'" in err


def test_a_rerun_on_a_quieter_machine_is_judged(run_all):
    import common

    loads = iter([3.0, 3.0, 0.4, 0.6])
    calls = []

    def measure():
        calls.append(1)
        return [common.Row("4. x", "tiny", "a", "b", "s", [1.0], [1.05], goal=1.1)]

    original = common.load_average
    try:
        common.load_average = lambda: next(loads)
        rows = common.watch_load(measure, "x", log=lambda msg: None, reruns=1)
    finally:
        common.load_average = original
    assert len(calls) == 2 and rows[0].attempts == 2 and rows[0].load == [0.4, 0.6]
    assert rows[0].under_load is (max(rows[0].load) > common.load_limit()) and rows[0].met
