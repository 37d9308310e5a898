"""Model cards and privacy-safe Hub pushes for unlearning trainers: ``ModelCardMixin``.

What reaches the Hub is an allowlist, never "the output directory": the model's config and safetensors weights (or a
PEFT adapter), the processing class's files, the saliency mask (``saliency_mask/``) and the model card. Everything
else a run leaves behind stays local, in particular ``training_args.bin`` (a pickle of the arguments that holds
``output_dir``, ``run_name`` and ``logging_dir``, which can name the forget set), ``trainer_state.json``, optimizer,
scheduler and RNG states, logs, and ``hf_unlearn_card.json`` (the card's inputs, already filtered, from which
``hf-unlearn push`` renders the card for a repo id later). ``transformers.Trainer`` uploads the whole output
directory, ``training_args.bin`` included, at the end and at every save (``hub_strategy``); this mixin replaces both.

A push is one commit: it lands whole or not at all. If it fails, the local files are complete and untouched and a
``HubPushError`` says what to run again.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import Any

import torch
from huggingface_hub import CommitOperationAdd, HfApi
from transformers import TrainingArguments
from transformers.trainer_utils import HubStrategy
from transformers.utils.hub import PushInProgress

from ..hub import _flatten_metrics, _hub_id, build_model_card, safe_settings
from ..models import is_vision_language_model, unwrap_model
from ..utils import atomic_copy, atomic_write_bytes
from ..saliency.config import CONFIG_NAME as MASK_CONFIG_NAME
from ..saliency.mask import MASK_NAME, SaliencyMask

logger = logging.getLogger(__name__)

__all__ = ["CARD_INPUTS_NAME", "HubPushError", "MASK_SUBFOLDER", "ModelCardMixin", "commit_files",
           "publishable_files", "read_card_inputs", "render_card"]

CARD_NAME = "README.md"
CARD_INPUTS_NAME = "hf_unlearn_card.json"
MASK_SUBFOLDER = "saliency_mask"
# Never uploaded, whatever else matches: pickles, training state, our local card inputs.
NEVER_PUSHED = (
    "training_args.bin", "trainer_state.json", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth",
    "*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", CARD_INPUTS_NAME,
)
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "adapter_config.json", "adapter_model.safetensors")
_PROCESSOR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.json",
    "chat_template.jinja", "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
)
_PROCESSOR_PATTERNS = ("*.jinja", "*.tiktoken", "*.model", "additional_chat_templates/*.jinja")
_MASK_FILES = (f"{MASK_SUBFOLDER}/{MASK_NAME}", f"{MASK_SUBFOLDER}/{MASK_CONFIG_NAME}")
# Training knobs worth a row in the card besides the method's own fields (the rest of TrainingArguments is plumbing).
_CORE_TRAINING_KNOBS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm", "optim", "seed", "bf16",
    "fp16",
)
_CARD_INPUT_KEYS = ("method_name", "method_tag", "paper", "base_model", "pipeline_tag", "settings", "mask_summary",
                    "metrics_before", "metrics_after", "tags")
_MAX_MODULE_ROWS = 24  # more modules than this: the card's mask table is per model part instead


class HubPushError(RuntimeError):
    """A push to the Hub failed. The local files are complete and unchanged: run the same push again."""


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------
def _never_pushed(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, pattern) for pattern in NEVER_PUSHED)


def _check_adapter_config(folder: str) -> None:
    """A PEFT adapter names its base model; a local path there would publish the run's file layout."""
    path = os.path.join(folder, "adapter_config.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path")
    if base and (_hub_id(base) is None or "/" not in base):
        raise ValueError(
            "adapter_config.json names a local base model path, which would be published with the adapter. Set "
            "`model.peft_config['default'].base_model_name_or_path = '<org>/<base-model>'` (the Hub id of the base "
            "model) and save again, or merge the adapter first (`model.merge_and_unload()`)."
        )


