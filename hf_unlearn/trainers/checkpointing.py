"""Saves that land whole or not at all, resumes that pick a complete checkpoint of the same run, one run per folder.

* **Atomic saves.** ``save_model(dir)`` is a staged publish (``hf_unlearn.model_folder``): every file is written into
  ``dir/.tmp-hf_unlearn-save/``, then moved into ``dir`` under a journal whose last step, one rename, commits the
  save's manifest. The manifest lists only what the save wrote, so a later save removes the earlier save's leftovers
  (an old ``saliency_mask/``, old shards) and never checkpoints, logs or the user's files. A checkpoint is written
  into ``checkpoint-N.tmp/`` and renamed to ``checkpoint-N`` only when complete, its manifest written last. Files are
  fsynced before the renames, directories after.
* **Resume.** ``resume_from_checkpoint=True`` (or a path) uses the last *complete* checkpoint: one with a manifest
  whose files are all there at their recorded sizes (checkpoints of earlier versions, without a manifest, are checked
  for ``trainer_state.json`` and whole safetensors files instead). Incomplete ones are skipped with a warning. Each
  manifest records the run's fingerprint (method, objective settings, mask, trainable parameters); a resume under
  another one is refused with what differs (``train(..., allow_resume_mismatch=True)`` resumes anyway, unless the
  trainable parameters differ: the optimizer state cannot fit then).
* **Rotation** (``save_total_limit``) counts and deletes complete checkpoints only and never the last complete one.
* **One run per output_dir.** ``train()`` holds ``output_dir/hf_unlearn.lock`` (``run_lock``: an OS file lock, so a
  dead run's lock is free and exactly one of several starters gets it); a second run is refused, naming it. Once it
  holds the folder, a run finishes or removes what a killed run left there (a half-published save, temporary files,
  ``checkpoint-N.tmp``/``.old`` folders), with a log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..model_folder import (  # noqa: F401 - MANIFEST_NAME, SAVE_STAGING: imported from here by tests and users
    MANIFEST_NAME,
    SAVE_STAGING,
    fsync_tree,
    publish_staged,
    read_manifest,
    recover_interrupted_save,
    remove_stale_temporaries,
    write_manifest,
)
from ..models import canonical_parameter_name
from ..utils import fsync_directory
from .run_lock import LOCK_NAME, OutputDirInUseError, RunLock  # noqa: F401 - part of this module's API

logger = logging.getLogger(__name__)

STAGING_SUFFIX = ".tmp"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_STAGING_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+){re.escape(STAGING_SUFFIX)}$")
_REPLACED_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)\.old$")
# Config fields that change how a run is carried out, not what it optimises: a resume may change them.
_OPERATIONAL_FIELDS = {
    "stop_forget_loss_above", "precompute_ref_log_probs", "precompute_teacher_features",
    "precompute_retain_activations", "divergence_guard", "max_weight_norm_change", "stop_at_holdout",
    "stop_criterion", "stop_nll_margin", "stop_auc_delta", "probe_steps", "probe_rows", "probe_batch_size",
    "noop_check_steps", "noop_min_nll_change",
}


class ResumeMismatchError(ValueError):
    """``resume_from_checkpoint`` names a checkpoint of a different run (method, objective, mask or parameters)."""


# ----------------------------------------------------------------------------------------------------------------
# Manifests and completeness
# ----------------------------------------------------------------------------------------------------------------
def _safetensors_problem(path: str) -> str | None:
    """Why a safetensors file is not whole (its header must parse and its data end exactly at the end of the file)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                return "truncated header"
            header = json.loads(f.read(length))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        if 8 + length + max(ends, default=0) != size:
            return "truncated data"
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return "unreadable"
    return None


