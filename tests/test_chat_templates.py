"""Chat templates as models ship them: string-only text-LM templates on a VLM processor, and where labels end.

Issue 16 items 1 and 3: SmolLM2's template (``message['content']`` concatenated as a string, like most text LMs')
crashed the collator with a bare TypeError; ChatML templates put a newline after ``<|im_end|>`` that became a label.
"""

import warnings

import pytest
import torch

from hf_unlearn import UnlearnDataCollator
from hf_unlearn.real_llava import SMOLLM2_CHAT_TEMPLATE
from hf_unlearn.testing import tiny_vlm
from hf_unlearn.testing.toy import toy_portrait

ROWS = [
    {"image": toy_portrait(0), "question": "Who is in the image?", "answer": "Alice Smith"},
    {"image": None, "question": "What is the job of Bob Jones?", "answer": "pilot"},
]


def _decoded(tok, batch, i, labels=False):
    ids = batch["labels"][i][batch["labels"][i] != -100] if labels else batch["input_ids"][i][
        batch["attention_mask"][i].bool()]
    return tok.decode(ids)


@pytest.mark.parametrize("where", ["processor", "tokenizer"])
def test_string_only_template_renders_image_placeholders_with_one_warning(where):
    model, processor = tiny_vlm("llava")
    if where == "processor":
        processor.chat_template = SMOLLM2_CHAT_TEMPLATE
    else:  # no template on the processor: the tokenizer's (a text model's) is used
        processor.chat_template = None
        processor.tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    collator = UnlearnDataCollator(processor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = collator(ROWS)
        collator(ROWS)  # warned once per collator, not per batch
    messages = [str(w.message) for w in caught if "string content only" in str(w.message)]
    assert len(messages) == 1 and "processor.chat_template" in messages[0]
    tok = processor.tokenizer
    text = _decoded(tok, batch, 0)
    # SmolLM2's layout, the placeholder expanded to the 16 image tokens of a 32x32 image, the question after it
    assert "<|im_start|>system\nYou are a helpful AI assistant named SmolLM" in text
    assert "<|im_start|>user\n" + "<image>" * 16 + "\nWho is in the image?<|im_end|>\n<|im_start|>assistant\n" in text
    assert _decoded(tok, batch, 1).endswith("<|im_start|>user\nWhat is the job of Bob Jones?<|im_end|>\n"
                                            "<|im_start|>assistant\npilot<|im_end|>\n")
    assert _decoded(tok, batch, 0, labels=True).startswith("Alice Smith")
    assert model(**batch).loss.isfinite()


def test_multimodal_template_is_left_alone():
    _, processor = tiny_vlm("llava")  # its template renders {"type": "image"} parts itself
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no string-template warning
        batch = UnlearnDataCollator(processor)(ROWS)
    assert _decoded(processor.tokenizer, batch, 0).startswith("<s>USER: " + "<image>" * 16 + "\nWho is in the image?")


def test_labels_end_at_the_end_of_turn_token():
    _, processor = tiny_vlm("qwen2_vl")  # ChatML: "<|im_end|>\n" after every turn, <|im_end|> is a special token
    tok = processor.tokenizer
    batch = UnlearnDataCollator(processor)(ROWS)
    for i, row in enumerate(ROWS):
        labelled = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert labelled == tok(row["answer"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        assert labelled[-1] == tok.convert_tokens_to_ids("<|im_end|>")
        length = int(batch["attention_mask"][i].sum())
        assert batch["input_ids"][i, length - 1] == tok.convert_tokens_to_ids("<|im_end|>")  # nothing after it


def test_newline_kept_when_no_special_token_ends_the_turn():
    # A template without an end-of-turn token: the trailing newline is the only end signal, so it stays a label.
    _, processor = tiny_vlm("llava")
    processor.chat_template = ("{% for m in messages %}{{ m['role'] }}: {% for p in m['content'] %}"
                               "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}"
                               "{% endfor %}{{ '\\n' }}"
                               "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    batch = UnlearnDataCollator(processor)([ROWS[1]])
    assert _decoded(processor.tokenizer, batch, 0, labels=True) == "pilot\n"


def test_renderings_are_kept_per_conversation_and_a_changed_template_renders_afresh(monkeypatch):
    """Evaluation renders each question once per candidate answer and per scored model: the text is kept (it cost
    more than the forward passes), and the batch is the one the template renders every time."""
    from transformers.processing_utils import ProcessorMixin

    from hf_unlearn.data.chat_rendering import render_chat_template

    model, processor = tiny_vlm("llava")
    processor.chat_template = SMOLLM2_CHAT_TEMPLATE
    fresh = UnlearnDataCollator(processor)(ROWS)  # before any counting: what an uncached render gives
    calls = []
    original = ProcessorMixin.apply_chat_template

    def counting(self, conversation, *args, **kwargs):
        calls.append(repr(conversation))
        return original(self, conversation, *args, **kwargs)

    monkeypatch.setattr(ProcessorMixin, "apply_chat_template", counting)
    again = UnlearnDataCollator(processor)(ROWS)  # a new collator: the cache belongs to the processor
    assert calls == []
    assert all(torch.equal(fresh[k], again[k]) for k in ("input_ids", "attention_mask", "labels"))

    processor.chat_template = SMOLLM2_CHAT_TEMPLATE.replace("<|im_start|>", "<|im_start|> ")
    changed = UnlearnDataCollator(processor)(ROWS)
    rows_rendered = [c for c in calls if "hf-unlearn-probe" not in c]  # not the new template's one-time probe
    assert len(rows_rendered) == 2 * len(ROWS)  # prompt and full conversation of each row, rendered afresh
    assert changed["input_ids"].shape != fresh["input_ids"].shape or not torch.equal(changed["input_ids"],
                                                                                      fresh["input_ids"])

    # A part holding an object (an image inside the message) cannot be keyed: rendered every time, same text.
    _, processor = tiny_vlm("llava")  # its own template renders content parts
    messages = [{"role": "user", "content": [{"type": "image", "image": toy_portrait(0)},
                                             {"type": "text", "text": "Who is in the image?"}]}]
    calls.clear()
    texts = [render_chat_template(processor, messages, add_generation_prompt=True) for _ in range(2)]
    assert len(calls) == 2 and texts[0] == texts[1]
