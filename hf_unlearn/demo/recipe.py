"""The demo's recipe for running a registered method on its tiny models: its own budget and tuned overrides.

The library's defaults are each config class's own (``hf-unlearn run`` uses them); the demo's tiny models memorise in
minutes and collapse in seconds, so the demo trains every method from ``DEMO_ARGS`` (a step budget, constant learning
rate, quiet, the stop rule checked every 5 steps), each method from its untuned starting point (``UNTUNED``), and
over that the tuning protocol's pick (``tuned.json``, from ``hf-unlearn tune`` on validation seeds). These values are
a benchmark artefact, never a library default.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any

from transformers import PrinterCallback

from ..evaluation.attacks import RelearnConfig
from ..trainers.registry import MethodData, get_method

TUNED_FILE = os.path.join(os.path.dirname(__file__), "tuned.json")
# Benchmark v3's picks (``hf-unlearn tune --v3``), for the methods tuned on it; the others keep v2's.
TUNED_V3_FILE = os.path.join(os.path.dirname(__file__), "tuned_v3.json")

# Training arguments of every demo run. With a holdout set (the demo's validation people) the stop rule ends a run
# once the forget set looks like the holdout, checked every 5 steps, so ``max_steps`` is a cap. The probe scores its
# 96 rows in batches of 64: Trainer's default of 8 made 12 forward passes per check, a quarter of an 80-step NPO run
# on v3.
DEMO_ARGS: dict[str, Any] = dict(
    per_device_train_batch_size=4, probe_batch_size=64, max_steps=20, learning_rate=1e-3,
    lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, logging_steps=5, save_strategy="no",
    report_to="none", disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, probe_steps=5,
)

# Each method's starting point before the tuning protocol's pick. Budgets are modest for the tiny models (2 decoder
# layers, hidden size 64). ``mask_threshold`` is the threshold of the saliency mask a masked method computes.
UNTUNED: dict[str, dict[str, Any]] = {
    "ga": dict(max_steps=10, learning_rate=5e-4),
    "ga_diff": dict(max_steps=10, learning_rate=5e-4),
    "kl_min": dict(max_steps=10, learning_rate=5e-4),
    "npo": dict(retain_loss_type="nll", precompute_ref_log_probs=True, max_steps=30, learning_rate=5e-4, beta=0.4),
    "mmunlearner": dict(retain_loss_type="nll", max_steps=60, learning_rate=1e-3, schedule="joint",
                        mask_threshold=1.0),
    "vkd": dict(retain_loss_type="nll", max_steps=80, learning_rate=2e-3),
    # Measured once on the default VLM demo (forget = forget_vqa; oracle forget-VQA accuracy 0.2): simnpo 0.4, rmu
    # 0.2, idkpo 0.6, undial 0.3 forget-VQA accuracy, retain-VQA 0.80-0.92 (vanilla 0.99). SimNPO at the paper's beta
    # with forget weight 1 (the authors' 0.125 is for 7B models over 10 epochs).
    "simnpo": dict(retain_loss_type="nll", max_steps=40, learning_rate=5e-4, beta=4.5, gamma=0.0, forget_weight=1.0),
    # The last of 2 decoder layers, every parameter of layers 0-1, alpha 100, c 12 (the activation norm there is about
    # 1.5, so the paper's 6.5 moves too little in 40 steps).
    "rmu": dict(retain_loss_type="nll", max_steps=40, learning_rate=1e-3, steer_layer=-1, trainable_params=None,
                steering_coeff=12.0, retain_weight=100.0),
    "idkpo": dict(retain_loss_type="nll", max_steps=30, learning_rate=1e-3, beta=0.1),
    "undial": dict(retain_loss_type="nll", max_steps=20, learning_rate=5e-4, gamma=10.0),
    # OpenUnlearning's methods added in issue 29, from GA_Diff's / IdkPO's starting points (the token-weighted ascents
    # saturate, so they get GA_Diff's budget twice; SatImp's forget weight 0.1 a 10x rate; PDU's flatness term is of
    # order (logit range)^2, so a small forget weight). Unmeasured before the tuning protocol's pick.
    "wga": dict(retain_loss_type="nll", max_steps=20, learning_rate=5e-4),
    "satimp": dict(retain_loss_type="nll", max_steps=20, learning_rate=2e-3),
    "ceu": dict(retain_loss_type="nll", max_steps=20, learning_rate=5e-4),
    "pdu": dict(retain_loss_type="nll", max_steps=20, learning_rate=5e-4, forget_weight=0.1),
    "altpo": dict(retain_loss_type="nll", max_steps=30, learning_rate=1e-3, beta=0.1),
    # Open-MMUnlearning's vision-language methods (issue 29.1), unmeasured before the tuning protocol's pick. MANU is
    # training-free: one step (the pruning), the authors' 2 % of each modality's neurons in the last 3 layers.
    "manu": dict(max_steps=1, prune_percent=2.0),
    # MIP-Editor is RMU on its path rows: RMU's last layer and alpha, 16 path neurons per layer (of 128 / 64) and a
    # 10x rate (a few rows train). Unmeasured on the demo; on the tests' memorised tiny LLaVA these values (c = 6.5)
    # take the forget NLL from 0.04 to 1.3, retain 0.045 to 0.049 (tests/test_mip_editor.py).
    "mip_editor": dict(retain_loss_type="nll", max_steps=40, learning_rate=1e-2, steer_layer=-1, path_neurons=16,
                       retain_weight=100.0),
    # SMFA (unmeasured): IdkPO's refusal budget and rate (its adapters are LoRA, rank 16, so a rate an order above the
    # source's 1e-4 for 7B models over 5 epochs), the source's anchor_k 5.
    "smfa": dict(retain_loss_type="nll", max_steps=30, learning_rate=1e-3, anchor_k=5.0),
}
# Keys of UNTUNED / tuned.json that are not training arguments: how the demo computes a masked method's mask.
MASK_KEYS = {"mask_threshold": "threshold"}


@functools.lru_cache(maxsize=8)
def _read_picks(path: str, mtime_ns: int) -> dict[str, Any]:
    # Read once per version of the (large) record: the methods' picks and the relearning attack's.
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    return {"methods": {name: dict(entry.get("picked", {})) for name, entry in record.get("methods", {}).items()},
            "relearn": (record.get("relearn") or {}).get("pick")}


def _picks(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {"methods": {}, "relearn": None}
    return _read_picks(path, os.stat(path).st_mtime_ns)


def tuned_hyperparameters(name: str, path: str = TUNED_FILE) -> dict[str, Any]:
    """The tuning protocol's pick for ``name`` (``hf-unlearn tune``, recorded in ``tuned.json``); {} if never tuned."""
    return dict(_picks(path)["methods"].get(name, {}))


