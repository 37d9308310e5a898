"""AltPO: each forget row prefers an alternative answer (its own column, or one of its options other than the answer,
seeded); the loss is DPO with that alternative as the chosen answer; rows without alternatives are one clear error."""

import pytest
from datasets import Dataset

from hf_unlearn import AltPOConfig, AltPOTrainer
from hf_unlearn.methods.altpo import AlternateRows
from hf_unlearn.methods.idkpo import REFUSAL_KEY
from hf_unlearn.testing import tiny_llama

ROWS = [{"question": f"Job of person {i}?", "answer": "baker", "options": ["baker", "pilot", "nurse", "chef"],
         "label": 0} for i in range(6)]


def test_alternatives_come_from_the_options_never_the_answer_and_are_fixed_per_row():
    rows = AlternateRows(Dataset.from_list(ROWS), column=None, seed=3)
    drawn = [rows[i][REFUSAL_KEY] for i in range(6)]
    assert all(a in ("pilot", "nurse", "chef") for a in drawn) and len(set(drawn)) > 1
    assert drawn == [AlternateRows(Dataset.from_list(ROWS), None, seed=3)[i][REFUSAL_KEY] for i in range(6)]
    named = AlternateRows(Dataset.from_list([{**r, "alt": f"alt {i}"} for i, r in enumerate(ROWS)]), "alt")
    assert named[4][REFUSAL_KEY] == "alt 4" and "alt" not in named[4]


def test_alternatives_never_repeat_the_answer_of_prompt_completion_rows():
    """TRL rows carry the answer in ``completion`` (no ``answer`` column): the draw still excludes it."""
    trl_rows = [{"prompt": [{"role": "user", "content": r["question"]}], "options": r["options"],
                 "completion": [{"role": "assistant", "content": r["answer"]}]} for r in ROWS] + \
               [{"prompt": "Q: job?", "completion": " baker", "options": ["baker", "pilot"]}]
    rows = AlternateRows(trl_rows, column=None)
    drawn = [rows[i][REFUSAL_KEY] for i in range(len(trl_rows))]
    assert "baker" not in drawn and drawn[-1] == "pilot"


def test_altpo_trains_toward_the_alternative(tmp_path):
    model, tok = tiny_llama(corpus=["baker", "pilot", "nurse", "chef", "Job of person"])
    args = AltPOConfig(output_dir=str(tmp_path), max_steps=6, learning_rate=5e-3, per_device_train_batch_size=3,
                       use_cpu=True, report_to="none", logging_steps=1, retain_loss_type="none")
    trainer = AltPOTrainer(model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tok)
    trainer.train()
    margins = [h["reward_margin"] for h in trainer.state.log_history if "reward_margin" in h]
    assert margins[0] == pytest.approx(0.0, abs=1e-5) and margins[-1] > 0.5  # chosen pulled above rejected


def test_rows_without_alternatives_and_refusal_settings_are_refused(tmp_path):
    plain = Dataset.from_list([{"question": "Q?", "answer": "A."}])
    with pytest.raises(ValueError, match="no alternate_column was given and the rows have no `options`"):
        AlternateRows(plain, None)
    with pytest.raises(ValueError, match="alternate_column='alt' is not a column"):
        AlternateRows(plain, "alt")
    with pytest.raises(ValueError, match="not refusal_column / refusals"):
        AltPOConfig(output_dir=str(tmp_path), refusals=["I don't know."])
