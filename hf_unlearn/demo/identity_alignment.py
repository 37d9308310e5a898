"""Stage B's name alignment: the face read by the language model the way the name is read (benchmark v3, item 1).

An image question is its person's text question with the image tokens in the name's slot ("What is the job of
<face>?" / "What is the job of Brisa Coldmere?"); everything after the slot is the same tokens. Answer loss alone lets
the projector find *any* soft prompt that makes the frozen language model produce the answers, and a soft prompt can
reach the facts through representations other than the name's: measured, only 0.36 of image answers followed a
text-only edit of the person's facts.

``NameAlignment`` adds a target: at every position after the slot, each decoder layer's output for the image question
should equal its output for the twin text question (mean squared error over the teacher's mean squared norm). The
teacher is the frozen stage-A language model on the text question, computed once. When the two match, everything the
language model computes after the slot is the same for the face and for the name, so a fact edited through the name
is read through the face too.
"""

from __future__ import annotations

import datasets
import torch

from ..data.collators import UnlearnDataCollator
from ..data.identity_benchmark import PERSON_SLOT


def named_twins(image_rows: datasets.Dataset, text_rows: datasets.Dataset) -> list[int | None]:
    """For each image row, the index in ``text_rows`` of the same person's question with the name in the slot
    (None for rows without a person slot, e.g. the drawn shapes)."""
    by_person: dict[int, list[tuple[int, str]]] = {}
    for i, (pid, question) in enumerate(zip(text_rows["person_id"], text_rows["question"])):
        by_person.setdefault(pid, []).append((i, question))
    twins: list[int | None] = []
    for pid, question in zip(image_rows["person_id"], image_rows["question"]):
        twin = None
        if PERSON_SLOT in question:
            before, after = question.split(PERSON_SLOT, 1)
            twin = next((i for i, q in by_person.get(pid, []) if q.startswith(before) and q.endswith(after)), None)
        twins.append(twin)
    return twins


def _collate(processor, rows: datasets.Dataset) -> dict[str, torch.Tensor]:
    return dict(UnlearnDataCollator(processor)(list(rows)))


def _common_suffix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return n


class NameAlignment:
    """The alignment target of every image row of a stage-B training set (see the module docstring).

    Args:
        model: the stage-A model (its language model is the teacher and stays frozen in stage B).
        processor: its processor.
        image_rows: stage B's rows, in the order ``fit`` collates them.
        text_rows: the named text questions of the same people.
    """

    def __init__(self, model, processor, image_rows: datasets.Dataset, text_rows: datasets.Dataset):
        twins = named_twins(image_rows, text_rows)
        image = _collate(processor, image_rows)
        paired = [i for i, t in enumerate(twins) if t is not None]
        text = _collate(processor, text_rows.select([twins[i] for i in paired]))
        image_len = image["attention_mask"].sum(1)
        text_len = text["attention_mask"].sum(1)
        self.rows = torch.tensor(paired, dtype=torch.long)
        lengths = [_common_suffix(image["input_ids"][i, :image_len[i]], text["input_ids"][j, :text_len[j]])
                   for j, i in enumerate(paired)]
        width = max(lengths, default=0)
        with torch.no_grad():
            was_training = model.training
            model.eval()
            states = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                           output_hidden_states=True).hidden_states[1:]
            model.train(was_training)
        hidden = torch.stack(states, 1)  # (pairs, layers, seq, hidden)
        self.targets = hidden.new_zeros(len(paired), hidden.shape[1], width, hidden.shape[-1])
        self.valid = torch.zeros(len(paired), width, dtype=torch.bool)
        for j, k in enumerate(lengths):
            end = int(text_len[j])
            self.targets[j, :, width - k:] = hidden[j, :, end - k:end]
            self.valid[j, width - k:] = True
        self.width = width
        self.position = {int(r): j for j, r in enumerate(self.rows)}
        self.scale = self.targets[self.valid.unsqueeze(1).expand(-1, hidden.shape[1], -1)].pow(2).mean().clamp_min(
            1e-8)

    def loss(self, hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor,
             batch_rows: torch.Tensor) -> torch.Tensor:
        """Mean squared error between the batch's image rows' layer outputs after the slot and their targets, over
        the targets' mean square; 0 for a batch without person rows."""
        picks = [(b, self.position[int(r)]) for b, r in enumerate(batch_rows) if int(r) in self.position]
        if not picks:
            return hidden_states[-1].new_zeros(())
        states = torch.stack(hidden_states[1:], 1)  # (batch, layers, seq, hidden)
        lengths = attention_mask.sum(1)
        errors = []
        for b, j in picks:
            end = int(lengths[b])
            got = states[b, :, end - self.width:end]
            valid = self.valid[j]
            errors.append((got[:, valid] - self.targets[j][:, valid]).pow(2).mean())
        return torch.stack(errors).mean() / self.scale
