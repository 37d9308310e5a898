"""What may be published: the value filters every card and every push goes through.

Privacy is enforced here rather than trusted to callers. ``safe_settings`` keeps only method knobs (numbers,
booleans, short lowercase enum values) and drops anything that can name a file, a directory, a data set, a run or a
token; ``hub_id`` lets through Hub repo ids, never local paths. Nothing here touches the network.
"""

from __future__ import annotations

import enum
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id

logger = logging.getLogger(__name__)

__all__ = ["check_dataset_ids", "hub_id", "is_hub_model_id", "safe_settings", "safe_tags"]

# A key containing any of these (case-insensitive) can hold a location, a data set, a run or a secret: never published.
_UNSAFE_KEY_PARTS = (
    "path", "dir", "dataset", "data_file", "file", "token", "hub", "name", "output", "logging", "report_to", "url",
    "entity", "project", "resume_from_checkpoint", "deepspeed", "secret", "password", "key_", "api_key", "email",
)
_SAFE_KEY = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")  # config field names are snake_case
# Strings are kept only when they look like an enum value ("npo", "cosine", "adamw_torch", "language_model"):
# lowercase, no spaces or separators. Names of people or places are almost never written that way.
_ENUM_VALUE = re.compile(r"^[a-z0-9][a-z0-9_.+-]{0,39}$")
_FILE_SUFFIXES = {
    ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".png", ".jpg", ".jpeg", ".webp", ".gif",
    ".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".yaml", ".yml", ".zip", ".tar", ".gz", ".md", ".py", ".pkl",
}
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,199}$")
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,39}$")
_MAX_LIST = 16


def _is_safe_key(key: Any) -> bool:
    if not isinstance(key, str) or not _SAFE_KEY.match(key):
        return False
    lowered = key.lower()
    return not any(part in lowered for part in _UNSAFE_KEY_PARTS)


def _is_safe_str(value: str) -> bool:
    return bool(_ENUM_VALUE.match(value)) and os.path.splitext(value)[1] not in _FILE_SUFFIXES


_DROP = object()


def _safe_value(value: Any) -> Any:
    """The value if it is safe to publish, else ``_DROP``. Enums become their value; lists keep only safe scalars."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return value if _is_safe_str(value) else _DROP
    if isinstance(value, (list, tuple)):
        if len(value) > _MAX_LIST:
            return _DROP
        items = [_safe_value(v) for v in value]
        if any(v is _DROP or isinstance(v, (list, dict)) for v in items):
            return _DROP  # all or nothing: a half-list would misstate the setting
        return items
    if isinstance(value, dict):
        nested = safe_settings(value)
        return nested if nested else _DROP
    return _DROP  # objects, bytes, tensors...: nothing to gain, something to leak


def safe_settings(config_dict: dict) -> dict:
    """Keep the publishable method knobs of a config dict and drop everything that could leak the forget set.

    Kept: snake_case keys whose values are numbers, booleans, short lowercase enum-like strings, short
    lists of those, or nested dicts of those (filtered the same way). Dropped: ``None`` values; keys containing
    ``path``, ``dir``, ``dataset``, ``file``, ``token``, ``hub``, ``name``, ``output``, ``logging``, ``url``, ... (so
    ``output_dir``, ``logging_dir``, ``run_name``, ``hub_model_id``, ``forget_dataset``, ``model_name_or_path``);
    strings with spaces, capitals, slashes or a file suffix (paths, free text, entity names).

    Args:
        config_dict: e.g. ``dataclasses.asdict(config)`` or ``TrainingArguments.to_dict()``.

    Returns:
        A new dict, in the input's key order.
    """
    if not isinstance(config_dict, dict):
        raise TypeError(f"safe_settings expects a dict (e.g. config.to_dict()), got {type(config_dict).__name__}.")
    out: dict[str, Any] = {}
    for key, value in config_dict.items():
        if not _is_safe_key(key) or value is None:
            continue
        kept = _safe_value(value)
        if kept is not _DROP and kept is not None:
            out[key] = kept
    return out


def hub_id(value: str | None) -> str | None:
    """``value`` if it is a Hub repo id and not a local path, else None (a local path must never be published)."""
    if not isinstance(value, str) or not value or os.path.exists(value) or value.startswith(("~", ".")):
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def is_hub_model_id(value: str | None, private_strings: Iterable[str] = ()) -> bool:
    """A publishable ``org/name`` id: a Hub id (not a local path) that contains none of ``private_strings``."""
    return bool(hub_id(value)) and value.count("/") == 1 and not any(s and s in value for s in private_strings)


def safe_tags(tags: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for tag in tags:
        if isinstance(tag, str) and TAG.match(tag) and tag not in seen:
            seen.append(tag)
    return seen


def check_dataset_ids(dataset_name: str | list[str] | None, include_dataset_ids: bool) -> list[str]:
    """Validate the dataset opt-in: ids are published only with ``include_dataset_ids=True``, and only Hub ids."""
    names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
    if not include_dataset_ids:
        if names:
            logger.info("Dataset ids are not published in the model card unless include_dataset_ids=True.")
        return []
    if not names:
        raise ValueError("include_dataset_ids=True but no dataset id was given: pass dataset_name='<org>/<dataset>' "
                         "(hf-unlearn push: --dataset-id <org>/<dataset>).")
    bad = [n for n in names if not isinstance(n, str) or not is_hub_model_id(n)]
    if bad:
        raise ValueError(f"Dataset ids to publish must be Hub ids like '<org>/<dataset>'; {len(bad)} given value(s) "
                         "are not (a local path or a file name is never published). Pass Hub ids or drop "
                         "include_dataset_ids.")
    return names
