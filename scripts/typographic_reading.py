"""Can a tiny LLaVA be taught to read the typographic attack's questions? The measurement behind docs/robustness.md.

    python scripts/typographic_reading.py [--seeds 0,1,2] [--epochs 40] [--cache-dir DIR]

The typographic attack's direction test needs a model that reads a question drawn into an image. The quick demo's
tiny LLaVA was never taught to: its vanilla scores at chance on the forget people's canvases. Here the vanilla and
the oracle are each fine-tuned on their own training rows plus the **retain** people's canvases (the attack's own
rendering, ``typographic_rows``, and its neutral instruction), then scored on the **forget** people's canvases, which
neither saw. A model that learnt to read would carry the forget faces it knows into the new layout (vanilla well
above the oracle); one that memorised the retain canvases would not. Writes ``docs/results/typographic_reading.json``
(with versions and CPU flags); the figures in docs/robustness.md come from it.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hf_unlearn.demo.tables import TYPOGRAPHIC_READING_FILE  # noqa: E402


def fine_tune(model, processor, rows, epochs: int, learning_rate: float, seed: int) -> None:
    """AdamW over shuffled batches of 16 (answer-only loss, every parameter), as the quick demo trains."""
    import torch

    from hf_unlearn.data.collators import UnlearnDataCollator

    collate, rows = UnlearnDataCollator(processor), list(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=generator).tolist()
        for start in range(0, len(rows), 16):
            model(**collate([rows[i] for i in order[start:start + 16]])).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()


def measure(seed: int, epochs: int, learning_rate: float, cache_dir: str) -> dict:
    import datasets

    from hf_unlearn.data.synthetic import build_synthetic_benchmark, oracle_training_set, vanilla_training_set
    from hf_unlearn.demo import DemoConfig
    from hf_unlearn.demo.references import load_or_train_reference_models
    from hf_unlearn.evaluation import Evaluator
    from hf_unlearn.evaluation.input_attacks import typographic_rows

    config = DemoConfig.quick(seed=seed)
    bench = build_synthetic_benchmark(config.benchmark)
    refs = load_or_train_reference_models(bench, config, cache_dir, False, lambda line: None)
    retain_canvases = typographic_rows(bench["retain_vqa"])
    columns = ["image", "question", "answer"]
    out = {}
    for kind, own_rows in (("vanilla", vanilla_training_set(bench)), ("oracle", oracle_training_set(bench))):
        model, processor = copy.deepcopy(refs[kind]["model"]), refs[kind]["processor"]

        def scores():
            evaluator = Evaluator(model, processor, bench, batch_size=config.eval_batch_size)
            return {"forget_vqa_acc": evaluator.mcq_accuracy("forget_vqa"),
                    "typographic_acc": evaluator.run_attacks("typographic")["typographic"]["typographic_acc"],
                    "retain_canvases_acc": evaluator.mcq_accuracy(retain_canvases)}

        before = scores()
        train = datasets.concatenate_datasets([own_rows.select_columns(columns),
                                               retain_canvases.select_columns(columns)])
        fine_tune(model, processor, train, epochs, learning_rate, seed)
        out[kind] = {"before": before, "after": scores()}
        print(f"seed {seed} {kind}: {out[kind]}", flush=True)
    out["num_forget_questions"] = len(bench["forget_vqa"])
    out["num_retain_canvases"] = len(retain_canvases)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--output", default=TYPOGRAPHIC_READING_FILE)
    args = parser.parse_args(argv)
    import torch

    from hf_unlearn.demo.pipeline import deterministic
    from hf_unlearn.provenance import environment
    from hf_unlearn.utils import write_json_atomic

    torch.set_num_threads(1)
    cache = args.cache_dir or tempfile.mkdtemp(prefix="typographic_")
    with deterministic():
        per_seed = {str(s): measure(int(s), args.epochs, args.learning_rate, cache) for s in args.seeds.split(",")}
    write_json_atomic(args.output, {
        "what": "quick-demo vanilla and oracle fine-tuned on their own rows plus the retain people's typographic "
                "canvases; scored on the forget people's canvases (typographic_acc), which neither saw",
        "settings": {"epochs": args.epochs, "learning_rate": args.learning_rate, "batch_size": 16},
        "per_seed": per_seed, "environment": environment()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
