"""Stage B's name alignment (benchmark v3): image questions paired with their named twins (a person's text question;
a drawn shape's question with its name in the slot), the loss it adds (the image tokens against the name's input
embeddings), and the projector learning to write the face as the name."""

import datasets
import pytest
import torch

from hf_unlearn.data.collators import UnlearnDataCollator
from hf_unlearn.data.identity_benchmark import (
    PERSON_SLOT,
    SHAPE_SLOT,
    SLOT_NAME,
    IdentityBenchmarkConfig,
    build_identity_benchmark,
    identity_corpus,
    image_training_set,
)
from hf_unlearn.demo.identity import StageRecipe, fit
from hf_unlearn.demo.identity_alignment import NameAlignment, named_questions


@pytest.fixture(scope="module")
def small():
    from hf_unlearn.real_llava import identity_llava

    bench = build_identity_benchmark(IdentityBenchmarkConfig(num_people=4, num_holdout_people=1,
                                                             num_validation_people=1, forget_ratio=0.25,
                                                             num_general=4, seed=0))
    model, processor = identity_llava(seed=0, image_size=56, vision_layers=2, corpus=identity_corpus(bench),
                                      vocab_size=1024, hidden_size=64, num_layers=2, patch_grid=(1, 2))
    text = datasets.concatenate_datasets([bench["forget_qa"], bench["retain_qa"]])
    return bench, model, processor, image_training_set(bench, "vanilla"), text


@pytest.fixture(scope="module")
def shapes_named(small):
    """The same model with the chat template of ``shapes_named`` (the shape slot keeps its article)."""
    from hf_unlearn.real_llava import identity_llava

    bench = small[0]
    return identity_llava(seed=0, image_size=56, vision_layers=2, corpus=identity_corpus(bench), vocab_size=1024,
                          hidden_size=64, num_layers=2, patch_grid=(1, 2), shapes_named=True)


def test_every_person_question_has_its_named_twin_and_drawn_shapes_their_names_when_asked(small):
    _, _, _, rows, text = small
    named = named_questions(rows, text, shapes=True)
    by_question = {q: i for i, q in enumerate(text["question"])}
    for row, twin in zip(rows, named):
        if PERSON_SLOT in row["question"]:  # the same person's text question, with the same answer
            match = text[by_question[twin]]
            assert match["person_id"] == row["person_id"] and match["answer"] == row["answer"]
            before, after = row["question"].split(PERSON_SLOT)
            assert twin.startswith(before) and twin.endswith(after)
        else:  # "What colour is the shape in the image?" -> "What colour is the red star?"
            assert SHAPE_SLOT in row["question"] and row[SLOT_NAME].startswith("the ")
            assert twin == row["question"].replace(SHAPE_SLOT, row[SLOT_NAME])
            colour, shape = row[SLOT_NAME].split()[1:]
            assert row["answer"] == (colour if row["question"].startswith("What colour") else shape)
    assert sum(PERSON_SLOT in q for q in rows["question"]) == 4 * 10  # 4 trained people x 10 image facts
    assert None not in named and len(named) == 4 * 10 + 4  # and the 4 drawn shapes
    # Version 3 (shapes=False) leaves the drawn shapes without a target, as does a benchmark without their names.
    assert [q for q, p in zip(named_questions(rows, text), named) if q != p] == [None] * 4
    assert named_questions(rows.remove_columns(SLOT_NAME), text, shapes=True).count(None) == 4


def test_a_drawn_shapes_image_tokens_stand_where_its_colour_and_shape_words_do(small, shapes_named):
    _, default_model, default_processor, rows, text = small
    model, processor = shapes_named
    alignment = NameAlignment(model, processor, rows, text, shapes=True)
    collate = UnlearnDataCollator(processor)
    embeddings = model.get_input_embeddings().weight
    shapes = [i for i, q in enumerate(rows["question"]) if SHAPE_SLOT in q]
    assert len(alignment.targets) == 4 * 10 + len(shapes) and len(shapes) == 4
    for i in shapes:
        row = rows[i]
        image_ids = collate([row])["input_ids"][0].tolist()
        named_ids = collate([{"question": row["question"].replace(SHAPE_SLOT, row[SLOT_NAME]),
                              "answer": row["answer"], "image": None}])["input_ids"][0].tolist()
        words = processor.tokenizer(" " + row[SLOT_NAME].split(" ", 1)[1], add_special_tokens=False)["input_ids"]
        slot = alignment.positions[i].tolist()
        assert len(words) == 2 and image_ids[:slot[0]] + words + image_ids[slot[-1] + 1:] == named_ids
        assert processor.tokenizer.convert_ids_to_tokens(image_ids[slot[0] - 1]) == "Ġthe"  # the article stays
        assert torch.equal(alignment.targets[i], embeddings[words].detach())
    # Version 3's template puts the image in place of the article too: "the red star" is 3 tokens against 2.
    with pytest.raises(ValueError, match="as many image tokens as name tokens.*3 tokens, an image is 2"):
        NameAlignment(default_model, default_processor, rows, text, shapes=True)
    # Shapes asked for but not named: refused, not skipped.
    with pytest.raises(ValueError, match="no slot_name for 4 drawn-shape rows"):
        NameAlignment(model, processor, rows.remove_columns(SLOT_NAME), text, shapes=True)


