"""Reading one training row: the prompt, the answer to learn or forget, and its images; and checking every row.

Accepted row formats (every collator and trainer reads rows through ``parse_row``):

* ``question`` + ``answer`` (+ optional ``image``): hf_unlearn's schema (``hf_unlearn.data.schema``).
* TRL prompt-completion, standard: ``prompt`` and ``completion`` strings, used as raw text (no chat template), the
  end-of-sequence token appended to the completion as TRL's SFTTrainer does. With images the prompt must contain the
  processor's image token once per image.
* TRL prompt-completion, conversational: ``prompt`` a list of turns, ``completion`` one assistant turn.
* TRL conversational language modeling: ``messages``, the last turn an assistant turn (the answer).

Images come from ``images`` (a list) or ``image`` (one). In conversational rows ``{"type": "image"}`` parts mark
where they go; rows with string contents get one placeholder per image before the first user text
(``trl.data_utils.prepare_multimodal_messages``, TRL's convention).

A row is refused when its answer is not a non-empty string (None, a list, a dict, "" or blanks), when an image is
not an image (a number or a boolean), when it marks an image it does not have (``kind="vqa"`` with ``image=None``, or
more ``{"type": "image"}`` parts than images), or when it has images it does not place. A VQA row meant as text is
opt-in: give it ``kind="qa"``. Messages name the row and the column, never the row's text (it may be forget-set
content).

Which datasets are checked: a dataset in one of these formats, told by an answer-bearing column (``answer``,
``completion`` or ``messages``: ``KNOWN_FORMAT_COLUMNS``), is checked row by row before training whatever collator
batches it. A dataset with none of them is a format of the user's own, for their own collator: it is left to it
(with ``UnlearnDataCollator`` it is refused, since that collator cannot read it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROW_COLUMNS = ("question", "answer", "image", "images", "kind", "messages", "prompt", "completion")
KNOWN_FORMAT_COLUMNS = ("answer", "completion", "messages")  # a dataset with one of them is in a format we read
_IMAGE_COLUMNS = ("image", "images")
_PRESENT = object()  # stands for an image while rows are validated without decoding pixels


class RowError(ValueError):
    """One row cannot be trained on; the message says which column and why (never the row's text)."""


def _text_of(content: Any, what: str) -> str:
    """The text of a message ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, Mapping) for part in content):
        return "".join(part.get("text") or "" for part in content if part.get("type") == "text")
    raise RowError(f"{what} must be a string or a list of {{'type': ..., 'text': ...}} parts, got "
                   f"{type(content).__name__}.")


def _answer(value: Any, column: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"`{column}` must be a non-empty string, got {type(value).__name__}. Every row needs the "
                       "answer to learn or forget as text.")
    if not value.strip():
        raise RowError(f"`{column}` is an empty string: there is nothing to learn or forget in this row.")
    return value


def _turns(value: Any, column: str) -> list[dict]:
    if not isinstance(value, list) or not value or not all(isinstance(t, Mapping) and "role" in t for t in value):
        raise RowError(f"`{column}` must be a non-empty list of turns {{'role': ..., 'content': ...}}.")
    return [dict(turn) for turn in value]


def _check_image(value: Any, column: str) -> Any:
    # A number reaches the image processor as "only a single or a list of entries is supported", naming nothing.
    if isinstance(value, (bool, int, float, complex)):
        raise RowError(f"`{column}` must be an image (a PIL image, an array, a file path or {{'bytes': ..., "
                       f"'path': ...}}), got {type(value).__name__}.")
    return value


def _row_images(row: Mapping) -> list:
    images = row.get("images")
    if images is None:
        return [_check_image(row["image"], "image")] if row.get("image") is not None else []
    if not isinstance(images, (list, tuple)):
        raise RowError(f"`images` must be a list of images, got {type(images).__name__}.")
    if any(image is None for image in images):
        raise RowError("`images` holds None: every listed image must be an image.")
    return [_check_image(image, "images") for image in images]


def _place_images(messages: list[dict], images: list, column: str) -> list[dict]:
    """Check the image placeholders against the images; add them TRL's way when the contents are strings."""
    placeholders = sum(1 for m in messages if isinstance(m.get("content"), list)
                       for part in m["content"] if isinstance(part, Mapping) and part.get("type") == "image")
    if placeholders == 0 and images:
        if not any(m.get("role") == "user" and isinstance(m.get("content"), str) for m in messages):
            raise RowError(f"the row has {len(images)} image(s) but `{column}` has no user turn to put them in.")
        from trl.data_utils import prepare_multimodal_messages

        return prepare_multimodal_messages(messages, images=images)
    if placeholders != len(images):
        missing = placeholders > len(images)
        raise RowError(
            f"`{column}` marks {placeholders} image(s) ({{'type': 'image'}} parts) but the row has {len(images)} "
            + ("(an image question without its image). Add the image to `images`/`image`, or drop the image part."
               if missing else "image(s). Give one {'type': 'image'} part per image.")
        )
    return messages


def parse_row(row: Any) -> tuple[list[dict] | str, str, list]:
    """``(prompt, answer, images)`` of a training row; ``prompt`` is chat messages, or a string for raw text.

    Raises:
        RowError: the row cannot be trained on (see the module docstring).
    """
    if not isinstance(row, Mapping):
        raise RowError(f"a row must be a dict of columns, got {type(row).__name__}.")
    images = _row_images(row)
    if "completion" in row or ("prompt" in row and "question" not in row and "messages" not in row):
        if "prompt" not in row or "completion" not in row:
            raise RowError(f"TRL prompt-completion rows need both `prompt` and `completion`; columns found: "
                           f"{sorted(row)}.")
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):  # standard: raw text, as TRL uses it
            return prompt, _answer(completion, "completion"), images
        if isinstance(prompt, str) or isinstance(completion, str) or prompt is None or completion is None:
            raise RowError("`prompt` and `completion` must both be strings (standard format) or both lists of turns "
                           "(conversational format).")
        turns = _turns(completion, "completion")
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise RowError(f"`completion` must be one assistant turn (the answer), got roles "
                           f"{[t['role'] for t in turns]}.")
        answer = _answer(_text_of(turns[0].get("content"), "the completion's content"), "completion")
        return _place_images(_turns(prompt, "prompt"), images, "prompt"), answer, images
    if row.get("messages") is not None:
        messages = _turns(row["messages"], "messages")
        if messages[-1]["role"] != "assistant":
            raise RowError("a `messages` row must end with an assistant turn: it is the answer to learn or forget.")
        if len(messages) < 2:
            raise RowError("`messages` needs a turn before the assistant's answer (the question).")
        answer = _answer(_text_of(messages[-1].get("content"), "the last turn's content"), "messages[-1]")
        return _place_images(messages[:-1], images, "messages"), answer, images
    missing = [c for c in ("question", "answer") if c not in row]
    if missing:
        raise RowError(
            f"missing column(s) {missing}; columns found: {sorted(row)}. Provide `question` and `answer` (and "
            "optionally `image`), TRL's `prompt` and `completion`, or chat `messages`; rename with "
            "`dataset.rename_column(old, new)`."
        )
    answer = _answer(row["answer"], "answer")
    if not isinstance(row["question"], str):
        raise RowError(f"`question` must be a string, got {type(row['question']).__name__}.")
    image = _check_image(row["image"], "image") if row.get("image") is not None else None
    if image is None and row.get("kind") == "vqa":
        raise RowError("is an image question (kind='vqa') without an image: it would be trained as a text "
                       "question. Give it its image, or set kind='qa' to train it as text on purpose.")
    content: list[dict] = [{"type": "image"}] if image is not None else []
    content.append({"type": "text", "text": row["question"]})
    return [{"role": "user", "content": content}], answer, ([image] if image is not None else [])


