"""Model folders published whole: manifests, the staged publish and its recovery, and the check before a push.

A model save (``save_model(dir)``) cannot rename ``dir`` whole: users load ``dir`` itself with ``from_pretrained`` and
the Trainer keeps its checkpoints, logs and the user's own files in it. So the save's *manifest* is what makes it one
unit. The publish is a short journal:

1. every file is written and fsynced in ``dir/.tmp-hf_unlearn-save/`` (the slow part; ``dir`` is untouched);
2. the staging folder's own manifest is written: the files of this save with their sizes, and the files of the
   previous save that this one does not replace (``replaces``). The save is now *prepared*;
3. ``dir``'s manifest is removed: from here until step 5 no push or resume trusts ``dir``;
4. each file is renamed into ``dir`` (every file is always whole), the previous save's leftovers are deleted;
5. the staging manifest is renamed to ``dir/hf_unlearn_manifest.json``: the single rename that commits the save.

A kill before step 3 leaves the earlier save, whole and committed; a kill in steps 3-5 leaves a prepared staging
folder and no manifest: ``push`` refuses the folder, and the next save or run in it finishes the publish
(``recover_interrupted_save``), with a log line. A model save's manifest lists only what that save wrote: never
``checkpoint-*``, ``runs/``, logs or the user's files, so no later save deletes them. Checkpoint manifests
(``kind="checkpoint"``) list their whole folder, which is renamed into place whole.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
from typing import Any

from .utils import atomic_write_bytes, fsync_directory, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST_NAME = "hf_unlearn_manifest.json"
MANIFEST_FORMAT = "hf_unlearn.manifest"
MANIFEST_VERSION = 2  # 2: a model save's manifest lists only its own files and has kind="model"
SAVE_STAGING = ".tmp-hf_unlearn-save"
# utils._temporary_sibling's names: ".tmp-" + mkstemp's 8 random characters + "-" + the target's name.
_ATOMIC_TEMP_RE = re.compile(r"^\.tmp-[a-z0-9_]{8}-.+$")
# What a save of an earlier version (no manifest, or a version-1 manifest that listed the whole folder) may have left
# that a new save must not mix with its own files.
_LEGACY_SAVE_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "model-*-of-*.safetensors", "adapter_config.json", "adapter_model.safetensors", "training_args.bin",
    "hf_unlearn_card.json", "saliency_mask/saliency_mask.safetensors", "saliency_mask/saliency_mask_config.json",
)
FIX_SAVE_AGAIN = "Save the model into it again (`trainer.save_model()`), then push"


class ModelFolderError(ValueError):
    """A folder to push is not one whole save (manifest missing, damaged, or not matching the files)."""


# ----------------------------------------------------------------------------------------------------------------
# Manifests
# ----------------------------------------------------------------------------------------------------------------
def walk_files(folder: str) -> dict[str, int]:
    """``{relative path with '/': size}`` of every file under ``folder`` (the manifest itself excluded)."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if rel != MANIFEST_NAME:
                out[rel] = os.path.getsize(os.path.join(root, name))
    return out


def fsync_tree(folder: str) -> None:
    """Flush every file under ``folder`` to disk before it is renamed into place (a rename is only as durable as
    the data it points to)."""
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
            except OSError:  # e.g. a platform that cannot fsync a read-only handle
                pass
        fsync_directory(root)


def write_manifest(folder: str, files: dict[str, int] | None = None, **fields_: Any) -> dict:
    """Write ``folder/hf_unlearn_manifest.json`` (``files``, default every file of ``folder``, with their sizes)."""
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                "files": walk_files(folder) if files is None else files, **fields_}
    write_json_atomic(os.path.join(folder, MANIFEST_NAME), manifest)
    fsync_directory(folder)
    return manifest