def demo_hyperparameters(name: str) -> dict[str, Any]:
    """A method's demo hyperparameters: the tuning protocol's pick over the untuned starting point."""
    return {**UNTUNED.get(name, {}), **tuned_hyperparameters(name)}


def untuned_overrides(name: str, path: str = TUNED_FILE) -> dict[str, Any]:
    """Overrides that undo ``name``'s recorded pick: each picked key at its untuned value (the entry's starting
    point, else the config's default). The tuning protocol scores every grid point from the same starting point,
    never from an earlier pick, so re-running it reproduces the record."""
    spec = get_method(name)
    defaults = {f.name: f.default for f in fields(spec.config_class) if f.default is not MISSING}
    defaults.update(spec.defaults)
    return {k: UNTUNED.get(name, {}).get(k, defaults.get(k)) for k in tuned_hyperparameters(name, path)}


def v3_pick(name: str) -> dict[str, Any]:
    """The tuning protocol's pick for ``name`` on benchmark v3 (``tuned_v3.json``); {} if not tuned on v3."""
    return tuned_hyperparameters(name, TUNED_V3_FILE)


def v3_overrides(name: str) -> dict[str, Any]:
    """What benchmark v3 runs ``name`` with over the demo's hyperparameters: its v3 pick from the untuned entry (v2's
    pick undone), or nothing (v2's pick stays) for a method not tuned on v3."""
    picked = v3_pick(name)
    return {**untuned_overrides(name), **picked} if picked else {}


def v3_relearn() -> RelearnConfig:
    """Benchmark v3's relearning attack: the budget calibrated on v3's validation seeds (``tuned_v3.json``'s
    ``relearn`` pick, ``hf-unlearn tune --v3 --calibrate-relearn``), else ``RelearnConfig``'s defaults (v2's pick)."""
    pick = _picks(TUNED_V3_FILE)["relearn"]
    return RelearnConfig(**pick) if pick else RelearnConfig()


def build_demo_trainer(name: str, model, processing_class, data: MethodData, output_dir: str, seed: int, *,
                       mask: Mapping[str, Any] | Any | None = None, ref_model=None, **overrides: Any):
    """The registered method ``name`` with the demo's recipe (``DEMO_ARGS``, then the demo hyperparameters, then
    ``overrides``: the tuning protocol's grid points, a caller's budget); a trainer ready to ``train()``."""
    spec = get_method(name)
    values = {**DEMO_ARGS, "output_dir": output_dir, "seed": seed, "data_seed": seed, **spec.defaults,
              **demo_hyperparameters(name), **overrides}
    mask_values = {MASK_KEYS[k]: values.pop(k) for k in list(values) if k in MASK_KEYS}
    if mask is None and mask_values and spec.trainer_class.default_mask is not None:
        mask = mask_values
    args = spec.config(**values)  # bad values fail here, before a mask is computed
    trainer = spec.build_trainer(model, processing_class, data, args, mask=mask, ref_model=ref_model)
    # The probe serves the stop rule, which reads NLLs; accuracy costs a forward per option at every probe (7 of a
    # 12 s GA_Diff run on v3) and the demo scores accuracy with the Evaluator afterwards anyway.
    trainer.unlearning_eval.accuracy = False
    trainer.remove_callback(PrinterCallback)  # quiet: the demo prints its table, not every probe's log line
    return trainer
