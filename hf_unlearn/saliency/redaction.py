"""Preserve-set names, as they may be published: a user who names a preserve set after a person would publish the
name in a mask's config or a card, so every name but the library's own is replaced by ``preserve_set_<i>``.

``hub.safety`` (the filters every card and push goes through) re-exports these.
"""

from __future__ import annotations

from typing import Any

# ----------------------------------------------------------------------------------------------------------------
# Preserve-set names
# ----------------------------------------------------------------------------------------------------------------
# A saliency mask's config and score summary name the user's preserve sets (``preserve_sets``); a user who names one
# after a person would publish the name. The library's own names (the defaults of ``SaliencyMaskConfig.preserve_sets``
# and the preserve sets ``hf-unlearn run`` builds) carry no user text and are kept, so default masks round-trip
# unchanged; any other name is published as ``preserve_set_<i>``.
CONVENTIONAL_PRESERVE_NAMES = ("retain", "text")


def _collect_preserve_names(value: Any, names: dict[str, None]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "preserve_sets" and isinstance(item, dict):
                for group_names in item.values():
                    for name in group_names if isinstance(group_names, (list, tuple)) else [group_names]:
                        names[str(name)] = None
            elif key == "preserve" and isinstance(item, dict):  # scores_summary["num_batches"]["preserve"]
                names.update((str(k), None) for k in item)
            _collect_preserve_names(item, names)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_preserve_names(item, names)


def preserve_name_map(*values: Any) -> dict[str, str]:
    """``{user name: published name}`` for the preserve-set names found in mask configs / score summaries."""
    names: dict[str, None] = {}
    for value in values:
        _collect_preserve_names(value, names)
    user = [n for n in names if n not in CONVENTIONAL_PRESERVE_NAMES]
    return {name: f"preserve_set_{i}" for i, name in enumerate(user, 1)}


def redact_preserve_names(value: Any, mapping: dict[str, str]) -> Any:
    """A copy of ``value`` (a mask config dict or score summary) with preserve-set names replaced by ``mapping``."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "preserve_sets" and isinstance(item, dict):
                out[key] = {g: [mapping.get(str(n), n) for n in (ns if isinstance(ns, (list, tuple)) else [ns])]
                            for g, ns in item.items()}
            elif key == "preserve" and isinstance(item, dict):
                out[key] = {mapping.get(str(k), k): redact_preserve_names(v, mapping) for k, v in item.items()}
            else:
                out[key] = redact_preserve_names(item, mapping)
        return out
    if isinstance(value, list):
        return [redact_preserve_names(item, mapping) for item in value]
    return value
