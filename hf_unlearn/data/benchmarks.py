"""Loaders that turn the published MLLMU-Bench and CLEAR datasets into the common schema of `schema.py`.

Both accept either a local directory laid out like a Hub dataset snapshot (``<root>/<config>/*.parquet``, what
``hf download <repo> --repo-type dataset --local-dir <root>`` produces) or a Hub dataset id, loaded with
``datasets.load_dataset(repo, config)`` (online only). Locally only the needed columns are read, so the large image
columns of text-only configs are never loaded.

Split names follow the synthetic benchmark: ``forget_vqa``, ``forget_qa``, ``retain_vqa``, ``retain_qa``,
``general`` (+ ``test_vqa`` / ``test_qa`` / ``general_qa`` for MLLMU-Bench). The reading helpers
(``read_benchmark_config``, ``stored_image``, ``letter_label``, ``person_ids``, ...) serve the other loaders too.
"""

from __future__ import annotations

import glob
import json
import os
import re
import string
import zlib
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import NUM_OPTIONS, check_columns, rows_to_dataset

MLLMU_REPO = "MLLMMU/MLLMU-Bench"
CLEAR_REPO = "therem/CLEAR"
DEFAULT_NAME_QUESTION = "What is the name of the person in the image?"
_LETTERS = "ABCD"


# --------------------------------------------------------------------------------------------------------------------
# Reading one config (local snapshot or Hub) into a pyarrow Table
# --------------------------------------------------------------------------------------------------------------------
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"


