"""Stage B's name alignment: the face written where, and as, the name is read (benchmark v3, item 1).

An image question is its person's text question with the image tokens in the name's slot ("What is the job of
<face>?" / "What is the job of Brisa Coldmere?"); everything around the slot is the same tokens. Answer loss alone
lets the projector find *any* soft prompt that makes the frozen language model produce the answers, and a soft prompt
reaches the facts through representations other than the name's (measured with 16 image tokens: 0.34-0.52 of the
image answers followed a text-only edit of the person's facts; with two image tokens and answer loss only, 0.68).

``NameAlignment`` adds a target at the language model's input: the image tokens of a person's question should be
the input embeddings of that person's name tokens (mean squared error over the targets' mean square). This needs as
many image tokens as the name has tokens (the quick configuration: two, a first and a last name of one token each,
and a 1 x 2 patch grid). When they match, the language model reads the face exactly as it reads the name, so a fact
edited through the name is read through the face too (measured: 0.94-0.98 of the edited image answers follow).
With ``shapes`` (``IdentityModelConfig.shapes_named``, a candidate) a drawn shape is aligned the same way to its name
("What colour is the<image>?" / "What colour is the red star?": the two image tokens to " red" and " star"; the row's
``slot_name`` names it). Without it, a shape's image tokens are a soft prompt, and with POPE's yes/no questions added
one vanilla plateaued at 0.89 on the drawn shapes for 250 epochs (docs/benchmark_v3.md).
"""

from __future__ import annotations

import datasets
import torch

from ..data.collators import UnlearnDataCollator
from ..data.identity_benchmark import PERSON_SLOT, SHAPE_SLOT, SLOT_NAME


def named_questions(image_rows: datasets.Dataset, text_rows: datasets.Dataset,
                    shapes: bool = False) -> list[str | None]:
    """For each image row, its question with the name in the slot: the same person's text question (found in
    ``text_rows`` by person and template), or with ``shapes`` for a drawn shape the question with its ``slot_name``
    ("the red star") in ``SHAPE_SLOT``; None for a row with neither (no target)."""
    by_person: dict[int, list[str]] = {}
    for pid, question in zip(text_rows["person_id"], text_rows["question"]):
        by_person.setdefault(pid, []).append(question)
    names = image_rows[SLOT_NAME] if shapes and SLOT_NAME in image_rows.column_names else [None] * len(image_rows)
    named: list[str | None] = []
    for pid, question, name in zip(image_rows["person_id"], image_rows["question"], names):
        twin = None
        if PERSON_SLOT in question:
            before, after = question.split(PERSON_SLOT, 1)
            twin = next((q for q in by_person.get(pid, []) if q.startswith(before) and q.endswith(after)), None)
        elif SHAPE_SLOT in question and name:
            twin = question.replace(SHAPE_SLOT, name)
        named.append(twin)
    return named


def _collate(processor, rows: datasets.Dataset) -> dict[str, torch.Tensor]:
    return dict(UnlearnDataCollator(processor)(list(rows)))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class NameAlignment:
    """The input-level target of every person and named drawn-shape row of a stage-B training set (see the module
    docstring).

    Args:
        model: the stage-A model (its input embeddings are the targets; the language model stays frozen in stage B).
        processor: its processor (the image rows are collated with it, exactly as ``fit`` collates them).
        image_rows: stage B's rows, in the order ``fit`` collates them.
        text_rows: the named text questions of the same people.
        shapes: align the drawn shapes too, to their ``slot_name``'s colour and shape words (a model whose chat
            template keeps the shape's article: ``identity_llava(shapes_named=True)``).

    Raises ``ValueError`` when a person row has no named twin in ``text_rows`` or, with ``shapes``, a drawn-shape row
    has no ``slot_name`` (the alignment would silently skip them), or when a name has a different number of tokens
    than an image has.
    """

    def __init__(self, model, processor, image_rows: datasets.Dataset, text_rows: datasets.Dataset,
                 shapes: bool = False):
        image_token = model.config.image_token_id
        named = named_questions(image_rows, text_rows, shapes)
        questions = image_rows["question"]
        orphans = sum(PERSON_SLOT in q and twin is None for q, twin in zip(questions, named))
        if orphans:
            raise ValueError(f"NameAlignment found no named twin for {orphans} person rows: pass the named text "
                             "questions of every person in image_rows as text_rows.")
        unnamed = sum(SHAPE_SLOT in q and twin is None for q, twin in zip(questions, named)) if shapes else 0
        if unnamed:
            raise ValueError(f"NameAlignment(shapes=True) found no {SLOT_NAME} for {unnamed} drawn-shape rows: build "
                             "the benchmark with build_identity_benchmark (it names every drawn shape) or pass "
                             "shapes=False.")
        paired = [row for row, twin in enumerate(named) if twin is not None]
        answers = image_rows["answer"]
        image = _collate(processor, image_rows)
        text = _collate(processor, datasets.Dataset.from_dict({
            "question": [named[row] for row in paired], "answer": [answers[row] for row in paired],
            "image": [None] * len(paired)})) if paired else None
        embeddings = model.get_input_embeddings().weight.detach()
        self.positions: dict[int, torch.Tensor] = {}
        self.targets: dict[int, torch.Tensor] = {}
        for j, row in enumerate(paired):
            ids = image["input_ids"][row][image["attention_mask"][row].bool()].tolist()
            text_ids = text["input_ids"][j][text["attention_mask"][j].bool()].tolist()
            start = _common_prefix(ids, text_ids)  # same template and answer around the slot
            end = _common_prefix(ids[::-1], text_ids[::-1])
            name = text_ids[start:len(text_ids) - end]
            slot = [i for i, t in enumerate(ids) if t == image_token]
            if len(name) != len(slot):
                raise ValueError(
                    f"NameAlignment needs as many image tokens as name tokens: {named[row]!r} "
                    f"names its subject in {len(name)} tokens, an image is {len(slot)}. Set the model's patch_grid "
                    f"to {len(name)} patches (IdentityModelConfig.image_patches) or align_weight to 0.")
            self.positions[row] = torch.tensor(slot, dtype=torch.long)
            self.targets[row] = embeddings[name].clone()
        stacked = torch.cat(list(self.targets.values())) if self.targets else embeddings[:1]
        self.scale = stacked.pow(2).mean().clamp_min(1e-12)

    def loss(self, hidden_states: tuple[torch.Tensor, ...], batch_rows: torch.Tensor) -> torch.Tensor:
        """Mean squared error between the batch's named rows' image tokens at the language model's input
        (``hidden_states[0]``) and their names' input embeddings, over the targets' mean square; 0 for a batch without
        named rows. Rows are right-padded, so the positions found when collating every row hold in any batch."""
        inputs = hidden_states[0]
        errors = [(inputs[b, self.positions[r]] - self.targets[r]).pow(2).mean()
                  for b, r in enumerate(batch_rows.tolist()) if r in self.targets]
        if not errors:
            return inputs.new_zeros(())
        return torch.stack(errors).mean() / self.scale
