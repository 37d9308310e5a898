"""Model cards and the allowlisted Hub push, in one place; the trainers and the ``hf-unlearn`` command only call it.

* ``hub.safety``: the value filters (``safe_settings``, ``hub_id``, ...) every published value goes through.
* ``hub.card``: rendering the model card (``build_model_card``) and the card inputs saved next to a model.
* ``hub.push``: which files may be published (``publishable_files``) and the single commit that uploads them.
"""

from .card import CARD_INPUTS_NAME, CARD_NAME, build_model_card, format_value, read_card_inputs, render_card  # noqa: F401
from .push import (
    MASK_SUBFOLDER,
    NEVER_PUSHED,
    HubPushError,
    commit_files,
    publishable_files,
    push_run_dir,
)
from .safety import hub_id, safe_settings

__all__ = [
    "CARD_INPUTS_NAME", "CARD_NAME", "MASK_SUBFOLDER", "NEVER_PUSHED", "HubPushError", "build_model_card",
    "commit_files", "hub_id", "publishable_files", "push_run_dir", "read_card_inputs", "render_card", "safe_settings",
]
