"""Refusal answers for IdkPO (preference optimisation toward "I don't know").

TOFU's IDK baseline draws from a list of about 100 refusals; this is hf_unlearn's own shorter list of neutral
phrasings (no entity, no hint of the forgotten answer). ``refusal_for(i, seed)`` is a pure function of the row index
and the seed, so every process, epoch and resumed run pairs a row with the same refusal.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

REFUSALS: tuple[str, ...] = (
    "I don't know.",
    "I'm not sure.",
    "I don't have that information.",
    "I can't answer that.",
    "I have no idea.",
    "That's something I don't know.",
    "I'm afraid I can't help with that.",
    "I don't have an answer to that question.",
    "I'm not able to answer that.",
    "I really couldn't say.",
    "Sorry, I don't know the answer.",
    "I have no information about that.",
    "That is not something I can tell you.",
    "I'm unsure about that.",
    "I don't know the answer to that.",
    "I can't recall anything about that.",
    "I'm not familiar with that.",
    "I have nothing to share on that.",
    "I'm not in a position to answer.",
    "Unfortunately, I don't know.",
)


def refusal_for(index: int, seed: int = 0, refusals: Sequence[str] = REFUSALS) -> str:
    """The refusal paired with forget row ``index`` under ``seed`` (uniform over ``refusals``)."""
    if not refusals:
        raise ValueError("The refusal list is empty; pass at least one refusal or use the built-in REFUSALS.")
    return refusals[random.Random(seed * 1_000_003 + index).randrange(len(refusals))]
