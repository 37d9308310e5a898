"""A standard `transformers.Trainer` fine-tuning script, turned into an unlearning script by swapping one class.

    python examples/drop_in_trainer.py --trainer Trainer      # fine-tune the tiny LLaVA on every toy row
    python examples/drop_in_trainer.py --trainer GATrainer    # same script: gradient ascent on the forget rows
    python examples/drop_in_trainer.py --trainer NPOTrainer   # same script: NPO

The only differences from the fine-tuning run are the class and the `retain_dataset=` argument.
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments

from hf_unlearn import GATrainer, NPOTrainer, UnlearnDataCollator
from hf_unlearn.testing import tiny_llava
from hf_unlearn.testing.toy import JOBS, NAMES, toy_people

TRAINERS = {"Trainer": Trainer, "GATrainer": GATrainer, "NPOTrainer": NPOTrainer}


def main(trainer: str = "Trainer", model_path: str | None = None, output_dir: str = "runs/drop_in",
         max_steps: int = 10, learning_rate: float = 1e-3):
    if model_path:
        model = AutoModelForImageTextToText.from_pretrained(model_path)
        processor = AutoProcessor.from_pretrained(model_path)
    else:
        model, processor = tiny_llava(corpus=NAMES + JOBS)
    data = toy_people()

    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=2, max_steps=max_steps, learning_rate=learning_rate,
        remove_unused_columns=False, report_to="none", save_strategy="no", use_cpu=True, logging_steps=5,
    )
    trainer_cls = TRAINERS[trainer]
    # Fine-tuning trains on everything; unlearning trains on the forget rows and keeps the retain rows.
    train_dataset = data["all"] if trainer_cls is Trainer else data["forget"]
    extra = {} if trainer_cls is Trainer else {"retain_dataset": data["retain"]}
    trainer = trainer_cls(
        model=model, args=args, train_dataset=train_dataset, data_collator=UnlearnDataCollator(processor),
        processing_class=processor, **extra,
    )
    trainer.train()
    trainer.save_model(output_dir)
    return trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", choices=sorted(TRAINERS), default="Trainer")
    parser.add_argument("--model", default=None, help="A saved model directory (default: a fresh tiny LLaVA).")
    parser.add_argument("--output-dir", default="runs/drop_in")
    parser.add_argument("--max-steps", type=int, default=10)
    a = parser.parse_args()
    main(a.trainer, a.model, a.output_dir, a.max_steps)