def publishable_files(folder: str | os.PathLike, extra_names: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The files of ``folder`` that may be pushed, as repo paths (``/``-separated), sorted.

    Kept: the model config and safetensors weights (with the shards its index lists) or a PEFT adapter, the
    processing class's files (known names, ``*.jinja``/``*.model``/``*.tiktoken``, and ``extra_names``), ``README.md``
    and ``saliency_mask/``. Never kept: ``NEVER_PUSHED`` (``training_args.bin``, states, pickles, card inputs).

    Raises:
        FileNotFoundError: ``folder`` holds no config and safetensors weights.
        ValueError: a PEFT adapter names a local base-model path.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder!r} is not a directory; pass the run's output directory.")
    present: set[str] = set()
    for root, dirs, names in os.walk(folder):
        # checkpoints, temporary files and hidden folders are never part of a push
        dirs[:] = [d for d in dirs if not d.startswith(("checkpoint-", ".", "_"))]
        rel_root = os.path.relpath(root, folder)
        parts = [] if rel_root == "." else rel_root.split(os.sep)
        present.update("/".join([*parts, name]) for name in names if not name.startswith(".tmp-"))
    has_weights = {"model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"} & present
    if not has_weights or not ({"config.json", "adapter_config.json"} & present):
        pickled = sorted(n for n in present if n.endswith((".bin", ".pt", ".pth")) and "/" not in n)
        hint = f" It has {pickled}: only safetensors are published." if pickled else ""
        raise FileNotFoundError(
            f"No model to push in {folder!r}: it needs config.json and safetensors weights (model.safetensors, a "
            f"sharded index, or a PEFT adapter).{hint} Save it with `trainer.save_model()` (or "
            "`model.save_pretrained(dir)`) first."
        )
    _check_adapter_config(folder)
    wanted = set(_MODEL_FILES) | set(_PROCESSOR_FILES) | set(extra_names) | set(_MASK_FILES) | {CARD_NAME}
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            wanted |= set(json.load(f).get("weight_map", {}).values())
    keep = [rel for rel in present
            if rel in wanted or ("/" not in rel or rel.startswith("additional_chat_templates/"))
            and any(fnmatch.fnmatch(rel, p) for p in _PROCESSOR_PATTERNS)]
    return sorted(rel for rel in keep if not _never_pushed(rel))


def commit_files(
    folder: str | os.PathLike,
    files: list[str],
    repo_id: str,
    *,
    commit_message: str,
    retry_hint: str,
    extra: dict[str, bytes] | None = None,
    path_in_repo: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    run_as_future: bool = False,
):
    """Upload ``files`` of ``folder`` (plus ``extra`` {repo path: bytes}) to ``repo_id`` in one commit.

    Any failure becomes a ``HubPushError`` naming ``retry_hint``; with ``run_as_future`` it is raised by the
    returned ``Future``. Files that are unchanged on the Hub are skipped by the client (no empty commits).
    """
    folder = os.fspath(folder)
    blocked = sorted(rel for rel in [*files, *(extra or {})] if _never_pushed(rel))
    if blocked:
        raise ValueError(f"Refusing to push {blocked}: these files are never published (see NEVER_PUSHED).")
    prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
    operations = [CommitOperationAdd(prefix + rel, os.path.join(folder, *rel.split("/"))) for rel in files]
    operations += [CommitOperationAdd(prefix + rel, data) for rel, data in (extra or {}).items()]
    api = HfApi()  # built now: it reads the endpoint configured at call time

    def _commit():
        try:
            return api.create_commit(repo_id, operations, commit_message=commit_message, token=token,
                                     revision=revision)
        except Exception as err:  # noqa: BLE001 - every failure gets the same retry advice
            raise HubPushError(
                f"Pushing to {repo_id!r} failed ({type(err).__name__}: {err}). Nothing was committed and nothing "
                f"local was deleted or changed: the files in {folder!r} are complete. Retry with {retry_hint}."
            ) from err

    return _push_executor().submit(_commit) if run_as_future else _commit()


_EXECUTOR: ThreadPoolExecutor | None = None


def _push_executor() -> ThreadPoolExecutor:
    """One background worker for all pushes: they run in the order they were made, and no thread is left per push."""
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf_unlearn_push")
    return _EXECUTOR


