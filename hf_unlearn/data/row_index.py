"""Row indices carried through a batch: which stored per-row values (``trainers/reference.py``: NPO's reference
log-probs, VKD's teacher features, RMU's retain activations) belong to the rows of a batch. Every unlearning trainer
indexes its forget and retain rows; the index is never a model input (``UnlearnTrainer.model_inputs`` drops it)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

ROW_INDEX_KEY = "hf_unlearn_row_index"


class IndexedRows(Dataset):
    """``dataset[i]`` plus ``{ROW_INDEX_KEY: i}``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**dict(self.dataset[i]), ROW_INDEX_KEY: int(i)}


class RowIndexCollator:
    """Wrap a row collator: lift the row index out of the rows and add it to the batch as a LongTensor."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, rows: list[dict]) -> dict:
        if not rows or ROW_INDEX_KEY not in rows[0]:
            return self.collator(rows)
        index = torch.tensor([r[ROW_INDEX_KEY] for r in rows], dtype=torch.long)
        batch = dict(self.collator([{k: v for k, v in r.items() if k != ROW_INDEX_KEY} for r in rows]))
        batch[ROW_INDEX_KEY] = index
        return batch
