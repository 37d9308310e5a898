"""A collator for raw text continuation (MUSE): no chat template, labels on the continuation only.

Rows use the common schema with ``kind="text"``: ``question`` is the prefix (may be empty: a whole document is then
the continuation) and ``answer`` the text that follows it. MUSE's models are base LMs trained on raw text, so a chat
template would score text the model never saw in that form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.utils import pad

from .collators import IGNORE_INDEX, tokenizer_of


@dataclass
class CompletionCollator:
    """``[BOS] prefix continuation`` per row, right-padded; labels are -100 except on the continuation tokens.

    Args:
        processing_class: a tokenizer (or a processor: its tokenizer is used).
        max_length: truncate the continuation so that the row fits (a prefix alone this long is an error).
    """

    processing_class: Any
    max_length: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("Cannot collate an empty batch.")
        tok = tokenizer_of(self.processing_class)
        if tok.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token = tokenizer.eos_token` first.")
        ids, labels = [], []
        for row in rows:
            prefix, continuation = row["question"] or "", row["answer"] or ""
            prompt = tok(prefix, add_special_tokens=True)["input_ids"]
            # One space between prefix and continuation unless either side brings its own (MUSE's insert_space).
            sep = " " if prefix and continuation and not prefix[-1].isspace() and not continuation[0].isspace() else ""
            target = tok(sep + continuation, add_special_tokens=False)["input_ids"]
            if self.max_length is not None:
                if len(prompt) >= self.max_length:
                    raise ValueError(f"A prefix of {len(prompt)} tokens leaves no room for its continuation within "
                                     f"max_length={self.max_length}; raise max_length.")
                target = target[: self.max_length - len(prompt)]
            if not target:
                raise ValueError("A row has an empty continuation: nothing to score or learn.")
            ids.append(torch.tensor(prompt + target))
            labels.append(torch.tensor([IGNORE_INDEX] * len(prompt) + target))
        return {
            "input_ids": pad(ids, padding_value=tok.pad_token_id, padding_side="right"),
            "attention_mask": pad([torch.ones(len(i), dtype=torch.long) for i in ids], padding_value=0,
                                  padding_side="right"),
            "labels": pad(labels, padding_value=IGNORE_INDEX, padding_side="right"),
        }