def checkpoint_problems(folder: str) -> list[str]:
    """Why ``folder`` is not a complete checkpoint ([] when it is)."""
    manifest = read_manifest(folder)
    if os.path.isfile(os.path.join(folder, MANIFEST_NAME)) and manifest is None:
        return [f"{MANIFEST_NAME} is damaged"]
    if manifest is not None:
        problems = []
        for rel, size in manifest.get("files", {}).items():
            path = os.path.join(folder, *rel.split("/"))
            if not os.path.isfile(path):
                problems.append(f"{rel} is missing")
            elif os.path.getsize(path) != size:
                problems.append(f"{rel} has {os.path.getsize(path)} bytes, {size} were written")
        return problems
    # A checkpoint of an earlier version: no manifest, so check what resuming reads.
    problems = []
    try:
        with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError):
        problems.append("trainer_state.json is missing or damaged")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    weights = [n for n in names if n.endswith(".safetensors")]
    if not weights and not any(n.startswith("global_step") for n in names):  # DeepSpeed keeps its own files
        problems.append("no safetensors weights")
    for name in weights:
        problem = _safetensors_problem(os.path.join(folder, name))
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def scan_checkpoints(run_dir: str) -> tuple[list[tuple[int, str]], list[tuple[str, list[str]]]]:
    """``(complete [(step, path)] sorted by step, incomplete [(path, problems)])`` in ``run_dir``.

    ``checkpoint-N.tmp`` folders (interrupted saves) count as incomplete.
    """
    complete, incomplete = [], []
    if not os.path.isdir(run_dir):
        return complete, incomplete
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if not os.path.isdir(path):
            continue
        if _STAGING_RE.match(name):
            incomplete.append((path, ["interrupted while it was being written"]))
        elif _CHECKPOINT_RE.match(name):
            problems = checkpoint_problems(path)
            if problems:
                incomplete.append((path, problems))
            else:
                complete.append((int(_CHECKPOINT_RE.match(name).group(1)), path))
    return sorted(complete), sorted(incomplete)


def _step_of(path: str) -> int | None:
    name = os.path.basename(os.path.normpath(path))
    match = _CHECKPOINT_RE.match(name) or _STAGING_RE.match(name)
    return int(match.group(1)) if match else None


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str) -> str | None:
    """The complete checkpoint to resume from for ``resume_from_checkpoint=value``.

    ``True``: the last complete checkpoint of ``output_dir``. A path: that checkpoint if complete, else the last
    complete one of its folder at or before its step. Skipped checkpoints are named in a warning.

    Raises:
        ValueError: there is no complete checkpoint to resume from.
    """
    if value is None or value is False:
        return None
    if value is True:
        run_dir, at_most = output_dir, None
    else:
        path = os.fspath(value)
        if os.path.isdir(path) and not checkpoint_problems(path):
            return path
        run_dir, at_most = os.path.dirname(os.path.normpath(path)), _step_of(path)
        if at_most is None:  # not a checkpoint-N folder: nothing to fall back to
            why = "is not a directory" if not os.path.isdir(path) else \
                f"is not a complete checkpoint ({'; '.join(checkpoint_problems(path))})"
            raise ValueError(f"resume_from_checkpoint={path!r} {why}. Pass a checkpoint folder (e.g. "
                             "output_dir/checkpoint-500) or True for the last complete one of output_dir.")
    complete, incomplete = scan_checkpoints(run_dir)
    candidates = [(s, p) for s, p in complete if at_most is None or s <= at_most]
    chosen = candidates[-1][1] if candidates else None
    skipped = [(p, why) for p, why in incomplete
               if (chosen is None or (_step_of(p) or 0) > (_step_of(chosen) or 0))
               and (at_most is None or (_step_of(p) or 0) <= at_most)]
    if skipped and chosen is not None:
        described = "; ".join(f"{os.path.basename(p)} ({', '.join(why[:2])})" for p, why in skipped)
        # No folder path in a warning (logs are shared; a run directory's name can name the forget set).
        warnings.warn(f"Skipping incomplete checkpoint(s) {described}. Resuming from {os.path.basename(chosen)}.",
                      stacklevel=3)
    if chosen is None:
        found = "; ".join(f"{os.path.basename(p)} ({', '.join(why[:2])})" for p, why in incomplete
                          ) or "no checkpoint-N folder"
        raise ValueError(f"No complete checkpoint to resume from in {run_dir!r} (found: {found}). Start without "
                         "resume_from_checkpoint, or point it at a complete checkpoint folder.")
    return chosen