# ----------------------------------------------------------------------------------------------------------------
# Checking a whole dataset before training
# ----------------------------------------------------------------------------------------------------------------
def _holds_numbers(column_type) -> bool:
    """Whether an image column's Arrow type is numbers or booleans (per row, or per listed image): not images."""
    import pyarrow as pa

    def scalar(t) -> bool:
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)

    is_list = pa.types.is_list(column_type) or pa.types.is_large_list(column_type)
    return scalar(column_type) or (is_list and scalar(column_type.value_type))


def _arrow_rows(dataset, chunk: int = 1024):
    """Rows of a ``datasets.Dataset`` restricted to ``ROW_COLUMNS``, images replaced by a marker (no decoding).

    Image columns of numbers keep their values, so the row check names the wrong type."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = [c for c in ROW_COLUMNS if c in dataset.column_names]
    view = dataset.select_columns(columns).with_format("arrow")
    for start in range(0, len(dataset), chunk):
        table = view[start:start + chunk]
        markers = {}
        for name in _IMAGE_COLUMNS:
            if name not in table.column_names:
                continue
            column = table.column(name)
            if _holds_numbers(column.type):
                continue
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                lengths = pc.list_value_length(column).to_pylist()
                markers[name] = [None if n is None else [_PRESENT] * n for n in lengths]
            else:
                markers[name] = [None if null else _PRESENT for null in column.is_null().to_pylist()]
            table = table.drop_columns([name])
        for offset, row in enumerate(table.to_pylist()):
            yield start + offset, {**row, **{name: values[offset] for name, values in markers.items()}}


def _unwrap(dataset):
    """The rows under a same-length wrapper (VKD's and RMU's ``IndexedRows``), else ``dataset`` itself."""
    inner = getattr(dataset, "dataset", None)
    if inner is not None and hasattr(inner, "__len__") and len(inner) == len(dataset):
        return inner
    return dataset


def _iter_rows(dataset):
    dataset = _unwrap(dataset)
    if hasattr(dataset, "column_names") and hasattr(dataset, "with_format"):
        return _arrow_rows(dataset)
    if isinstance(dataset, (list, tuple)):
        return enumerate(dataset)
    return None  # another kind of dataset: rows are checked by the collator when they are used


def _columns(dataset) -> list[str]:
    dataset = _unwrap(dataset)
    if hasattr(dataset, "column_names"):
        return list(dataset.column_names)
    if isinstance(dataset, (list, tuple)) and dataset and isinstance(dataset[0], Mapping):
        return list(dataset[0])
    return []


def is_known_row_format(dataset) -> bool:
    """Whether ``dataset`` is in one of the formats of this module (it has a column of ``KNOWN_FORMAT_COLUMNS``)."""
    return any(column in KNOWN_FORMAT_COLUMNS for column in _columns(dataset))


def validate_rows(dataset, split: str, *, require_known_format: bool = True) -> None:
    """Check every row of ``dataset`` (without decoding images) and raise on the first one that cannot be trained.

    Args:
        require_known_format: ``True`` (the dataset goes to ``UnlearnDataCollator``): every row must be in a format
            of this module. ``False`` (a user's own collator): only a dataset in a known format is checked; one with
            columns of the user's own is left to their collator.

    Raises:
        ValueError: naming ``split``, the row index and the problem (never the row's text).
    """
    if dataset is not None and not require_known_format and not is_known_row_format(dataset):
        return
    rows = _iter_rows(dataset) if dataset is not None else None
    for index, row in rows or ():
        try:
            parse_row(row)
        except RowError as err:
            raise ValueError(f"{split} row {index}: {err}") from None


def row_answers(dataset) -> list[str]:
    """The answer of every row (``answer``, the completion's text or the last turn's), without decoding images."""
    columns = _columns(dataset)
    if "answer" in columns and not {"completion", "messages"} & set(columns):
        return list(dataset["answer"]) if hasattr(dataset, "column_names") else [r["answer"] for r in dataset]
    rows = _iter_rows(dataset)
    if rows is None:
        rows = ((i, dataset[i]) for i in range(len(dataset)))
    return [parse_row(row)[1] for _, row in rows]


def rows_with_images(dataset) -> list[int]:
    """Indices of the rows that carry an image (``image``, or a non-empty ``images`` list), without decoding them."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        columns = [c for c in ("image", "images") if c in dataset.column_names]
        if not columns:
            return []
        # The raw Arrow values: no image is decoded just to see whether it is there.
        table = dataset.with_format("arrow").select_columns(columns)
        values = [table[c].to_pylist() for c in columns]
        return [i for i, row in enumerate(zip(*values)) if any(v is not None and v != [] for v in row)]
    return [i for i in range(len(dataset))
            if dataset[i].get("image") is not None or bool(dataset[i].get("images"))]
