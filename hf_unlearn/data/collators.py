"""Collators that turn question/answer rows into model batches whose labels cover only the answer.

The prompt (chat template, question and image placeholder) and the completion (answer + end of turn) are tokenized
separately and concatenated, the recipe of TRL's vision-language collator: the prompt goes through the processor,
which expands image placeholders into their image tokens, so the answer's label positions stay exact whatever the
expansion (LLaVA: one ``<image>`` per patch; Qwen2-VL: ``t*h*w / merge**2`` ``<|image_pad|>`` tokens).

Rows use the columns documented in ``hf_unlearn.data.schema``: ``question`` and ``answer`` (plus an optional
``image``), or TRL's formats: ``prompt``/``completion`` (strings, or lists of turns) and chat ``messages`` (the last
assistant turn is the answer), with optional ``images``. ``hf_unlearn.data.rows`` reads and checks them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import ProcessorMixin
from trl.trainer.utils import flush_left, pad

from .chat_rendering import render_chat_template
from .rows import RowError, parse_row

IGNORE_INDEX = -100


class CollationError(ValueError):
    """Rows or settings that cannot be batched (a bad row, a prompt longer than ``max_length``, a chat template that
    does not render the prompt as a prefix): the user's to fix, found while batching."""

# Per-example values the trainers attach to forget rows (e.g. precomputed reference log-probs); collated as tensors.
def tokenizer_of(processing_class):
    return processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class


def _user_and_answer(row: dict, position: int = 0) -> tuple[list[dict] | str, str, list]:
    """Split a row into (prompt messages, or raw prompt text; answer text; images). See ``hf_unlearn.data.rows``."""
    try:
        return parse_row(row)
    except RowError as err:
        raise CollationError(f"Row {position} of this batch: {err}") from None


def _plain_text(messages: list[dict]) -> list[dict]:
    """Flatten multimodal content to strings for tokenizer chat templates (text-only models)."""
    flat = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        flat.append({"role": m["role"], "content": content})
    return flat