def rotate_checkpoints(run_dir: str, limit: int | None, best: str | None = None) -> list[str]:
    """Keep at most ``limit`` complete checkpoints (never the last complete one, nor ``best``); returns the deleted.

    Leftover ``checkpoint-N.tmp`` folders (interrupted saves of this run directory) are removed too.
    """
    complete, incomplete = scan_checkpoints(run_dir)
    deleted = []
    for path, _ in incomplete:
        if _STAGING_RE.match(os.path.basename(path)):
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    if not limit or limit <= 0 or len(complete) <= limit:
        return deleted
    protected = {os.path.normpath(complete[-1][1])}
    if best:
        protected.add(os.path.normpath(best))
    keep = max(limit, len(protected))
    remaining = len(complete)
    for _, path in complete:
        if remaining <= keep:
            break
        if os.path.normpath(path) not in protected:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
            remaining -= 1
    return deleted


def clean_after_killed_run(output_dir: str) -> None:
    """What a killed run left in ``output_dir``, dealt with by the next run once it holds the folder's lock: a model
    save half moved into place is finished (every file had been written) or its staging removed; temporary files of
    atomic writes and unfinished ``checkpoint-N.tmp`` / replaced ``checkpoint-N.old`` folders are removed. One log
    line each; no folder path (a run directory's name can name the forget set)."""
    if not os.path.isdir(output_dir):
        return
    recover_interrupted_save(output_dir)
    removed = remove_stale_temporaries(output_dir)
    for name in sorted(os.listdir(output_dir)):
        if (_STAGING_RE.match(name) or _REPLACED_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name)):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
            removed.append(name + "/")
    if removed:
        shown = ", ".join(removed[:6]) + (f" and {len(removed) - 6} more" if len(removed) > 6 else "")
        logger.warning("Removed %d temporary file(s) or folder(s) that a killed run left in output_dir: %s.",
                       len(removed), shown)


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else (
        [_json_safe(v) for v in value] if isinstance(value, (list, tuple)) else str(value))


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two run fingerprints ([] when they agree)."""
    lines = []
    for key in ("method", "trainer"):
        if saved.get(key) != current.get(key):
            lines.append(f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now")
    old, new = saved.get("objective", {}), current.get("objective", {})
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            lines.append(f"{name}: {old.get(name)!r} in the checkpoint, {new.get(name)!r} now")
    old_mask, new_mask = saved.get("mask"), current.get("mask")
    if old_mask != new_mask:
        describe = {None: "no mask"}
        lines.append(f"saliency mask: {describe.get(old_mask, old_mask)} in the checkpoint, "
                     f"{describe.get(new_mask, new_mask)} now (a different mask)")
    return lines


def trainable_differences(saved: dict, current: dict) -> list[str]:
    old, new = saved.get("trainable") or {}, current.get("trainable") or {}
    if old and new and old != new:
        return [f"trainable parameters: {old.get('count')} tensors ({old.get('numel')} entries) in the checkpoint, "
                f"{new.get('count')} tensors ({new.get('numel')} entries) now"]
    return []


# ----------------------------------------------------------------------------------------------------------------
# The trainer mixin
# ----------------------------------------------------------------------------------------------------------------
class SafeCheckpointMixin:
    """Atomic checkpoints, complete-only resume and rotation, a fingerprint per checkpoint, and the run lock.

    For ``UnlearnTrainer``; subclasses add files to a checkpoint by overriding ``_save_checkpoint_extras(folder)``
    (called before the checkpoint is marked complete). ``divergence_guard`` (optional) verifies the weights first.
    """

    _checkpoint_staging: str | None = None
    _deferred_push: str | None = None
    _run_lock: RunLock | None = None

    # -------------------------------------------------------------------------------------------- fingerprint
    def run_fingerprint(self) -> dict:
        """What a checkpoint must agree with to be resumed: method, objective settings, mask, trainable parameters."""
        base = {f.name for f in fields(TrainingArguments)}
        objective = {f.name: _json_safe(getattr(self.args, f.name)) for f in fields(type(self.args))
                     if f.name not in base and f.name not in _OPERATIONAL_FIELDS}
        source = getattr(self, "saliency_mask", None)
        cached = getattr(self, "_mask_fingerprint", None)
        if cached is None or cached[0] is not source:  # computed once per mask (it packs every entry)
            mask = self._mask_object() if source is not None else None
            cached = self._mask_fingerprint = (source, mask.fingerprint() if mask is not None else None)
        trainable = [(canonical_parameter_name(n), p) for n, p in self.model.named_parameters() if p.requires_grad]
        from ..integrations.deepspeed import param_shape

        digest = hashlib.sha256(json.dumps([[n, list(param_shape(p))] for n, p in trainable]).encode())
        numel = 0
        for _, p in trainable:
            n = 1
            for d in param_shape(p):
                n *= int(d)
            numel += n
        return {
            "method": getattr(self, "_name", None), "trainer": type(self).__name__, "objective": objective,
            "mask": cached[1],
            "trainable": {"count": len(trainable), "numel": numel, "sha256": digest.hexdigest()},
        }

    def _check_resume_fingerprint(self, checkpoint: str, allow_mismatch: bool) -> None:
        manifest = read_manifest(checkpoint)
        saved = (manifest or {}).get("fingerprint")
        if not saved:
            return  # a checkpoint of an earlier version: nothing recorded to compare
        current = self.run_fingerprint()
        trainable = trainable_differences(saved, current)
        if trainable:
            raise ResumeMismatchError(
                f"Cannot resume from {checkpoint}: this run trains other parameters than the checkpoint's run "
                f"({trainable[0]}), so its optimizer state cannot be restored (a mask or freezing over other "
                "parameters). Use the same mask and settings, or start a new run (a fresh output_dir) from the "
                f"checkpoint's weights: from_pretrained({checkpoint!r})."
            )
        differences = fingerprint_differences(saved, current)
        if not differences:
            return
        message = (f"{checkpoint} was written by a different run:\n  - " + "\n  - ".join(differences) + "\n")
        if allow_mismatch:
            warnings.warn(message + "Resuming anyway (allow_resume_mismatch=True).", stacklevel=3)
            return
        raise ResumeMismatchError(
            f"Refusing to resume: {message}Resume with the same method, settings and mask; pass "
            "train(resume_from_checkpoint=..., allow_resume_mismatch=True) to continue under the new ones "
            "deliberately; or start a new run in a fresh output_dir."
        )

    # -------------------------------------------------------------------------------------------- train
    def resolve_resume_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """The complete checkpoint ``train(resume_from_checkpoint=...)`` will use (see the module docstring)."""
        return resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *, allow_resume_mismatch: bool = False,
              **kwargs):
        checkpoint = self.resolve_resume_checkpoint(resume_from_checkpoint)
        if checkpoint is not None:
            self._check_resume_fingerprint(checkpoint, allow_resume_mismatch)
        self._acquire_run_lock()
        try:
            return super().train(resume_from_checkpoint=checkpoint, **kwargs)
        finally:
            self._release_run_lock()

    def _acquire_run_lock(self) -> None:
        error = None
        if self.args.should_save:
            self._run_lock = RunLock(self.args.output_dir)
            try:
                self._run_lock.acquire()
            except OutputDirInUseError as err:
                error = str(err)
            else:
                clean_after_killed_run(self.args.output_dir)
        if self.args.world_size > 1:  # every process stops, not only the one that holds the folder
            from accelerate.utils import broadcast_object_list

            error = broadcast_object_list([error], from_process=0)[0]
        if error is not None:
            raise OutputDirInUseError(error)

    def _release_run_lock(self) -> None:
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None

    # -------------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint_extras(self, folder: str) -> None:
        """Write files of the trainer's own state into the (staged) checkpoint ``folder``. Subclasses extend."""

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is written, Trainer's checkpoint-N goes under checkpoint-N.tmp/ (renamed when whole).
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._checkpoint_staging is not None:  # push the checkpoint once it has its final name
            self._deferred_push = checkpoint_folder
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def _barrier(self) -> None:
        if self.args.world_size > 1:
            self.accelerator.wait_for_everyone()

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, staging = os.path.join(run_dir, name), os.path.join(run_dir, name + STAGING_SUFFIX)
        staged = os.path.join(staging, name)
        guard = getattr(self, "divergence_guard", None)
        verified = guard.verify_before_save(name) if guard is not None else None
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
        self._barrier()
        self._checkpoint_staging, self._deferred_push = staging, None
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                self._save_checkpoint_extras(staged)
        finally:
            self._checkpoint_staging = None
        self._barrier()  # every process has written its part
        if self.args.should_save:
            if self.state.best_model_checkpoint == staged:  # Trainer saw the staged name
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
            write_manifest(staged, kind="checkpoint", step=self.state.global_step,
                           fingerprint=self.run_fingerprint(), verified=verified)
            fsync_tree(staged)
            if os.path.exists(final):  # a checkpoint of an earlier run with the same step: replace it whole
                old = final + ".old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(staged, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staged, final)
            os.rmdir(staging)
            fsync_directory(run_dir)
        self._barrier()
        if self._deferred_push is not None:
            self._deferred_push = None
            self._push_from_checkpoint(final)
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)

    def _load_best_model(self) -> None:
        # Trainer loads the best checkpoint's weights raw: for architectures saved under legacy key names (LLaVA in
        # transformers 5) nothing matches and the last weights silently stay. _load_from_checkpoint converts them.
        best = self.state.best_model_checkpoint
        if best and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            self._load_from_checkpoint(best)
            return
        super()._load_best_model()

    def last_verified_checkpoint(self) -> str | None:
        """The newest complete checkpoint of ``output_dir`` whose weights were verified finite when saved."""
        complete, _ = scan_checkpoints(self.args.output_dir) if self.args.output_dir else ([], [])
        for _, path in reversed(complete):
            if ((read_manifest(path) or {}).get("verified") or {}).get("finite"):
                return path
        return None


@contextmanager
def staged_save(trainer, output_dir: str) -> Iterator[str]:
    """Context for ``save_model``: yields the folder to write into; on success the files are published atomically.

    Inside a checkpoint save the folder is the staged checkpoint itself (it is renamed whole afterwards). On an
    exception nothing in ``output_dir`` has changed.
    """
    if getattr(trainer, "_checkpoint_staging", None) is not None:
        yield output_dir
        return
    guard = getattr(trainer, "divergence_guard", None)
    verified = guard.verify_before_save(f"save_model({output_dir!r})") if guard is not None else None
    staging = os.path.join(output_dir, SAVE_STAGING)
    if trainer.args.should_save:
        os.makedirs(output_dir, exist_ok=True)
        recover_interrupted_save(output_dir)  # a save a killed run left: finished, or removed
        os.makedirs(staging)
    if trainer.args.world_size > 1:
        trainer.accelerator.wait_for_everyone()
    try:
        yield staging
    except BaseException:
        if trainer.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if trainer.args.world_size > 1:
        trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        publish_staged(staging, output_dir, step=trainer.state.global_step, verified=verified)