def read_manifest(folder: str) -> dict | None:
    """The manifest of ``folder``, or None when there is none or it is not one of ours."""
    try:
        with open(os.path.join(folder, MANIFEST_NAME), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT and isinstance(data.get("files"), dict)
    return data if ok else None


def _path(folder: str, rel: str) -> str:
    return os.path.join(folder, *rel.split("/"))


def previous_save_files(final_dir: str) -> set[str]:
    """What the last model save into ``final_dir`` wrote: its manifest's files, or, for a save of an earlier version
    (no manifest, or one that listed the whole folder), the known save artifacts present."""
    manifest = read_manifest(final_dir)
    if manifest is not None and manifest.get("kind") == "model":
        return set(manifest["files"])
    present = set()
    for pattern in _LEGACY_SAVE_FILES:
        folder, _, name = pattern.rpartition("/")
        base = os.path.join(final_dir, folder) if folder else final_dir
        if os.path.isdir(base):
            present |= {f"{folder}/{n}" if folder else n for n in os.listdir(base)
                        if fnmatch.fnmatch(n, name) and os.path.isfile(os.path.join(base, n))}
    return present


# ----------------------------------------------------------------------------------------------------------------
# The staged publish
# ----------------------------------------------------------------------------------------------------------------
def publish_staged(staging: str, final_dir: str, *, merge: bool = False, **manifest_fields: Any) -> dict:
    """Publish every file of ``staging`` into ``final_dir`` as one save (steps 2-5 of the module docstring).

    ``merge=False`` (a save): the files the previous save wrote and this one does not are deleted. ``merge=True``
    (e.g. a card re-rendered into a saved folder): the previous save's other files stay and stay listed.
    Returns the manifest.
    """
    new_files = walk_files(staging)
    previous = read_manifest(final_dir)
    if merge and previous is not None and previous.get("kind") == "model":
        files, replaces = {**previous["files"], **new_files}, []
    else:
        files, replaces = new_files, sorted(previous_save_files(final_dir) - set(new_files))
    fsync_tree(staging)
    write_manifest(staging, files, kind="model", replaces=replaces, **manifest_fields)  # prepared
    try:
        os.remove(os.path.join(final_dir, MANIFEST_NAME))  # withdrawn: the folder is no longer one save
    except FileNotFoundError:
        pass
    fsync_directory(final_dir)
    return _finish_publish(staging, final_dir)


def _finish_publish(staging: str, final_dir: str) -> dict:
    """Move the prepared save's files into place, delete what it replaces, commit its manifest (idempotent: a
    publish killed at any point of this function is finished by calling it again)."""
    manifest = read_manifest(staging)
    for rel in sorted(manifest["files"]):
        source = _path(staging, rel)
        if os.path.isfile(source):
            target = _path(final_dir, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(source, target)
    for rel in manifest.get("replaces", []):
        path = _path(final_dir, rel)
        if os.path.isfile(path):
            os.remove(path)
        parent = os.path.dirname(path)
        if os.path.normpath(parent) != os.path.normpath(final_dir) and os.path.isdir(parent) \
                and not os.listdir(parent):
            os.rmdir(parent)
    missing = [rel for rel, size in manifest["files"].items()
               if not os.path.isfile(_path(final_dir, rel)) or os.path.getsize(_path(final_dir, rel)) != size]
    if missing:  # a file changed by hand in between: never commit a save that is not whole
        raise ModelFolderError(f"{missing[0]} is missing or has changed")
    for folder in {os.path.dirname(_path(final_dir, rel)) for rel in manifest["files"]}:
        fsync_directory(folder)
    os.replace(os.path.join(staging, MANIFEST_NAME), os.path.join(final_dir, MANIFEST_NAME))  # committed
    fsync_directory(final_dir)
    shutil.rmtree(staging, ignore_errors=True)
    return manifest


def recover_interrupted_save(final_dir: str) -> str | None:
    """Deal with what a killed save left in ``final_dir/.tmp-hf_unlearn-save/``; returns what was done, or None.

    * killed after the save was prepared, while its files were moved (no manifest in ``final_dir``): the publish is
      finished ("finished");
    * killed while writing (or before the earlier save's manifest was withdrawn): the staging folder is removed;
      ``final_dir`` still holds the earlier save, whole ("removed").
    """
    staging = os.path.join(final_dir, SAVE_STAGING)
    if not os.path.isdir(staging):
        return None
    prepared = read_manifest(staging)
    if prepared is not None and prepared.get("kind") == "model" \
            and not os.path.isfile(os.path.join(final_dir, MANIFEST_NAME)):
        try:
            _finish_publish(staging, final_dir)
        except ModelFolderError as err:
            shutil.rmtree(staging, ignore_errors=True)
            logger.warning("A model save that a killed run left half moved into place could not be finished (%s); "
                           "the folder holds no whole save until the next one.", err)
            return "abandoned"
        logger.warning("Finished a model save that a killed run left half moved into place (every file had been "
                       "written); the folder now holds that save, whole.")
        return "finished"
    shutil.rmtree(staging, ignore_errors=True)
    logger.warning("Removed the unfinished model save a killed run left in a save folder (%s/); the earlier save "
                   "there is unchanged.", SAVE_STAGING)
    return "removed"


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the temporary files a killed run left in ``folder`` (our atomic writes' ``.tmp-XXXXXXXX-<name>``
    files, at the top level and in ``saliency_mask/``); returns their names."""
    removed = []
    for sub in ("", "saliency_mask"):
        base = os.path.join(folder, sub) if sub else folder
        if not os.path.isdir(base):
            continue
        for name in sorted(os.listdir(base)):
            path = os.path.join(base, name)
            if _ATOMIC_TEMP_RE.match(name) and os.path.isfile(path):
                os.remove(path)
                removed.append(f"{sub}/{name}" if sub else name)
    return removed


def write_into_model_folder(folder: str, files: dict[str, bytes]) -> None:
    """Write ``files`` ({relative path: bytes}) into ``folder``: when ``folder`` holds a published model save, as a
    staged publish that adds them to its manifest (so the folder stays one whole save); else atomically, file by
    file (e.g. into a staging folder during a save)."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("kind") != "model" or publish_problems(folder, []):
        # not a whole save (e.g. a staging folder during a save): nothing to keep whole
        for rel, data in files.items():
            atomic_write_bytes(_path(folder, rel), data)
        return
    recover_interrupted_save(folder)
    staging = os.path.join(folder, SAVE_STAGING)
    os.makedirs(staging)
    for rel, data in files.items():
        os.makedirs(os.path.dirname(_path(staging, rel)), exist_ok=True)
        with open(_path(staging, rel), "wb") as f:
            f.write(data)
    fields_ = {k: v for k, v in manifest.items() if k not in ("format", "version", "files", "kind", "replaces")}
    publish_staged(staging, folder, merge=True, **fields_)


def publish_copies(source: str, files: list[str], final_dir: str, **manifest_fields: Any) -> dict:
    """Publish copies of ``files`` of ``source`` (e.g. a checkpoint) into ``final_dir`` as one model save."""
    recover_interrupted_save(final_dir)
    staging = os.path.join(final_dir, SAVE_STAGING)
    os.makedirs(staging)
    for rel in files:
        os.makedirs(os.path.dirname(_path(staging, rel)), exist_ok=True)
        shutil.copyfile(_path(source, rel), _path(staging, rel))
    return publish_staged(staging, final_dir, **manifest_fields)


# ----------------------------------------------------------------------------------------------------------------
# The check before a push
# ----------------------------------------------------------------------------------------------------------------
def publish_problems(folder: str, files: list[str]) -> list[str]:
    """Why ``files`` of ``folder`` are not one whole save ([] when they are), each naming a file and its fix.

    Every file the manifest lists must be there with its size (a version-1 manifest, which listed the whole folder:
    every listed file that is pushed), and every file to push must be listed.
    """
    if not os.path.isfile(os.path.join(folder, MANIFEST_NAME)):
        prepared = read_manifest(os.path.join(folder, SAVE_STAGING))
        if prepared is not None and prepared.get("kind") == "model":
            return [f"{MANIFEST_NAME} is missing: a save into it was killed while its files were moved into place, so "
                    "it may mix two saves. Save the model into it again, or start the next run in it "
                    "(`trainer.train()`): either finishes that save first"]
        return [f"{MANIFEST_NAME} is missing: the folder was not saved whole by hf_unlearn's `save_model` (or by an "
                f"earlier version). {FIX_SAVE_AGAIN}"]
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{MANIFEST_NAME} is damaged (not an hf_unlearn manifest). {FIX_SAVE_AGAIN}"]
    listed = manifest["files"]
    if manifest.get("kind") not in ("model", "checkpoint"):  # version 1: it listed the whole folder
        listed_to_check = {rel: size for rel, size in listed.items() if rel in files}
    else:
        listed_to_check = listed
    problems = []
    for rel, size in sorted(listed_to_check.items()):
        path = _path(folder, rel)
        if not os.path.isfile(path):
            problems.append(f"{rel} is missing (the last save wrote it). {FIX_SAVE_AGAIN}")
        elif os.path.getsize(path) != size:
            problems.append(f"{rel} has {os.path.getsize(path)} bytes, the last save wrote {size}: it was changed "
                            f"after the save. {FIX_SAVE_AGAIN}")
    for rel in sorted(set(files) - set(listed)):
        problems.append(f"{rel} is not in {MANIFEST_NAME}: the last save did not write it, so it would be published "
                        "next to another save's files. Move it out of the folder (a save never deletes files it did "
                        "not write), then push")
    return problems


def check_publishable(folder: str, files: list[str]) -> None:
    """Raise ``ModelFolderError`` naming the first problem (and how many more) if ``files`` are not one whole save."""
    problems = publish_problems(folder, files)
    if problems:
        more = f" ({len(problems) - 1} more problem(s) of the same kind.)" if len(problems) > 1 else ""
        raise ModelFolderError(f"Refusing to push {folder!r}: {problems[0]}.{more}")