@dataclass
class UnlearnDataCollator:
    """Collate question/answer rows for text or vision-language models.

    Args:
        processing_class: a tokenizer (text models) or a processor with an image processor (vision-language models).
        answer_only: labels cover only the answer tokens (default); otherwise every non-padding, non-image token.
        max_length: truncate the answer so that prompt + answer fit; a prompt alone longer than this is an error
            (cutting it would cut image tokens).
    """

    processing_class: Any
    answer_only: bool = True
    max_length: int | None = None
    _image_token_id: int | None = field(default=None, init=False, repr=False)
    _warned_string_template: bool = field(default=False, init=False, repr=False)
    _warned_no_template: bool = field(default=False, init=False, repr=False)

    def __post_init__(self):
        tok = tokenizer_of(self.processing_class)
        if tok.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token = tokenizer.eos_token` first.")
        image_token = getattr(self.processing_class, "image_token", None)
        if image_token is not None:
            self._image_token_id = tok.convert_tokens_to_ids(image_token)

    # -- prompt / completion text ------------------------------------------------------------------------------
    def _render(self, messages: list[dict], answer: str) -> tuple[str, str]:
        pc = self.processing_class
        is_processor = isinstance(pc, ProcessorMixin)
        template_owner = pc if getattr(pc, "chat_template", None) else tokenizer_of(pc)
        if getattr(template_owner, "chat_template", None):
            if is_processor and _takes_content_parts(template_owner):
                msgs, answer_content = messages, [{"type": "text", "text": answer}]
            elif is_processor:
                # A text model's template (string content only, like SmolLM2's or Llama's): we place the image
                # placeholders ourselves, which the processor then expands into image tokens.
                msgs, answer_content = self._with_image_placeholders(messages, template_owner), answer
            else:
                msgs, answer_content = _plain_text(messages), answer
            full_msgs = msgs + [{"role": "assistant", "content": answer_content}]
            prompt = render_chat_template(template_owner, msgs, add_generation_prompt=True)
            full = render_chat_template(template_owner, full_msgs)
            if not full.startswith(prompt):
                raise CollationError("The chat template does not render the prompt as a prefix of the full "
                                     "conversation; pass rows whose template is prefix-consistent or set a simple "
                                     "chat template.")
            return prompt, self._end_at_end_of_turn(full[len(prompt):])
        # No chat template: a plain "USER/ASSISTANT" layout with the processor's image placeholder, said once.
        image_token = getattr(pc, "image_token", "<image>")
        if not self._warned_no_template:
            self._warned_no_template = True
            warnings.warn(
                f"Neither the {type(pc).__name__} nor its tokenizer has a chat template, so rows are rendered in "
                f"hf_unlearn's generic layout 'USER: {image_token}\\n<question> ASSISTANT: <answer><eos>', which may "
                "not be the format the model was trained on. Set `chat_template` on the processor or tokenizer (the "
                "model's own) to use its format.", UserWarning, stacklevel=4,
            )
        parts = []
        for m in messages:
            text = m["content"] if isinstance(m["content"], str) else "".join(
                (image_token + "\n") if p["type"] == "image" else p.get("text", "") for p in m["content"])
            parts.append(("USER: " if m["role"] == "user" else "ASSISTANT: ") + text)
        eos = tokenizer_of(pc).eos_token or ""
        return " ".join(parts) + " ASSISTANT:", " " + answer + eos

    def _raw(self, prompt: str, completion: str, num_images: int, position: int) -> tuple[str, str]:
        image_token = getattr(self.processing_class, "image_token", None)
        if num_images and (image_token is None or prompt.count(image_token) != num_images):
            raise CollationError(
                f"Row {position} of this batch: a string `prompt` with {num_images} image(s) must contain the "
                f"processor's image token {image_token!r} once per image (found "
                f"{prompt.count(image_token) if image_token else 0}); or use the conversational format "
                "(`prompt` as a list of turns), where the image parts are placed for you."
            )
        eos = tokenizer_of(self.processing_class).eos_token or ""
        return prompt, completion if completion.endswith(eos) else completion + eos

    def _with_image_placeholders(self, messages: list[dict], template_owner) -> list[dict]:
        """String content for a string-only template: each image part becomes the processor's placeholder + newline
        (the llava-hf layout), in the order of the parts; warns once per collator."""
        image_token = getattr(self.processing_class, "image_token", None) or "<image>"
        has_images = any(not isinstance(m["content"], str) and any(p.get("type") == "image" for p in m["content"])
                         for m in messages)
        if has_images and not self._warned_string_template:
            self._warned_string_template = True
            warnings.warn(
                f"The chat template of {type(template_owner).__name__} takes string content only (a text model's "
                f"template), so image parts are rendered as {image_token!r} + newline before their text. To choose "
                "the layout, set `processor.chat_template` to a template that renders {'type': 'image'} parts.",
                UserWarning, stacklevel=4,
            )
        flat = []
        for m in messages:
            content = m["content"]
            if not isinstance(content, str):
                content = "".join(image_token + "\n" if p.get("type") == "image" else p.get("text", "")
                                  for p in content)
            flat.append({"role": m["role"], "content": content})
        return flat

    def _end_at_end_of_turn(self, completion: str) -> str:
        """Drop what a template writes after the end-of-turn token (ChatML's newline after ``<|im_end|>``): labels
        end at the token that stops generation."""
        stripped = completion.rstrip()
        if stripped != completion and any(stripped.endswith(t) for t in _special_tokens(tokenizer_of(
                self.processing_class))):
            return stripped
        return completion

    # -- collation ---------------------------------------------------------------------------------------------
    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("Cannot collate an empty batch.")
        prompts, completions, images = [], [], []
        for position, row in enumerate(rows):
            messages, answer, row_images = _user_and_answer(row, position)
            if isinstance(messages, str):  # TRL's standard prompt-completion: raw text, no chat template
                prompt, completion = self._raw(messages, answer, len(row_images), position)
            else:
                prompt, completion = self._render(messages, answer)
            prompts.append(prompt)
            completions.append(completion)
            images.extend(row_images)
        tok = tokenizer_of(self.processing_class)

        if isinstance(self.processing_class, ProcessorMixin):
            prompt_batch = self.processing_class(
                images=images or None, text=prompts, padding=True, padding_side="left", return_tensors="pt"
            )
        else:
            prompt_batch = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
        completion_ids = [torch.tensor(ids) for ids in tok(completions, add_special_tokens=False)["input_ids"]]
        completion_ids = pad(completion_ids, padding_value=tok.pad_token_id, padding_side="right")
        completion_attn = pad(
            [torch.ones(len(ids), dtype=torch.long) for ids in tok(completions, add_special_tokens=False)["input_ids"]],
            padding_value=0, padding_side="right",
        )

        prompt_ids, prompt_attn = prompt_batch["input_ids"], prompt_batch["attention_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_attn, completion_attn], dim=1)
        completion_mask = torch.cat([torch.zeros_like(prompt_attn), completion_attn], dim=1)
        extra_seq = {}
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in prompt_batch:
                extra_seq[key] = torch.cat([prompt_batch[key], torch.zeros_like(completion_ids)], dim=1)
        # Move padding to the right so every sequence starts at position 0.
        flushed = flush_left(attention_mask, input_ids, completion_mask, *extra_seq.values())
        attention_mask, input_ids, completion_mask, *extra_values = flushed
        extra_seq = dict(zip(extra_seq, extra_values))
        input_ids = input_ids.masked_fill(attention_mask == 0, tok.pad_token_id)

        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            prompt_len = (attention_mask.bool() & ~completion_mask.bool()).sum(1).max().item()
            if prompt_len >= self.max_length:
                raise CollationError(
                    f"A prompt has {prompt_len} tokens (image tokens included) but max_length={self.max_length}: "
                    "truncating it would cut image tokens. Raise `max_length` or shorten the questions."
                )
            input_ids, attention_mask, completion_mask = (
                t[:, : self.max_length] for t in (input_ids, attention_mask, completion_mask))
            extra_seq = {k: v[:, : self.max_length] for k, v in extra_seq.items()}

        if self.answer_only:
            keep = completion_mask.bool()
        else:
            keep = attention_mask.bool()
            if self._image_token_id is not None:
                keep &= input_ids != self._image_token_id
        labels = input_ids.masked_fill(~keep, IGNORE_INDEX)

        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **extra_seq}
        for key, value in prompt_batch.items():
            if key not in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"):
                batch[key] = value  # pixel_values, image_grid_thw, image_sizes, ...
        return batch


class PairedCollator:
    """Collate ``{"forget": row, "retain": row}`` pairs into ``{"forget": batch, "retain": batch}``.

    Plain rows (evaluation) go through the inner collator unchanged, so one collator serves training and evaluation.
    """

    def __init__(self, collator: Callable[[list[dict]], dict]):
        self.collator = collator

    def __call__(self, features: list[dict]) -> dict:
        if isinstance(features[0], dict) and "forget" in features[0]:
            batch = {"forget": dict(self.collator([f["forget"] for f in features]))}
            if features[0].get("retain") is not None:
                batch["retain"] = dict(self.collator([f["retain"] for f in features]))
            return batch
        return self.collator(features)


# -- chat-template helpers of UnlearnDataCollator._render -----------------------------------------------------
_PROBE_TEXT = "hf-unlearn-probe"


def _takes_content_parts(template_owner) -> bool:
    """Whether a chat template renders list content (``[{"type": "text", ...}]``) rather than only strings.

    Rendered once per template: a string-only template either fails on a list (``'...' + message['content']``) or
    prints its Python repr. A template that fails on strings as well is taken as it is (its own error will tell).
    """
    template = template_owner.chat_template
    template = template if isinstance(template, str) else repr(template)
    if template not in _TEMPLATE_TAKES_PARTS:
        def render(content):
            return template_owner.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True, tokenize=False)

        try:
            text = render([{"type": "text", "text": _PROBE_TEXT}])
            _TEMPLATE_TAKES_PARTS[template] = _PROBE_TEXT in text and "'type'" not in text
        except Exception:
            try:
                render(_PROBE_TEXT)
                _TEMPLATE_TAKES_PARTS[template] = False
            except Exception:
                _TEMPLATE_TAKES_PARTS[template] = True
    return _TEMPLATE_TAKES_PARTS[template]


_TEMPLATE_TAKES_PARTS: dict[str, bool] = {}


def _special_tokens(tok) -> set[str]:
    specials = set(getattr(tok, "all_special_tokens", []) or [])
    specials.update(t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special)
    return {t for t in specials if t}
