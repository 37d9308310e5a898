"""Chat templates rendered once per distinct conversation.

Evaluation renders the same question many times: once per candidate answer (the true one, four options, five
perturbed ones) and again for every model a benchmark scores. Jinja rendering is pure Python and cost more than the
forward passes on the demo's models (measured: 6.8 s of a 16.4 s v3 evaluation), so the text is kept per template
owner (a processor or tokenizer) and per conversation. A conversation holding anything but plain values (an image
object inside a message part) is rendered every time: its key could not tell two of them apart.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

MAX_CACHED_RENDERINGS = 1 << 16  # per template owner; a few hundred bytes each


class _NotPlain(Exception):
    """A message holds a value the cache cannot key on."""


def _frozen(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return tuple(sorted((key, _frozen(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item) for item in value)
    raise _NotPlain


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache_of(template_owner) -> OrderedDict | None:
    try:
        return _CACHES.setdefault(template_owner, OrderedDict())
    except TypeError:  # not weak-referenceable: render every time
        return None


def render_chat_template(template_owner, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """``template_owner.apply_chat_template(messages, add_generation_prompt=..., tokenize=False)``, memoised.

    The key holds what the rendering reads: the template, the special tokens a template may print, and the
    conversation itself, so changing the owner's template or its begin/end tokens renders afresh.
    """
    def render() -> str:
        return template_owner.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)

    cache = _cache_of(template_owner)
    if cache is None:
        return render()
    tokenizer = getattr(template_owner, "tokenizer", template_owner)
    try:
        key = (_frozen(template_owner.chat_template), getattr(tokenizer, "bos_token", None),
               getattr(tokenizer, "eos_token", None), add_generation_prompt, _frozen(messages))
    except _NotPlain:
        return render()
    text = cache.get(key)
    if text is None:
        text = cache[key] = render()
        if len(cache) > MAX_CACHED_RENDERINGS:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return text
