"""``StepPlan``: what the optimizer step now running does, in one object instead of flags spread over the trainer.

``UnlearnTrainer.training_step`` sets it for each micro-batch (which loss terms, how many backward passes, which of
them are masked); ``compute_loss`` reads which terms the running pass computes; the masker reads whether its gradient
is masked; the post-step editors read whether every pass of the step was masked (then masked entries are put back
after the optimizer step). A step with a saliency mask and ``mask_scope="forget"`` runs two passes per micro-batch:
the forget term (masked), then the retain term (unmasked).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class StepPlan:
    """The plan of the running optimizer step (see the module docstring).

    Attributes:
        parts: the loss terms of the running micro-batch (``"forget"``, ``"retain"``).
        part: the term whose backward pass runs now; ``None`` while one pass computes every term of ``parts``.
        masked: whether the running pass's gradient is masked.
        fully_masked: whether every pass of this optimizer step so far was masked (reset by ``start_step``).
    """

    parts: tuple[str, ...] = ()
    part: str | None = None
    masked: bool = True
    fully_masked: bool = True

    def start_step(self) -> None:
        """A new optimizer step begins (``on_step_begin``)."""
        self.fully_masked = True

    @property
    def computed_parts(self) -> tuple[str, ...]:
        """The terms ``compute_loss`` computes in the running pass."""
        return (self.part,) if self.part is not None else self.parts

    @contextmanager
    def run_pass(self, part: str | None, masked: bool) -> Iterator[None]:
        """One backward pass of the running micro-batch: ``part`` (or every term) with the gradient ``masked`` or not."""
        self.part, self.masked = part, masked
        self.fully_masked = self.fully_masked and masked
        try:
            yield
        finally:
            self.part, self.masked = None, True
