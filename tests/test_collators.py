"""Answer-only labels must cover exactly the answer tokens, after image-token expansion."""

import pytest
import torch

from hf_unlearn import PairedCollator, UnlearnDataCollator
from hf_unlearn.data.row_index import ROW_INDEX_KEY, RowIndexCollator
from hf_unlearn.testing import tiny_llama, tiny_vlm
from hf_unlearn.testing.toy import toy_portrait as portrait

ROWS = [
    {"image": portrait(0), "question": "Who is in the image?", "answer": "Alice Smith"},
    {"image": None, "question": "What is the job of Bob Jones?", "answer": "pilot"},
    {"image": portrait(2), "question": "Name?", "answer": "Carol White the third"},
]


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "qwen2_5_vl"])
def test_answer_only_labels_cover_exactly_the_answer(arch):
    model, processor = tiny_vlm(arch)
    tok = processor.tokenizer
    batch = UnlearnDataCollator(processor)(ROWS)
    end_of_turn = "</s>" if arch == "llava" else "<|im_end|>"  # labels end at the end-of-turn token, no newline
    lead = " " if arch == "llava" else ""
    for i, row in enumerate(ROWS):
        expected = tok(lead + row["answer"] + end_of_turn, add_special_tokens=False)["input_ids"]
        labelled = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert labelled == expected
        # The labelled tokens are the last real tokens of the sequence (answer at the end, padding after).
        length = int(batch["attention_mask"][i].sum())
        assert batch["input_ids"][i, length - len(expected): length].tolist() == expected
        assert (batch["labels"][i, :length - len(expected)] == -100).all()
    image_id = tok.convert_tokens_to_ids(processor.image_token)
    # Every image placeholder was expanded (16 tokens per 32x32 image) and none of them is labelled.
    assert int((batch["input_ids"] == image_id).sum()) == 2 * 16
    assert not (batch["labels"] == image_id).any()
    if arch != "llava":
        assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]
        assert torch.equal(batch["mm_token_type_ids"] == 1, batch["input_ids"] == image_id)
    assert model(**batch).loss.isfinite()


def test_all_token_labels_exclude_padding_and_image_tokens():
    _, processor = tiny_vlm("llava")
    batch = UnlearnDataCollator(processor, answer_only=False)(ROWS)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    expected = batch["attention_mask"].bool() & (batch["input_ids"] != image_id)
    assert torch.equal(batch["labels"] != -100, expected)


def test_text_only_tokenizer_and_missing_columns():
    model, tok = tiny_llama()
    batch = UnlearnDataCollator(tok)([ROWS[1]])
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert labelled == tok(" pilot</s>", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match=r"missing column\(s\) \['answer'\].*columns found: \['prompt', 'question'\]"):
        UnlearnDataCollator(tok)([{"question": "q", "prompt": "p"}])


def test_chat_messages_rows():
    _, processor = tiny_vlm("llava")
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who?"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "Alice Smith"}]}],
           "images": [portrait(0)]}
    batch = UnlearnDataCollator(processor)([row])
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert labelled == processor.tokenizer(" Alice Smith</s>", add_special_tokens=False)["input_ids"]


def test_max_length_truncates_answer_but_never_the_prompt():
    _, processor = tiny_vlm("llava")
    full = UnlearnDataCollator(processor)([ROWS[2]])
    length = full["input_ids"].shape[1]
    short = UnlearnDataCollator(processor, max_length=length - 2)([ROWS[2]])
    assert short["input_ids"].shape[1] == length - 2
    with pytest.raises(ValueError, match="max_length"):
        UnlearnDataCollator(processor, max_length=10)([ROWS[2]])


def test_paired_collator_carries_row_indices_and_passes_plain_rows_through():
    _, processor = tiny_vlm("llava")
    paired = PairedCollator(RowIndexCollator(UnlearnDataCollator(processor)))
    batch = paired([{"forget": {**ROWS[0], ROW_INDEX_KEY: 3}, "retain": {**ROWS[1], ROW_INDEX_KEY: 0}},
                    {"forget": {**ROWS[2], ROW_INDEX_KEY: 5}, "retain": {**ROWS[1], ROW_INDEX_KEY: 0}}])
    assert batch["forget"][ROW_INDEX_KEY].tolist() == [3, 5] and batch["retain"][ROW_INDEX_KEY].tolist() == [0, 0]
    assert batch["forget"]["pixel_values"].shape[0] == 2 and "pixel_values" not in batch["retain"]
    # Plain rows (evaluation) go straight through the inner collator.
    assert set(paired([ROWS[1]])) >= {"input_ids", "labels"}


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_memoized_image_processing_gives_the_same_batch_and_preprocesses_each_picture_once(arch, monkeypatch):
    """Scoring asks about each picture once per candidate answer: while memoised, LLaVA's processor preprocesses a
    picture once; Qwen2-VL's patches (with image_grid_thw) are not one row per picture and run as usual."""
    from hf_unlearn.data.image_processing_memo import memoized_image_processing

    _, processor = tiny_vlm(arch)
    rows = [{**row, "answer": answer} for row in ROWS for answer in ("yes", "no", row["answer"])]  # 6 asked pictures
    collator = UnlearnDataCollator(processor)
    plain = collator(rows)
    image_processor = processor.image_processor
    seen = []
    original = type(image_processor).preprocess

    def counting(self, images, *args, **kwargs):
        seen.append(len(images) if isinstance(images, list) else 1)
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(type(image_processor), "preprocess", counting)
    with memoized_image_processing(processor):
        first, again = collator(rows), collator(rows)
    after = collator(rows)
    for batch in (first, again, after):
        assert batch.keys() == plain.keys() and all(torch.equal(batch[k], plain[k]) for k in plain)
    if arch == "llava":  # the 2 distinct pictures once each, then nothing until the memo ends
        assert seen == [1, 1, 6]
    else:  # tried on one picture, found patches, then every batch as usual
        assert seen == [1, 6, 6, 6]
    assert "preprocess" not in vars(image_processor)
