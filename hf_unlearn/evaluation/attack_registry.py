"""The robustness attacks' registry: name -> a function of an ``AttackContext`` returning named metrics.

An attack is one function and one registration, in the module that implements it::

    def my_attack(ctx: AttackContext) -> dict[str, float]:
        forget = ctx.forget_split()                      # the forget rows the attack re-scores
        copy = make_modified_copy(ctx.model)             # an attack may build a modified copy of the model ...
        return {"my_attack_acc": ctx.evaluator_for(copy).mcq_accuracy(forget)}  # ... scored like the model

    register_attack(AttackSpec("my_attack", my_attack, "One line: what it does.", headline="my_attack_acc"))

``Evaluator.run_attacks`` / ``Evaluator.evaluate(attacks=...)`` and ``hf-unlearn eval --attacks a,b`` find it by name.
An attack that cannot run on what it was given (a text-only model for an image attack, a benchmark without the split
it needs) raises ``AttackSkipped`` with the reason: the evaluator records it in ``skipped`` and the other attacks run.
Metrics are aggregate numbers only, never rows, questions or answers (they go into JSON files and model cards).

The built-in attacks live in ``attacks.py`` (``relearn``), ``probing.py`` (``probing``) and ``input_attacks.py``
(``rephrase``, ``typographic``, ``jailbreak``); ``hf_unlearn.evaluation`` imports them all, so importing any part of
the package registers every attack.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the evaluator imports this module (its run_attacks), never the other way round
    import datasets
    import torch

    from .evaluator import Evaluator

# Names accepted for an attack besides its own (``--attacks relearn`` is ``--relearn``'s attack).
_ALIASES: dict[str, str] = {}


class AttackSkipped(Exception):
    """Raised by an attack that cannot run on this model or benchmark; the message says why (no row content)."""


@dataclass
class AttackContext:
    """What an attack gets: the evaluator of the model under attack (its model, processing class, benchmark and
    settings), the reference model's evaluator when one is given (e.g. the retain-only oracle, same benchmark), the
    seed, and the attack's own options (``{"layer": 4}`` for ``probing``; unknown keys are the attack's to refuse)."""

    evaluator: Evaluator
    reference: Evaluator | None = None
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module:
        return self.evaluator.model

    @property
    def processing_class(self) -> Any:
        return self.evaluator.processing_class

    @property
    def benchmark(self) -> Mapping[str, datasets.Dataset]:
        return self.evaluator.benchmark

    def evaluator_for(self, model: torch.nn.Module) -> Evaluator:
        """An evaluator with this one's processing class, benchmark and settings, for another model (a modified
        copy the attack built): its numbers compare with the model's own."""
        ev = self.evaluator
        return type(ev)(model, ev.processing_class, ev.benchmark, batch_size=ev.batch_size,
                        option_score=ev.option_score, max_new_tokens=ev.max_new_tokens,
                        show_progress=ev.show_progress)

    def split_pair(self, *, images: bool | None = None) -> tuple[str, str]:
        """``("forget_vqa", "retain_vqa")`` for a vision-language model (the visual knowledge being unlearned),
        ``("forget_qa", "retain_qa")`` for a text-only one (``images=True`` asks for the image pair only); the retain
        split may be missing from the benchmark. ``AttackSkipped`` when the forget split cannot be evaluated."""
        ev = self.evaluator
        kinds = ("vqa",) if images else ("vqa", "qa") if ev.supports_images and images is None else ("qa",)
        for kind in kinds:
            name = f"forget_{kind}"
            if name in self.benchmark and len(self.benchmark[name]) > 0 and (kind == "qa" or ev.supports_images):
                return name, f"retain_{kind}"
        if images and not ev.supports_images:
            raise AttackSkipped("needs images, but the processing class has no image processor (text-only model)")
        raise AttackSkipped(f"needs a non-empty {' or '.join(f'forget_{k}' for k in kinds)} split")

    def forget_split(self, *, images: bool | None = None) -> str:
        """The name of the forget split the attack re-scores (see ``split_pair``)."""
        return self.split_pair(images=images)[0]


Attack = Callable[[AttackContext], dict[str, float]]


@dataclass(frozen=True)
class AttackSpec:
    """One registered attack.

    Args:
        name: what ``--attacks`` and ``Evaluator.run_attacks`` call it (lowercase, no commas).
        run: ``ctx -> {metric: value}``; every metric name starts with ``name`` (``probing_acc``), so attacks never
            overwrite each other's or the evaluator's metrics.
        description: one line for ``--help`` and the docs.
        headline: the metric a summary table shows for the attack.
        aliases: other names accepted for it.
    """

    name: str
    run: Attack
    description: str
    headline: str
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.name or self.name != self.name.strip().lower() or "," in self.name:
            raise ValueError(f"Attack name {self.name!r}: use a lowercase name without commas or spaces.")
        if not self.headline.startswith(self.name):
            raise ValueError(f"Attack {self.name!r}: its headline metric {self.headline!r} must start with its name.")


ATTACKS: dict[str, AttackSpec] = {}


def register_attack(spec: AttackSpec) -> AttackSpec:
    """Add ``spec`` to the registry (an existing name is refused: two attacks would share metric names)."""
    for name in (spec.name, *spec.aliases):
        if name in ATTACKS or name in _ALIASES:
            raise ValueError(f"An attack named {name!r} is already registered.")
    ATTACKS[spec.name] = spec
    _ALIASES.update(dict.fromkeys(spec.aliases, spec.name))
    return spec


def attack_names() -> list[str]:
    """The registered attacks' names, in registration order."""
    return list(ATTACKS)


def get_attack(name: str) -> AttackSpec:
    """The attack called ``name`` (or one of its aliases); ``KeyError`` naming the known ones and a close match."""
    key = _ALIASES.get(name, name)
    if key not in ATTACKS:
        close = difflib.get_close_matches(name, [*ATTACKS, *_ALIASES], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"Unknown attack {name!r}.{hint} Known attacks: {', '.join(ATTACKS)}.")
    return ATTACKS[key]


def parse_attacks(value: str | Sequence[str] | None) -> list[str]:
    """``"probing, typographic"`` (or a list of names) -> the attacks' own names, in order, without repeats;
    ``ValueError`` naming an unknown one."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"Attack names are strings; got {type(item).__name__} {item!r}.")
        if not item.strip():
            continue
        try:
            name = get_attack(item.strip().lower()).name
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        if name not in names:
            names.append(name)
    return names


def run_attacks(
    evaluator: Evaluator, names: str | Sequence[str], reference: Evaluator | None = None, seed: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """Run each named attack on ``evaluator``'s model; ``{attack: {metric: value}}`` in the order asked.

    ``options`` maps an attack's name to its options. An attack that raises ``AttackSkipped`` is left out and its
    reason recorded in ``evaluator.skipped["attack <name>"]``.
    """
    options = options or {}
    out: dict[str, dict[str, float]] = {}
    for name in parse_attacks(names):
        spec = ATTACKS[name]
        ctx = AttackContext(evaluator, reference, seed, dict(options.get(name) or {}))
        try:
            out[name] = spec.run(ctx)
        except AttackSkipped as err:
            evaluator.skipped[f"attack {name}"] = str(err)
    return out
