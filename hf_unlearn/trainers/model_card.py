"""``ModelCardMixin``: the trainers' side of model cards and Hub pushes.

The mixin gathers what only the trainer knows (method, settings, mask, metrics, the model's origin) and hands it to
``hf_unlearn.hub``, which renders the card (``hub.card``), filters every value (``hub.safety``) and uploads the
allowlisted files in one commit (``hub.push``). ``transformers.Trainer`` would upload the whole output directory,
``training_args.bin`` included, at the end and at every save (``hub_strategy``); this mixin replaces both.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import fields
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import HubStrategy
from transformers.utils.hub import PushInProgress

from ..hub.card import (
    CARD_INPUTS_NAME,
    CARD_NAME,
    check_license,
    flatten_metrics,
    license_of,
    mask_summary,
    render_card,
)
from ..hub.push import (
    MASK_SUBFOLDER,
    NEVER_PUSHED,
    HubPushError,
    commit_files,
    processor_file_names,
    publishable_files,
    warn_if_failed,
)
from ..hub.safety import check_dataset_ids, hub_id, is_hub_model_id, safe_settings
from ..model_folder import check_publishable, publish_copies, read_manifest, write_into_model_folder
from ..models import is_vision_language_model, unwrap_model
from ..saliency.mask import MASK_NAME, SaliencyMask
from .checkpointing import staged_save
from .peft_setup import is_peft_model

logger = logging.getLogger(__name__)

# Names tests and user code import from here.
__all__ = ["CARD_INPUTS_NAME", "HubPushError", "MASK_SUBFOLDER", "ModelCardMixin", "NEVER_PUSHED"]

# Training knobs worth a row in the card besides the method's own fields (the rest of TrainingArguments is plumbing).
_CORE_TRAINING_KNOBS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm", "optim", "seed", "bf16",
    "fp16",
)


def _same_mask(a: SaliencyMask, b: SaliencyMask) -> bool:
    config_a, config_b = (None if m.config is None else m.config.to_dict() for m in (a, b))
    return (list(a.masks) == list(b.masks) and config_a == config_b and a.scores_summary == b.scores_summary
            and all(torch.equal(a.masks[n].cpu(), b.masks[n].cpu()) for n in a.masks))


class ModelCardMixin:
    """Model cards and allowlisted Hub pushes for a ``transformers.Trainer`` subclass with ``_name``,
    ``_method_tag``, ``_paper`` and ``saliency_mask`` (``UnlearnTrainer``).

    * ``save_model(dir)`` also writes the saliency mask (``dir/saliency_mask/``), the card (``dir/README.md``) and
      its filtered inputs (``dir/hf_unlearn_card.json``), so every checkpoint and a finished run directory are
      complete and ``hf-unlearn push RUN_DIR REPO_ID`` can publish them.
    * ``push_to_hub`` and the pushes during training (``hub_strategy``) upload only ``publishable_files``.
    * ``record_evaluation(before, after)`` puts the Evaluator's metrics into the card (a table and ``model-index``).
    * ``set_card_metadata(license=, base_model=)`` names what the model's origin does not tell: the license (else
      the base model's card's) and the base model's Hub id (else ``config._name_or_path``, when it is a Hub id).
    """

    _card_metrics: tuple[dict | None, dict | None] = (None, None)
    _card_license: str | None = None
    _card_base_model: str | None = None
    _base_license: tuple[str | None] | None = None  # the base model card's license, looked up once
    _processor_files: tuple[str, ...] | None = None
    _warned_checkpoint_push = False
    _local_origins: frozenset[str] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # A local folder's relative path can look like a Hub id ("org/name"); after a chdir or a move it no longer
        # exists, so whether it is local is decided now, next to the from_pretrained that loaded it.
        self._local_origins = frozenset(name for name in self._model_origins() if name and os.path.exists(name))

    # -------------------------------------------------------------------------------------------- card contents
    def record_evaluation(self, before: dict | None, after: dict | None) -> None:
        """Store metrics (e.g. ``Evaluator.evaluate()`` before and after unlearning) for the model card.

        Values must be numbers (nested dicts are flattened with ``/``): aggregated scores, never per-sample outputs.
        """
        for which, metrics in (("before", before), ("after", after)):
            if metrics is not None and not isinstance(metrics, dict):
                raise TypeError(f"record_evaluation: `{which}` must be a dict of metric -> number, got "
                                f"{type(metrics).__name__}.")
            flatten_metrics(metrics, which)  # raises on anything but numbers, naming the metric
        self._card_metrics = (dict(before) if before else None, dict(after) if after else None)

    def set_card_metadata(self, *, license: str | None = None, base_model: str | None = None) -> None:
        """Card metadata for this and every later card and push (``None`` leaves a value as it is).

        Args:
            license: Hub license id (``"apache-2.0"``, ...); by default the base model's card's license, when known.
            base_model: Hub id of the base model, for a model loaded from a local folder (a local path is never
                published). A PEFT adapter's published ``adapter_config.json`` then names it too.
        """
        if license is not None:
            self._card_license = check_license(license)
        if base_model is not None:
            if not is_hub_model_id(base_model):
                raise ValueError(f"base_model={base_model!r} is not a Hub id like 'org/name'; a local path is never "
                                 "published. Pass the Hub id of the model you started from.")
            self._card_base_model = base_model

    def _unwrapped_model(self, keep_peft: bool = False):
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        return model if keep_peft else unwrap_model(model)

    def _private_strings(self) -> list[str]:
        args = self.args
        values = [os.path.basename(os.path.normpath(args.output_dir or "")), args.run_name or ""]
        return [v for v in values if len(v) >= 4]

    def _model_origins(self) -> list[str | None]:
        """Where the model came from: a PEFT adapter's base model(s), then ``config._name_or_path``."""
        peft_config = getattr(self._unwrapped_model(keep_peft=True), "peft_config", None)
        origins = [getattr(c, "base_model_name_or_path", None)
                   for c in (peft_config.values() if isinstance(peft_config, dict) else [])]
        origins.append(getattr(getattr(self._unwrapped_model(), "config", None), "_name_or_path", None))
        return origins

    def _base_model_id(self) -> str | None:
        """The Hub id the model was loaded from (or ``set_card_metadata``'s); ``None`` for a local path (one that
        existed when the trainer was created counts, wherever the process is now)."""
        if self._card_base_model is not None:
            return self._card_base_model
        private = self._private_strings()
        return next((name for name in self._model_origins()
                     if name not in self._local_origins and is_hub_model_id(name, private)), None)

    def _license(self) -> str | None:
        """``set_card_metadata``'s license, else the base model card's (a local folder's README.md or the Hub)."""
        if self._card_license is not None:
            return self._card_license
        if self._base_license is None:
            origin = getattr(getattr(self._unwrapped_model(), "config", None), "_name_or_path", None)
            self._base_license = (license_of(self._base_model_id()) or license_of(origin),)
        return self._base_license[0]

    def _method_settings(self) -> dict:
        """The method's own config fields plus the core optimisation knobs, through ``safe_settings``.

        Only the budget that drove the run is listed: ``max_steps`` when it is set (the Trainer then ignores
        ``num_train_epochs``), else ``num_train_epochs``.
        """
        base_fields = {f.name for f in fields(TrainingArguments)}
        own = [f.name for f in fields(type(self.args)) if f.name not in base_fields]
        values = self.args.to_dict()
        ignored = "num_train_epochs" if (values.get("max_steps") or -1) > 0 else "max_steps"
        return safe_settings({k: values[k] for k in [*_CORE_TRAINING_KNOBS, *own] if k in values and k != ignored})

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
            "settings": safe_settings({**self._method_settings(), "unlearning_report": self.unlearning_report}),
            "mask_summary": mask_summary(mask) if mask is not None else None,
            "metrics_before": before, "metrics_after": after,
            "tags": list(dict.fromkeys([*self._tag_names, self._method_tag])),
            "license": self._license(),
            # A PEFT model saves an adapter (adapter_config.json + adapter weights): the Hub loads it with peft
            "library_name": "peft" if is_peft_model(self._unwrapped_model(keep_peft=True)) else "transformers",
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
        base_model: str | None = None,
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
            license: Hub license id; kept for later cards (``set_card_metadata``). Default: the base model's.
            language: card metadata.
            base_model: Hub id of the base model (e.g. a model loaded from a local folder); kept for later cards and
                pushes (``set_card_metadata``). A local path raises.
            finetuned_from: ``Trainer.create_model_card``'s name for the base model; ignored unless a Hub id.
            dataset: alias of ``dataset_name`` (``Trainer.create_model_card``'s name).
            kwargs: ``tasks``, ``dataset_tags``, ``dataset_args`` of ``Trainer.create_model_card`` are accepted and not
                published (they can name data).

        Returns:
            The ``huggingface_hub.ModelCard`` on the world-process-zero, else ``None``.
        """
        unknown = set(kwargs) - {"tasks", "dataset_tags", "dataset_args"}
        if unknown:
            raise TypeError(f"create_model_card() got unexpected keyword arguments {sorted(unknown)}; it accepts "
                            "model_name, dataset_name, tags, include_dataset_ids, license, language, base_model, "
                            "finetuned_from.")
        dataset_ids = check_dataset_ids(dataset_name if dataset_name is not None else dataset, include_dataset_ids)
        if base_model is None and finetuned_from is not None and is_hub_model_id(finetuned_from):
            base_model = finetuned_from
        self.set_card_metadata(license=license, base_model=base_model)
        if not self.is_world_process_zero():
            return None
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if model_name is None:
            model_name = getattr(self, "hub_model_id", None) or self.args.hub_model_id
        if model_name is not None and (hub_id(model_name) is None or "/" not in model_name):
            model_name = None  # a bare name or a path: "How to load" shows a placeholder instead
        inputs = self.card_inputs()
        card = render_card(inputs, model_name=model_name, dataset_ids=dataset_ids,
                           include_dataset_ids=include_dataset_ids,
                           tags=[tags] if isinstance(tags, str) else list(tags or []))
        if language is not None:
            card.data.language = language
        # Into a saved model folder this is a small publish that keeps the folder one whole save (its manifest).
        write_into_model_folder(output_dir, {
            CARD_NAME: str(card).encode("utf-8"),
            CARD_INPUTS_NAME: (json.dumps(inputs, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        })
        return card

    # -------------------------------------------------------------------------------------------- saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``, plus the saliency mask (``saliency_mask/``) and the model card.

        Called by ``_save_checkpoint`` for each checkpoint folder, so every checkpoint carries its card and mask.
        """
        self._save_model_and_card(output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save_model_and_card(self, output_dir: str | None, **card_kwargs: Any) -> None:
        """One staged save (``staged_save``): model, processor, mask and the card (``card_kwargs``: for a push)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        with staged_save(self, output_dir) as folder:  # whole or not at all; stale files of earlier saves removed
            super().save_model(folder, _internal_call=True)
            if self.args.should_save:
                self._save_mask(os.path.join(folder, MASK_SUBFOLDER))
                self.create_model_card(output_dir=folder, **card_kwargs)

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
        if self._processor_files is None:
            self._processor_files = processor_file_names(self.processing_class)
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
        ``include_dataset_ids=True``, ``license``, ``base_model``, ...). ``base_model`` (a Hub id) is what a PEFT
        adapter trained on a local copy of its base is published with.

        Returns:
            ``CommitInfo`` (``blocking=False``: a ``Future`` of it).

        Raises:
            HubPushError: the upload failed; the local run directory is complete and unchanged, push again.
        """
        private = kwargs.pop("private", None)
        check_dataset_ids(kwargs.get("dataset_name", kwargs.get("dataset")), kwargs.get("include_dataset_ids", False))
        self.set_card_metadata(license=kwargs.pop("license", None), base_model=kwargs.pop("base_model", None))
        token = token if token is not None else self.args.hub_token
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        tags = kwargs.pop("tags", None)
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags += [t for t in (getattr(self.model, "model_tags", None) or []) if t not in tags]
        model_name = kwargs.pop("model_name", None) or self.hub_model_id
        # The card for this repo is rendered inside the save: the pushed folder is exactly one save.
        self._save_model_and_card(None, model_name=model_name, tags=tags, **kwargs)
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        folder = self.args.output_dir
        base = self._card_base_model
        files = publishable_files(folder, self._processor_file_names(), base_model=base)
        check_publishable(folder, files)
        return commit_files(
            folder, files, self.hub_model_id,
            commit_message=commit_message or "End of training", retry_hint=self._retry_hint(self.hub_model_id),
            token=token, revision=revision if revision is not None else self.args.hub_revision,
            run_as_future=not blocking, base_model=base,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Pushes during training (``hub_strategy``): the checkpoint's publishable files, never its states."""
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        files = publishable_files(checkpoint_folder, self._processor_file_names(), base_model=self._card_base_model)
        check_publishable(checkpoint_folder, files)
        output_dir = self.args.output_dir
        # The output directory mirrors the last pushed checkpoint, as with Trainer: published whole, as a save (with
        # the card's inputs and the arguments, so it can be pushed again with `hf-unlearn push`).
        local_only = [rel for rel in (CARD_INPUTS_NAME, "training_args.bin")
                      if os.path.isfile(os.path.join(checkpoint_folder, rel))]
        publish_copies(checkpoint_folder, files + local_only, output_dir, step=self.state.global_step,
                       verified=(read_manifest(checkpoint_folder) or {}).get("verified"))
        check_publishable(output_dir, files)
        if self.args.save_strategy == "steps":
            message = f"Training in progress, step {self.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(self.state.epoch or 0)}"
        common = dict(retry_hint=self._retry_hint(self.hub_model_id), token=self.args.hub_token,
                      revision=self.args.hub_revision, run_as_future=True, base_model=self._card_base_model)
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
            job.add_done_callback(warn_if_failed)
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)