def test_the_loss_is_the_mean_squared_gap_to_the_names_input_embeddings(small):
    _, model, processor, rows, text = small
    alignment = NameAlignment(model, processor, rows, text)
    picks = [0, 1, 2]
    batch = dict(UnlearnDataCollator(processor)([rows[i] for i in picks]))
    assert batch["pixel_values"].shape[-2:] == (14, 28) and model.config.image_seq_length == 2  # a 1 x 2 patch grid
    embeddings = model.get_input_embeddings().weight
    twins = named_questions(rows, text)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        loss = alignment.loss(out.hidden_states, torch.tensor(picks))
        # By hand: the name cut out of the twin question, tokenized on its own with its leading space (as the
        # tokenizer reads it after "of"), against the two image tokens the model puts at the language model's input.
        errors = []
        for b, i in enumerate(picks):
            before, after = rows[i]["question"].split(PERSON_SLOT)
            named = twins[i]
            name = named[len(before):len(named) - len(after)]
            ids = processor.tokenizer(" " + name, add_special_tokens=False)["input_ids"]
            assert len(ids) == 2  # a first and a last name, one token each
            slot = (batch["input_ids"][b] == model.config.image_token_id).nonzero().squeeze(-1)
            assert slot.tolist() == [slot[0].item(), slot[0].item() + 1]
            # The face takes the name's place exactly: the image question with the name's tokens in the slot is the
            # named question, token for token (no space token of the image's own).
            image_ids = batch["input_ids"][b, :int(batch["attention_mask"][b].sum())].tolist()
            named_ids = UnlearnDataCollator(processor)([{"question": named, "answer": rows[i]["answer"],
                                                         "image": None}])["input_ids"][0].tolist()
            assert image_ids[:slot[0]] + ids + image_ids[slot[-1] + 1:] == named_ids
            errors.append((out.hidden_states[0][b, slot] - embeddings[ids]).pow(2).mean())
        scale = torch.stack([t for t in alignment.targets.values()]).pow(2).mean()
    assert alignment.positions.keys() == alignment.targets.keys() and len(alignment.targets) == 4 * 10
    # Float32 means over a few hundred terms: relative error well under 1e-5.
    assert loss.item() == pytest.approx((torch.stack(errors).mean() / scale).item(), rel=1e-5)


def test_a_name_and_an_image_of_different_lengths_are_refused(small):
    from hf_unlearn.real_llava import identity_llava

    bench, _, _, rows, text = small
    model, processor = identity_llava(seed=0, image_size=56, vision_layers=2, corpus=identity_corpus(bench),
                                      vocab_size=1024, hidden_size=64, num_layers=2)  # 16 image tokens
    with pytest.raises(ValueError, match="as many image tokens as name tokens.*2 tokens, an image is 16"):
        NameAlignment(model, processor, rows, text)


def test_person_rows_without_their_named_question_are_refused_not_skipped(small):
    _, model, processor, rows, text = small
    without_one = text.filter(lambda row: row["person_id"] != rows[0]["person_id"])
    with pytest.raises(ValueError, match="no named twin for 10 person rows"):
        NameAlignment(model, processor, rows, without_one)


def test_stage_b_with_the_alignment_moves_only_the_projector_and_closes_the_gap(small):
    import copy

    _, model, processor, rows, text = small
    model = copy.deepcopy(model)
    alignment = NameAlignment(model, processor, rows, text)
    batch = dict(UnlearnDataCollator(processor)(list(rows)))
    index = torch.arange(len(rows))

    def gap():
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
        return alignment.loss(out.hidden_states, index).item()

    before = gap()
    language = {n: p.detach().clone() for n, p in model.named_parameters() if "projector" not in n}
    fit(model, processor, rows, ("projector",), StageRecipe(learning_rate=3e-3, warmup_steps=1, max_epochs=5,
                                                            align_weight=10.0), seed=0, epochs=5,
        alignment=alignment)
    assert all(torch.equal(p.detach(), language[n]) for n, p in model.named_parameters() if n in language)
    assert gap() < 0.5 * before  # measured 1.010 -> 0.107 in 5 epochs on this model