def _looks_like_path(path_or_repo: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything else that does not exist is a mistyped directory, and so is
    ``dir/name`` whose first component is a local directory (e.g. ``data/MLLMU-Bench`` with ``data/`` present)."""
    return (
        os.path.isabs(path_or_repo)
        or path_or_repo.startswith((".", "~"))
        or path_or_repo.count("/") > 1
        or (os.sep != "/" and os.sep in path_or_repo)
        or ("/" in path_or_repo and os.path.isdir(path_or_repo.split("/")[0]))
    )


def check_not_lfs_pointer(path: str, root: str) -> None:
    """A `git clone` without git-lfs leaves small text pointers where the data files should be: say so, and the fix."""
    with open(path, "rb") as f:
        head = f.read(len(LFS_POINTER_PREFIX))
    if head == LFS_POINTER_PREFIX:
        raise ValueError(
            f"{path} is a Git LFS pointer file, not the data: the snapshot was cloned without git-lfs. Fetch the "
            f"data with `cd {root} && git lfs install && git lfs pull` (or download it with `hf download`)."
        )


def _check_parquet_file(path: str, root: str) -> list[str]:
    """The column names of one parquet shard; a clear error for a Git LFS pointer or an unreadable file."""
    check_not_lfs_pointer(path, root)
    try:
        return pq.read_schema(path).names
    except pa.ArrowInvalid as err:
        raise ValueError(f"{path} is not a readable parquet file ({err}); the download may be incomplete: "
                         "download it again.") from err


def _read_json_file(path: str, root: str) -> pa.Table:
    """A JSON array or JSON-lines file of records (TOFU publishes ``<config>.json`` files) as a Table."""
    check_not_lfs_pointer(path, root)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a JSON array or JSON-lines file ({err}); download it again.") from err
    if not records or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path} holds no records (a JSON object per row is expected).")
    return pa.Table.from_pylist(records)


def _read_local_shard(path: str, columns: list[str], row_filter: tuple[str, set[str]] | None) -> pa.Table:
    """Read ``columns`` of one shard; with ``row_filter=(column, values)``, read that column first and then only the
    row groups holding a wanted value, so unwanted rows' images are never read."""
    if row_filter is None:
        return pq.read_table(path, columns=columns)
    key, values = row_filter
    parquet = pq.ParquetFile(path)
    wanted = pa.array(sorted(values), type=pa.string())
    groups = [g for g in range(parquet.num_row_groups)
              if pc.any(pc.is_in(parquet.read_row_group(g, columns=[key])[key].cast(pa.string()), wanted)).as_py()]
    table = parquet.read_row_groups(groups, columns=columns) if groups else parquet.schema_arrow.empty_table().select(
        columns)
    return table.filter(pc.is_in(table[key].cast(pa.string()), wanted))


def _local_files(root: str, config: str, split: str | None) -> list[str]:
    """``<root>/<config>/**/*.parquet`` (only ``<split>-*.parquet`` with a split), else ``<root>/<config>.json[l]``."""
    pattern = f"{split}-*.parquet" if split else "*.parquet"
    files = sorted(glob.glob(os.path.join(root, config, "**", pattern), recursive=True))
    if not files and split is None:
        files = [p for ext in (".json", ".jsonl") if os.path.isfile(p := os.path.join(root, config + ext))]
    return files


def _configs_found(root: str) -> list[str]:
    return sorted(
        {d for d in os.listdir(root) if glob.glob(os.path.join(root, d, "**", "*.parquet"), recursive=True)}
        | {os.path.splitext(f)[0] for f in os.listdir(root) if f.endswith((".json", ".jsonl"))}
    )


def read_benchmark_config(
    path_or_repo: str, config: str, required: Sequence[str], optional: Sequence[str] = (), *, benchmark: str,
    row_filter: tuple[str, set[str]] | None = None, repo: str | None = None, split: str | None = None,
) -> pa.Table:
    """Read ``required`` (checked in every shard) and ``optional`` (if present) columns of one config as a pyarrow
    Table; ``row_filter=(column, values)`` keeps only the rows whose ``column`` (read as a string) is in ``values``,
    filtering while reading. ``split`` selects one split of a multi-split config (MUSE: ``<config>/<split>-*.parquet``
    locally); ``repo`` is the published Hub id named in messages (default: MLLMU-Bench's or CLEAR's).

    Image columns stay in their stored form, ``{"bytes": ..., "path": ...}`` structs: nothing is decoded here.
    """
    repo = repo or (MLLMU_REPO if benchmark == "MLLMU-Bench" else CLEAR_REPO)
    download = f"`hf download {repo} --repo-type dataset --local-dir DIR`"
    where = f"{config}/{split}" if split else config
    hint = f"The {benchmark} loader expects the published column layout of config {where!r} (see {repo} on the Hub)."
    if row_filter is not None and row_filter[0] not in required:
        required = [*required, row_filter[0]]
    if os.path.isdir(path_or_repo):
        files = _local_files(path_or_repo, config, split)
        if not files:
            looked = os.path.join(path_or_repo, config, f"{split}-*.parquet" if split else "")
            raise FileNotFoundError(
                f"{benchmark} config {where!r} not found: no data files under {looked}. "
                f"Configs found in {path_or_repo}: {_configs_found(path_or_repo)}. Download the full snapshot with "
                f"{download} and pass DIR."
            )
        if files[0].endswith(".parquet"):
            shard_columns = {f: _check_parquet_file(f, path_or_repo) for f in files}
        else:
            json_tables = {f: _read_json_file(f, path_or_repo) for f in files}
            shard_columns = {f: t.column_names for f, t in json_tables.items()}
        for f, names in shard_columns.items():
            check_columns(names, required, f"{where} ({os.path.relpath(f, path_or_repo)})", hint=hint)
        present = set.intersection(*(set(n) for n in shard_columns.values()))
        columns = list(required) + [c for c in optional if c in present and c not in required]
        if not files[0].endswith(".parquet"):
            return pa.concat_tables([t.select(columns) for t in json_tables.values()], promote_options="default")
        tables = [_read_local_shard(f, columns, row_filter) for f in files]
        return pa.concat_tables(tables, promote_options="default")
    if _looks_like_path(path_or_repo):
        raise FileNotFoundError(
            f"{path_or_repo!r} is not a directory (relative paths start at {os.getcwd()}). Pass a local snapshot "
            f"directory (download it with {download}) or a Hub dataset id such as {repo!r}."
        )
    try:
        loaded = datasets.load_dataset(path_or_repo, config)
    except Exception as err:  # network, offline mode, unknown config: all need the same advice
        if path_or_repo.lower() != repo.lower() and "/" in path_or_repo:
            # Not the published id: most likely a relative directory typed from the wrong working directory.
            raise FileNotFoundError(
                f"{path_or_repo!r} is not a directory (relative paths start at {os.getcwd()}), and loading it as a "
                f"Hub dataset failed too ({type(err).__name__}: {err}). Pass the snapshot directory (download it "
                f"with {download}) or the Hub id {repo!r}."
            ) from err
        raise ConnectionError(
            f"Could not load config {config!r} of the Hub dataset {path_or_repo!r}: {err}. "
            f"If you are offline, download a snapshot elsewhere with {download} and pass the local DIR."
        ) from err
    if split is not None and split not in loaded:
        raise ValueError(f"Config {config!r} of {path_or_repo!r} has no split {split!r}; splits: {sorted(loaded)}.")
    split = split or ("train" if "train" in loaded else next(iter(loaded)))
    ds = loaded[split]
    check_columns(ds, required, f"{where} ({path_or_repo})", hint=hint)
    if row_filter is not None:  # an indices mapping over the ID column only: no image is copied
        key, values = row_filter
        ds = ds.filter(lambda ids: [str(i) in values for i in ids], input_columns=[key], batched=True)
    columns = list(required) + [c for c in optional if c in ds.column_names and c not in required]
    return ds.select_columns(columns).with_format("arrow")[:]


def stored_image(value: Any) -> dict[str, Any] | None:
    """A stored image struct, kept encoded (``datasets.Image`` decodes lazily); None when there is no image.

    The stored ``path`` is only a file name from the uploader's machine; it is dropped when the bytes are embedded,
    otherwise ``datasets.Image`` would prefer a same-named file that happens to exist in the working directory.
    """
    if value is None or (value.get("bytes") is None and value.get("path") is None):
        return None
    if value.get("bytes") is not None:
        return {"bytes": value["bytes"], "path": None}
    return {"bytes": None, "path": value["path"]}


def row_rng(seed: int, *keys: Any) -> np.random.Generator:
    """A generator tied to the seed and the row's identity (not its position in a file), stable across runs."""
    return np.random.default_rng([seed, *(zlib.crc32(str(k).encode()) for k in keys)])


def options_with_answer(
    answer: str, candidates: Sequence[str], fallback: Sequence[str], rng: np.random.Generator
) -> tuple[list[str], int]:
    """The answer at a seeded position among **every** distinct ``candidates`` entry that differs from it (as
    MMUnlearner offers all of CLEAR's ``perturbed_names``); rows with fewer than 3 such distractors are topped up
    with seeded picks from ``fallback`` (other rows' answers) to 4 options, so no row is easier than 4-way."""
    distractors: list[str] = []
    for cand in candidates:
        if cand is not None and cand != answer and cand not in distractors:
            distractors.append(cand)
    extra = sorted({f for f in fallback if f is not None and f != answer and f not in distractors})
    need = max(0, NUM_OPTIONS - 1 - len(distractors))
    if len(extra) < need:
        raise ValueError(
            f"Cannot build {NUM_OPTIONS} distinct options: only {len(distractors) + len(extra) + 1} distinct answers "
            "are available; the split needs at least 4 rows with different answers."
        )
    if need:
        distractors += [extra[i] for i in rng.choice(len(extra), size=need, replace=False)]
    label = int(rng.integers(len(distractors) + 1))
    return distractors[:label] + [answer] + distractors[label:], label


# --------------------------------------------------------------------------------------------------------------------
# MLLMU-Bench
# --------------------------------------------------------------------------------------------------------------------
_MLLMU_TASKS = ("Image_Textual_Questions", "Pure_Text_Questions")


def letter_label(letter: Any, where: str, field: str = "Correct_Answer") -> int:
    """'A', 'a', 'A.', '(A)', 'A: text' -> 0; ``field`` names the column in the error."""
    text = str(letter or "").strip().lstrip("(").upper()
    if not text or text[0] not in _LETTERS or (len(text) > 1 and text[1] in string.ascii_uppercase):
        raise ValueError(f"{where}: {field} {letter!r} is not one of the option letters {list(_LETTERS)}.")
    return _LETTERS.index(text[0])


def _mllmu_rows(
    profile: dict[str, Any], task: str, kind: str, person_id: int, image: dict[str, Any] | None, where: str
) -> list[dict[str, Any]]:
    """The multiple-choice rows of one profile for ``task`` (image or pure-text questions)."""
    cls = profile["Classification_Task"]
    if not isinstance(cls, dict) or task not in cls:
        found = list(cls) if isinstance(cls, dict) else type(cls).__name__
        raise ValueError(f"{where}: Classification_Task has no {task!r} field; fields found: {found}.")
    rows = []
    for i, item in enumerate(cls[task] or []):
        options = [str((item["Options"] or {}).get(k) or "") for k in _LETTERS]
        label = letter_label(item["Correct_Answer"], f"{where}, {task}[{i}]")
        rows.append(dict(person_id=person_id, kind=kind, image=image, question=item["Question"],
                         answer=options[label], options=options, label=label))  # fmt: skip
    return rows


def person_ids(ids: Sequence[str]) -> dict[str, int]:
    """Profile IDs are strings; numeric ones keep their value, otherwise their rank in sorted order."""
    unique = sorted(set(ids))
    if all(str(i).isdigit() for i in unique):
        return {i: int(i) for i in unique}
    return {i: rank for rank, i in enumerate(unique)}


def load_mllmu_bench(
    path_or_repo: str, forget_split: str = "forget_5", *, image_choice_seed: int = 0
) -> datasets.DatasetDict:
    """Load MLLMU-Bench (``MLLMMU/MLLMU-Bench``) into the common schema.

    Splits: ``forget_vqa`` / ``forget_qa`` (image and pure-text MCQs of the ``forget_split`` profiles),
    ``retain_vqa`` / ``retain_qa`` (the matching ``retain_{100-N}`` config), ``test_vqa`` / ``test_qa`` (``Test_Set``
    restricted to the forget IDs; one image per profile chosen from its ``images`` list with ``image_choice_seed``),
    ``general`` / ``general_qa`` (``Retain_Set``: real celebrities, utility; ``person_id`` -1, kind ``"general"``,
    ``general_qa`` has no image). Options are A-D in order and ``label`` is the index of ``Correct_Answer``.
    """
    match = re.fullmatch(r"forget_(\d+)", forget_split)
    if not match or not 0 < int(match.group(1)) < 100:
        raise ValueError(f"forget_split must look like 'forget_5', 'forget_10' or 'forget_15', got {forget_split!r}.")
    retain_split = f"retain_{100 - int(match.group(1))}"
    profile_cols = ("ID", "image", "Classification_Task")

    def read(config: str, required: Sequence[str], **kwargs: Any) -> list[dict[str, Any]]:
        return read_benchmark_config(path_or_repo, config, required, benchmark="MLLMU-Bench", **kwargs).to_pylist()

    forget, retain = read(forget_split, profile_cols), read(retain_split, profile_cols)
    id_map = person_ids([str(p["ID"]) for p in forget + retain])
    splits: dict[str, list[dict[str, Any]]] = {}
    for name, profiles, config in (("forget", forget, forget_split), ("retain", retain, retain_split)):
        vqa, qa = [], []
        for n, p in enumerate(profiles):
            pid, where = id_map[str(p["ID"])], f"config {config!r} row {n} (ID {p['ID']})"
            vqa += _mllmu_rows(p, "Image_Textual_Questions", "vqa", pid, stored_image(p["image"]), where)
            qa += _mllmu_rows(p, "Pure_Text_Questions", "qa", pid, None, where)
        splits[f"{name}_vqa"], splits[f"{name}_qa"] = vqa, qa

    forget_ids = {str(p["ID"]) for p in forget}
    test_vqa, test_qa = [], []
    # Test_Set holds ~670 MB of images for all 500 profiles: keep the forget IDs while reading, not afterwards.
    test_profiles = read("Test_Set", ("ID", "images", "Classification_Task"), row_filter=("ID", forget_ids))
    for p in test_profiles:
        where = f"config 'Test_Set' (ID {p['ID']})"
        images = [img for img in (stored_image(v) for v in (p["images"] or [])) if img is not None]
        if not images:
            raise ValueError(f"{where}: the 'images' list is empty; Test_Set rows need at least one image.")
        image = images[int(row_rng(image_choice_seed, p["ID"]).integers(len(images)))]
        test_vqa += _mllmu_rows(p, "Image_Textual_Questions", "vqa", id_map[str(p["ID"])], image, where)
        test_qa += _mllmu_rows(p, "Pure_Text_Questions", "qa", id_map[str(p["ID"])], None, where)
    splits["test_vqa"], splits["test_qa"] = test_vqa, test_qa

    general, general_qa = [], []
    for n, p in enumerate(read("Retain_Set", ("image", "Classification_Task"))):
        where = f"config 'Retain_Set' row {n}"
        general += _mllmu_rows(p, "Image_Textual_Questions", "general", -1, stored_image(p["image"]), where)
        general_qa += _mllmu_rows(p, "Pure_Text_Questions", "general", -1, None, where)
    splits["general"], splits["general_qa"] = general, general_qa
    return datasets.DatasetDict({name: rows_to_dataset(rows) for name, rows in splits.items()})


# --------------------------------------------------------------------------------------------------------------------
# CLEAR
# --------------------------------------------------------------------------------------------------------------------
def _match_person(text: str, names_longest_first: Sequence[str], name_ids: dict[str, int]) -> int:
    """The person a TOFU text row is about: the longest known name that appears in it, else -1."""
    for name in names_longest_first:
        if name in text:
            return name_ids[name]
    return -1


def _clear_name_rows(
    table: list[dict[str, Any]], name_ids: dict[str, int], question: str, seed: int, split: str
) -> list[dict[str, Any]]:
    """Name MCQs from a ``*_perturbed`` config: the true ``name`` among every distinct ``perturbed_names`` entry."""
    all_names = sorted(name_ids)
    rows = []
    for n, r in enumerate(table):
        options, label = options_with_answer(
            r["name"], r["perturbed_names"] or [], all_names, row_rng(seed, split, n, r["name"])
        )
        rows.append(dict(person_id=name_ids[r["name"]], kind="vqa", image=stored_image(r["image"]), question=question,
                         answer=r["name"], options=options, label=label))  # fmt: skip
    return rows


def _clear_text_rows(table: list[dict[str, Any]], name_ids: dict[str, int]) -> list[dict[str, Any]]:
    """Generation-only QA rows from a ``*+tofu`` config: the rows with a question (the others are image captions).

    CLEAR publishes no options for them, and CLEAR and MMUnlearner score them by generation (ROUGE-L), so they carry
    ``options=None`` (the Evaluator reports ``<split>_rougeL``).
    """
    names = sorted(name_ids, key=len, reverse=True)
    rows = []
    for r in table:
        if not r.get("question"):
            continue
        pid = _match_person(f"{r['question']} {r['answer']}", names, name_ids)
        rows.append(dict(person_id=pid, kind="qa", image=None, question=r["question"], answer=r["answer"],
                         options=None, label=None))  # fmt: skip
    return rows


def load_clear(
    path_or_repo: str,
    forget_split: str = "forget05",
    *,
    option_seed: int = 0,
    name_question: str = DEFAULT_NAME_QUESTION,
) -> datasets.DatasetDict:
    """Load CLEAR (``therem/CLEAR``) into the common schema, following MMUnlearner's "visual accuracy" protocol.

    * ``forget_vqa``: name MCQ on ``{forget_split}_perturbed`` (``name_question``; the true ``name`` at a seeded
      position among every distinct ``perturbed_names`` entry, topped up to 4 options with other people's names
      when a row has fewer than 3).
    * ``retain_vqa``: the same on ``retain_perturbed``, minus any forget person.
    * ``forget_qa`` / ``retain_qa``: the text rows (those with a ``question``) of ``{forget_split}+tofu`` and
      ``retain{100-N}+tofu``, generation-only (``options=None``: scored by ROUGE-L, as CLEAR and MMUnlearner do).
      ``person_id`` is the longest known name found in the question or answer, else -1.
    * ``general``: ``real_faces`` (``question`` if present, else ``name_question``; ``options`` hold distractors,
      the answer is inserted at a seeded position), ``person_id`` -1.

    Person ids number, in sorted order, every ``name`` of ``{forget_split}`` and ``retain{100-N}`` (the full list of
    the split's people; only that column is read locally) and of the ``*_perturbed`` configs, so the same person has
    the same id in every split of one load.
    """
    match = re.fullmatch(r"forget(\d\d)", forget_split)
    if not match or not 0 < int(match.group(1)) < 100:
        raise ValueError(f"forget_split must look like 'forget01', 'forget05' or 'forget10', got {forget_split!r}.")
    retain_split = f"retain{100 - int(match.group(1)):02d}"
    perturbed_cols = ("image", "name", "perturbed_names")

    def read(config: str, required: Sequence[str], optional: Sequence[str] = ()) -> list[dict[str, Any]]:
        return read_benchmark_config(path_or_repo, config, required, optional, benchmark="CLEAR").to_pylist()

    forget_p = read(f"{forget_split}_perturbed", perturbed_cols)
    forget_names = {r["name"] for r in forget_p}
    retain_p = [r for r in read("retain_perturbed", perturbed_cols) if r["name"] not in forget_names]
    people = {r["name"] for config in (forget_split, retain_split) for r in read(config, ("name",))}
    name_ids = {name: i for i, name in enumerate(sorted(people | forget_names | {r["name"] for r in retain_p}))}

    splits = {
        "forget_vqa": _clear_name_rows(forget_p, name_ids, name_question, option_seed, "forget_vqa"),
        "forget_qa": _clear_text_rows(read(f"{forget_split}+tofu", ("question", "answer")), name_ids),
        "retain_vqa": _clear_name_rows(retain_p, name_ids, name_question, option_seed, "retain_vqa"),
        "retain_qa": _clear_text_rows(read(f"{retain_split}+tofu", ("question", "answer")), name_ids),
    }
    faces = read("real_faces", ("image", "answer", "options"), ("question",))
    real_answers = [r["answer"] for r in faces]
    general = []
    for n, r in enumerate(faces):
        options, label = options_with_answer(
            r["answer"], r["options"] or [], real_answers, row_rng(option_seed, "general", n, r["answer"])
        )
        general.append(dict(person_id=-1, kind="general", image=stored_image(r["image"]),
                            question=r.get("question") or name_question, answer=r["answer"], options=options,
                            label=label))  # fmt: skip
    splits["general"] = general
    return datasets.DatasetDict({name: rows_to_dataset(rows) for name, rows in splits.items()})