# ----------------------------------------------------------------------------------------------------------------
# Card inputs (filtered, JSON) and rendering
# ----------------------------------------------------------------------------------------------------------------
def read_card_inputs(folder: str | os.PathLike) -> dict:
    """The card inputs an hf_unlearn trainer saved in ``folder`` (``hf_unlearn_card.json``)."""
    path = os.path.join(os.fspath(folder), CARD_INPUTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {CARD_INPUTS_NAME} in {os.fspath(folder)!r}: it was not saved by an hf_unlearn trainer, so there "
            "is no model card to publish. Save the run with `trainer.save_model()` (hf_unlearn >= 0.1) first."
        )
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not data.get("method_name") or not data.get("method_tag"):
        raise ValueError(f"{path} is not an hf_unlearn card-inputs file (no method_name / method_tag).")
    return {k: data.get(k) for k in _CARD_INPUT_KEYS}


def _dataset_ids(dataset_name: str | list[str] | None, include_dataset_ids: bool) -> list[str]:
    """Validate the dataset opt-in: ids are published only with ``include_dataset_ids=True``, and only Hub ids."""
    names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
    if not include_dataset_ids:
        if names:
            logger.info("Dataset ids are not published in the model card unless include_dataset_ids=True.")
        return []
    if not names:
        raise ValueError("include_dataset_ids=True but no dataset id was given: pass dataset_name='<org>/<dataset>' "
                         "(hf-unlearn push: --dataset-id <org>/<dataset>).")
    bad = [n for n in names if not isinstance(n, str) or _hub_id(n) is None or n.count("/") != 1]
    if bad:
        raise ValueError(f"Dataset ids to publish must be Hub ids like '<org>/<dataset>'; {len(bad)} given value(s) "
                         "are not (a local path or a file name is never published). Pass Hub ids or drop "
                         "include_dataset_ids.")
    return names


def render_card(inputs: dict, *, model_name: str | None, dataset_ids: list[str] | None = None,
                include_dataset_ids: bool = False, tags: list[str] | None = None):
    """Render the ``ModelCard`` from card inputs (as saved in ``hf_unlearn_card.json``); filters apply again."""
    return build_model_card(
        method_name=inputs["method_name"], method_tag=inputs["method_tag"], paper=inputs.get("paper"),
        base_model=inputs.get("base_model"), model_name=model_name, settings=inputs.get("settings") or {},
        mask_summary=inputs.get("mask_summary"), metrics_before=inputs.get("metrics_before"),
        metrics_after=inputs.get("metrics_after"), dataset_ids=dataset_ids, include_dataset_ids=include_dataset_ids,
        tags=[*(inputs.get("tags") or []), *(tags or [])], pipeline_tag=inputs.get("pipeline_tag"),
    )


def _same_mask(a: SaliencyMask, b: SaliencyMask) -> bool:
    config_a, config_b = (None if m.config is None else m.config.to_dict() for m in (a, b))
    return (list(a.masks) == list(b.masks) and config_a == config_b and a.scores_summary == b.scores_summary
            and all(torch.equal(a.masks[n].cpu(), b.masks[n].cpu()) for n in a.masks))


def _mask_summary(mask: SaliencyMask) -> dict:
    by = "module"
    rows = mask.sparsity_report(by=by)
    if len(rows) > _MAX_MODULE_ROWS:
        rows = mask.sparsity_report(by="group")
    # "selected_fraction" (allowed to move); older cards stored the same values under "sparsity" (hub.py reads both).
    return {"config": mask.config.to_dict() if mask.config is not None else {},
            "selected_fraction": {"total": mask.selected_fraction,
                                  "by_module": {r["module"]: r["fraction"] for r in rows}}}


