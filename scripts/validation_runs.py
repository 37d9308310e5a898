"""Run one registered method with hyperparameter overrides on the tuning protocol's validation seeds and print the
four criterion metrics and the distance to the oracle (how docs/methods/*.md's ablations were measured).

    python scripts/validation_runs.py vkd '[{}, {"forget_feature_loss": "random_target"}]' [--seeds 100,101,102,103]
        [--cache-dir DIR]

Validation seeds only (never the reported ones): what is decided here must not be decided on the published seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from dataclasses import replace

import torch
from transformers import set_seed

from hf_unlearn.data.synthetic import build_synthetic_benchmark
from hf_unlearn.demo.config import DemoConfig
from hf_unlearn.demo.pipeline import DISTANCE_METRICS, deterministic, method_data, run_method
from hf_unlearn.demo.references import load_or_train_reference_models
from hf_unlearn.demo.tuning import VALIDATION_SEEDS, criterion_point
from hf_unlearn.evaluation.stats import distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("variants", help="JSON list of override dicts, e.g. '[{}, {\"learning_rate\": 1e-4}]'.")
    parser.add_argument("--seeds", default=",".join(map(str, VALIDATION_SEEDS)))
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if set(seeds) - set(VALIDATION_SEEDS):
        raise SystemExit(f"validation_runs.py: use validation seeds {list(VALIDATION_SEEDS)}, not {seeds}.")
    variants = json.loads(args.variants)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    config = DemoConfig()
    totals = [0.0] * len(variants)
    with deterministic():
        for seed in seeds:
            seed_config = replace(config, seed=seed)
            set_seed(seed)
            benchmark = build_synthetic_benchmark(seed_config.benchmark)
            refs = load_or_train_reference_models(benchmark, seed_config, args.cache_dir, False, lambda *_: None)
            vanilla, processor = refs["vanilla"]["model"], refs["vanilla"]["processor"]
            oracle = criterion_point(refs["oracle"]["model"], processor, benchmark)
            data = method_data(benchmark)
            for i, overrides in enumerate(variants):
                model, _, _, steps = run_method(args.method, vanilla, processor, data, seed_config, **overrides)
                point = criterion_point(model, processor, benchmark)
                d = distance(point, oracle, DISTANCE_METRICS)
                totals[i] += d / len(seeds)
                shown = " ".join(f"{k[:-4]}={v:.2f}" for k, v in point.items())
                print(f"seed {seed} {json.dumps(overrides)} steps={steps} {shown} distance={d:.3f}", flush=True)
    for overrides, total in zip(variants, totals):
        print(f"mean {json.dumps(overrides)} distance={total:.3f}")


if __name__ == "__main__":
    main()
