"""``benchmarks/gpu_check.sh --cpu --tiny``: the prepared GPU check's CPU path runs, so the script cannot rot. Nothing
is timed here; the check's own verdicts (every row ran, masked entries exact under bf16 AdamW) are asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_tiny_path_prints_the_table(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    table = proc.stdout[proc.stdout.index("| check |"):]
    for label in ("transformers.Trainer", "GATrainer (GA)", "NPOTrainer, precomputed reference",
                  "MMUnlearnerTrainer, language Fisher mask", "VKDTrainer", "saliency: compute_saliency_mask",
                  "masked-entry exactness, bf16 AdamW"):
        assert label in table, label
    assert "FAIL" not in table
    assert all(r["ms"] > 0 for r in results["steps"].values())
    exact = results["exactness"]
    assert exact["passed"] and exact["masked_changed"] == 0 and exact["masked"] > 0 and exact["unmasked_changed"] > 0
    assert results["saliency"]["covered"] > 0 and results["saliency"]["ratio"] > 0
    assert "device CPU" in results["environment"]


def test_missing_packages_are_named(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check

        monkeypatch.setattr(gpu_check, "REQUIRED", ("torch", "no_such_package_hf_unlearn"))
        assert gpu_check.main(["--cpu", "--tiny"]) == 2
        assert "no_such_package_hf_unlearn" in capsys.readouterr().err
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