# ----------------------------------------------------------------------------------------------------------------
# The mixin
# ----------------------------------------------------------------------------------------------------------------
class ModelCardMixin:
    """Model cards and allowlisted Hub pushes for a ``transformers.Trainer`` subclass with ``_name``,
    ``_method_tag``, ``_paper`` and ``saliency_mask`` (``UnlearnTrainer``).

    * ``save_model(dir)`` also writes the saliency mask (``dir/saliency_mask/``), the card (``dir/README.md``) and
      its filtered inputs (``dir/hf_unlearn_card.json``), so every checkpoint and a finished run directory are
      complete and ``hf-unlearn push RUN_DIR REPO_ID`` can publish them.
    * ``push_to_hub`` and the pushes during training (``hub_strategy``) upload only ``publishable_files``.
    * ``record_evaluation(before, after)`` puts the Evaluator's metrics into the card.
    """

    _card_metrics: tuple[dict | None, dict | None] = (None, None)
    _processor_files: tuple[str, ...] | None = None
    _warned_checkpoint_push = False

    # -------------------------------------------------------------------------------------------- card contents
    def record_evaluation(self, before: dict | None, after: dict | None) -> None:
        """Store metrics (e.g. ``Evaluator.evaluate()`` before and after unlearning) for the model card.

        Values must be numbers (nested dicts are flattened with ``/``): aggregated scores, never per-sample outputs.
        """
        for which, metrics in (("before", before), ("after", after)):
            if metrics is not None and not isinstance(metrics, dict):
                raise TypeError(f"record_evaluation: `{which}` must be a dict of metric -> number, got "
                                f"{type(metrics).__name__}.")
            _flatten_metrics(metrics, which)  # raises on anything but numbers, naming the metric
        self._card_metrics = (dict(before) if before else None, dict(after) if after else None)

    def _unwrapped_model(self, keep_peft: bool = False):
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        return model if keep_peft else unwrap_model(model)

    def _private_strings(self) -> list[str]:
        args = self.args
        values = [os.path.basename(os.path.normpath(args.output_dir or "")), args.run_name or ""]
        return [v for v in values if len(v) >= 4]

    def _base_model_id(self) -> str | None:
        """The Hub id the model was loaded from; ``None`` for a local path (never published)."""
        peft_config = getattr(self._unwrapped_model(keep_peft=True), "peft_config", None)
        candidates = [getattr(c, "base_model_name_or_path", None)
                      for c in (peft_config.values() if isinstance(peft_config, dict) else [])]
        candidates.append(getattr(getattr(self._unwrapped_model(), "config", None), "_name_or_path", None))
        for name in candidates:
            if isinstance(name, str) and _hub_id(name) and name.count("/") == 1 and not any(
                    s in name for s in self._private_strings()):
                return name
        return None

    def _method_settings(self) -> dict:
        """The method's own config fields plus the core optimisation knobs, through ``safe_settings``."""
        base_fields = {f.name for f in fields(TrainingArguments)}
        own = [f.name for f in fields(type(self.args)) if f.name not in base_fields]
        values = self.args.to_dict()
        return safe_settings({k: values[k] for k in [*_CORE_TRAINING_KNOBS, *own] if k in values})

    def _mask_object(self) -> SaliencyMask | None:
        mask = getattr(self, "saliency_mask", None)
        if mask is None or isinstance(mask, SaliencyMask):
            return mask
        return SaliencyMask({n: t.detach().cpu().to(torch.bool) for n, t in mask.items()})

    def card_inputs(self) -> dict:
        """What the model card is rendered from; every value already filtered (safe to store next to the model)."""
        mask = self._mask_object()
        before, after = self._card_metrics
        is_vlm = is_vision_language_model(self._unwrapped_model())
        return {
            "method_name": self._name, "method_tag": self._method_tag, "paper": self._paper,
            "base_model": self._base_model_id(),
            "pipeline_tag": "image-text-to-text" if is_vlm else "text-generation",
            "settings": self._method_settings(),
            "mask_summary": _mask_summary(mask) if mask is not None else None,
            "metrics_before": before, "metrics_after": after,
            "tags": list(dict.fromkeys([*self._tag_names, self._method_tag])),
        }

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        *,
        include_dataset_ids: bool = False,
        output_dir: str | None = None,
        license: str | None = None,
        language: str | list[str] | None = None,
        finetuned_from: str | None = None,
        dataset: str | list[str] | None = None,
        **kwargs: Any,
    ):
        """Write ``README.md`` (and ``hf_unlearn_card.json``) into ``output_dir`` (default ``args.output_dir``).

        Args:
            model_name: Hub id of this model (title and "How to load"); defaults to the repo being pushed to. A
                local path or the output directory's name is never used.
            dataset_name: Hub dataset id(s); published only with ``include_dataset_ids=True``.
            tags: extra Hub tags (added to ``hf_unlearn``, ``unlearning`` and the method's tag).
            include_dataset_ids: opt in to naming the data sets in the card.
            output_dir: where to write (``save_model`` passes each checkpoint folder).
            license, language: card metadata.
            finetuned_from: Hub id of the base model, when the model config does not carry it.
            dataset: alias of ``dataset_name`` (``Trainer.create_model_card``'s name).
            kwargs: ``tasks``, ``dataset_tags``, ``dataset_args`` of ``Trainer.create_model_card`` are accepted and not
                published (they can name data).

        Returns:
            The ``huggingface_hub.ModelCard`` on the world-process-zero, else ``None``.
        """
        unknown = set(kwargs) - {"tasks", "dataset_tags", "dataset_args"}
        if unknown:
            raise TypeError(f"create_model_card() got unexpected keyword arguments {sorted(unknown)}; it accepts "
                            "model_name, dataset_name, tags, include_dataset_ids, license, language, finetuned_from.")
        dataset_ids = _dataset_ids(dataset_name if dataset_name is not None else dataset, include_dataset_ids)
        if not self.is_world_process_zero():
            return None
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if model_name is None:
            model_name = getattr(self, "hub_model_id", None) or self.args.hub_model_id
        if model_name is not None and (_hub_id(model_name) is None or "/" not in model_name):
            model_name = None  # a bare name or a path: "How to load" shows a placeholder instead
        inputs = self.card_inputs()
        if finetuned_from is not None and _hub_id(finetuned_from) and finetuned_from.count("/") == 1:
            inputs["base_model"] = finetuned_from
        card = render_card(inputs, model_name=model_name, dataset_ids=dataset_ids,
                           include_dataset_ids=include_dataset_ids,
                           tags=[tags] if isinstance(tags, str) else list(tags or []))
        if license is not None:
            card.data.license = license
        if language is not None:
            card.data.language = language
        atomic_write_bytes(os.path.join(output_dir, CARD_NAME), str(card).encode("utf-8"))
        atomic_write_bytes(os.path.join(output_dir, CARD_INPUTS_NAME),
                      (json.dumps(inputs, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        return card

    # -------------------------------------------------------------------------------------------- saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``, plus the saliency mask (``saliency_mask/``) and the model card.

        Called by ``_save_checkpoint`` for each checkpoint folder, so every checkpoint carries its card and mask.
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        super().save_model(output_dir, _internal_call=True)
        if self.args.should_save:
            self._save_mask(os.path.join(output_dir, MASK_SUBFOLDER))
            self.create_model_card(output_dir=output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save_mask(self, folder: str) -> None:
        """Save the mask unless ``folder`` already holds an equal one.

        safetensors writes its metadata in no fixed order, so re-saving an unchanged mask would change its bytes and
        make every push re-upload it.
        """
        mask = self._mask_object()
        if mask is None:
            return
        if os.path.isfile(os.path.join(folder, MASK_NAME)):
            try:
                saved = SaliencyMask.from_pretrained(folder)
            except (OSError, ValueError):
                saved = None
            if saved is not None and _same_mask(saved, mask):
                return
        mask.save_pretrained(folder)

    def _processor_file_names(self) -> tuple[str, ...]:
        """Names the processing class writes (found by saving it once into a temporary folder)."""
        if self._processor_files is None:
            names: list[str] = []
            if self.processing_class is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    self.processing_class.save_pretrained(tmp)
                    for root, _, files in os.walk(tmp):
                        rel = os.path.relpath(root, tmp)
                        names += [f if rel == "." else "/".join([*rel.split(os.sep), f]) for f in files]
            self._processor_files = tuple(names)
        return self._processor_files

    def _retry_hint(self, repo_id: str) -> str:
        return (f"`trainer.push_to_hub()` again, or from a shell `hf-unlearn push {self.args.output_dir} {repo_id}` "
                "(RUN_DIR REPO_ID)")

    # -------------------------------------------------------------------------------------------- pushing
    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """``Trainer.init_hf_repo``, but the repo must be named: the default would be ``output_dir``'s name."""
        if self.args.hub_model_id is None:
            raise ValueError(
                "Set `hub_model_id` (e.g. 'your-name/llava-unlearned') to push: without it the repo would be named "
                "after output_dir, and a run directory's name can name the forget set."
            )
        super().init_hf_repo(token=token, private=private)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, **kwargs: Any):
        """Save, then upload model, processing class, mask (``saliency_mask/``) and card to ``args.hub_model_id``.

        Only ``publishable_files`` go up, in one commit: never ``training_args.bin``, trainer state, optimizer or
        RNG files. ``kwargs``: ``private``, and those of ``create_model_card`` (``tags``, ``dataset_name`` with
        ``include_dataset_ids=True``, ``license``, ...).

        Returns:
            ``CommitInfo`` (``blocking=False``: a ``Future`` of it).

        Raises:
            HubPushError: the upload failed; the local run directory is complete and unchanged, push again.
        """
        private = kwargs.pop("private", None)
        _dataset_ids(kwargs.get("dataset_name", kwargs.get("dataset")), kwargs.get("include_dataset_ids", False))
        token = token if token is not None else self.args.hub_token
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        tags = kwargs.pop("tags", None)
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags += [t for t in (getattr(self.model, "model_tags", None) or []) if t not in tags]
        model_name = kwargs.pop("model_name", None) or self.hub_model_id
        self.create_model_card(model_name=model_name, tags=tags, **kwargs)
        self._finish_current_push()
        folder = self.args.output_dir
        return commit_files(
            folder, publishable_files(folder, self._processor_file_names()), self.hub_model_id,
            commit_message=commit_message or "End of training", retry_hint=self._retry_hint(self.hub_model_id),
            token=token, revision=revision if revision is not None else self.args.hub_revision,
            run_as_future=not blocking,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Pushes during training (``hub_strategy``): the checkpoint's publishable files, never its states."""
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        files = publishable_files(checkpoint_folder, self._processor_file_names())
        output_dir = self.args.output_dir
        for rel in files:  # the output directory mirrors the last pushed checkpoint, as with Trainer
            atomic_copy(os.path.join(checkpoint_folder, *rel.split("/")), os.path.join(output_dir, *rel.split("/")))
        if self.args.save_strategy == "steps":
            message = f"Training in progress, step {self.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(self.state.epoch or 0)}"
        common = dict(retry_hint=self._retry_hint(self.hub_model_id), token=self.args.hub_token,
                      revision=self.args.hub_revision, run_as_future=True)
        jobs = [commit_files(output_dir, files, self.hub_model_id, commit_message=message, **common)]
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            if not self._warned_checkpoint_push:
                logger.warning("hub_strategy=%r pushes the checkpoint's model, processor, mask and card only: "
                               "optimizer, scheduler, RNG and trainer state stay local (resume from the local "
                               "checkpoint).", self.args.hub_strategy.value)
                self._warned_checkpoint_push = True
            path_in_repo = ("last-checkpoint" if self.args.hub_strategy == HubStrategy.CHECKPOINT
                            else os.path.basename(os.path.normpath(checkpoint_folder)))
            jobs.append(commit_files(checkpoint_folder, files, self.hub_model_id, path_in_repo=path_in_repo,
                                     commit_message=message + ", checkpoint", **common))
        for job in jobs:
            job.add_done_callback(_warn_if_failed)
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)


def _warn_if_failed(future) -> None:
    """Checkpoint pushes run in the background; a failure must not pass silently (Trainer ignores it)."""
    err = future.exception()
    if err is not None:  # no path in the message: a run directory's name can name the forget set
        cause = err.__cause__ or err
        logger.warning("A push to the Hub during training failed (%s). The checkpoint is intact locally; call "
                       "`trainer.push_to_hub()` after training to publish the final model.", type(cause).__name__)
