"""Leave a model's ``forward`` as training found it.

With ``bf16=True`` / ``fp16=True``, accelerate's ``prepare_model`` replaces ``model.forward`` by an autocast wrapper
(and keeps the original in ``model._original_forward``) and never puts it back: every later call, evaluation after
training included, silently runs in reduced precision, so before/after numbers stop being comparable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

_ABSENT = object()
_KEYS = ("forward", "_original_forward")  # instance attributes accelerate sets


@contextmanager
def forward_restored(module: nn.Module) -> Iterator[None]:
    """Restore ``module``'s instance-level ``forward`` (usually none: the class method) when the block exits."""
    saved = {key: module.__dict__.get(key, _ABSENT) for key in _KEYS}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is _ABSENT:
                module.__dict__.pop(key, None)
            else:
                module.__dict__[key] = value
