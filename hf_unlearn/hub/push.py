"""The allowlisted push: which files of a run directory may reach the Hub, and the one commit that uploads them.

What reaches the Hub is an allowlist, never "the output directory": the model's config and safetensors weights (or a
PEFT adapter), the processing class's files, the saliency mask (``saliency_mask/``) and the model card. Everything
else a run leaves behind stays local, in particular ``training_args.bin`` (a pickle of the arguments that holds
``output_dir``, ``run_name`` and ``logging_dir``, which can name the forget set), ``trainer_state.json``, optimizer,
scheduler and RNG states, logs, and ``hf_unlearn_card.json`` (the card's inputs). ``transformers.Trainer`` uploads the
whole output directory, ``training_args.bin`` included; hf_unlearn's trainers and ``hf-unlearn push`` use this module
instead.

A push is one commit: it lands whole or not at all. If it fails, the local files are complete and untouched and a
``HubPushError`` says what to run again. Before it, the folder must be one whole save: its manifest present and
matching every file that would go up (``hf_unlearn.model_folder.check_publishable``); else ``ModelFolderError``
names the file and the fix.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import tempfile

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..model_folder import check_publishable
from ..saliency.config import CONFIG_NAME as MASK_CONFIG_NAME
from ..saliency.config import SaliencyMaskConfig, redacted_for_hub
from ..saliency.mask import MASK_NAME, SaliencyMask
from .card import CARD_INPUTS_NAME, CARD_NAME, check_license, read_card_inputs, render_card
from .safety import check_dataset_ids, is_hub_model_id

logger = logging.getLogger(__name__)

__all__ = ["HubPushError", "MASK_SUBFOLDER", "NEVER_PUSHED", "commit_files", "processor_file_names",
           "publishable_files", "push_run_dir"]

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
COMMAND_HINT = "`hf-unlearn push RUN_DIR REPO_ID`"


class HubPushError(RuntimeError):
    """A push to the Hub failed. The local files are complete and unchanged: run the same push again."""


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
    if base and (not is_hub_model_id(base)):
        raise ValueError(
            "adapter_config.json names a local base model path, which would be published with the adapter. Name the "
            "base model's Hub id when pushing: `trainer.push_to_hub(base_model='<org>/<base-model>')` or "
            "`hf-unlearn push RUN_DIR REPO_ID --base-model <org>/<base-model>` (the published adapter_config.json "
            "then names it), or merge the adapter first (`model.merge_and_unload()`)."
        )


def _rewritten_for_hub(folder: str, files: list[str], base_model: str | None) -> dict[str, bytes]:
    """Files whose published bytes differ from the local ones: an adapter config naming the ``base_model`` override,
    and mask files whose preserve-set names are replaced (``saliency.redaction.redact_preserve_names``)."""
    out: dict[str, bytes] = {}
    adapter = "adapter_config.json"
    if base_model is not None and adapter in files:
        with open(os.path.join(folder, adapter), encoding="utf-8") as f:
            config = json.load(f)
        if config.get("base_model_name_or_path") != base_model:
            config["base_model_name_or_path"] = base_model
            out[adapter] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
    config_rel, mask_rel = f"{MASK_SUBFOLDER}/{MASK_CONFIG_NAME}", f"{MASK_SUBFOLDER}/{MASK_NAME}"
    if mask_rel in files:  # re-serialised whole, so the published files' checksums match what they hold
        mask = SaliencyMask.from_pretrained(os.path.join(folder, MASK_SUBFOLDER))
        published = redacted_for_hub(mask)
        if published is not mask:
            out.update({f"{MASK_SUBFOLDER}/{name}": data for name, data in published.to_files().items()})
    elif config_rel in files:
        config = SaliencyMaskConfig.from_pretrained(os.path.join(folder, MASK_SUBFOLDER))
        published = redacted_for_hub(config)
        if published is not config:
            out[config_rel] = published.to_json_string().encode("utf-8")
    return out


def publishable_files(folder: str | os.PathLike, extra_names: tuple[str, ...] | list[str] = (), *,
                      base_model: str | None = None) -> list[str]:
    """The files of ``folder`` that may be pushed, as repo paths (``/``-separated), sorted.

    Kept: the model config and safetensors weights (with the shards its index lists) or a PEFT adapter, the
    processing class's files (known names, ``*.jinja``/``*.model``/``*.tiktoken``, and ``extra_names``), ``README.md``
    and ``saliency_mask/``. Never kept: ``NEVER_PUSHED`` (``training_args.bin``, states, pickles, card inputs).

    Raises:
        FileNotFoundError: ``folder`` holds no config and safetensors weights.
        ValueError: a PEFT adapter names a local base-model path and no ``base_model`` Hub id replaces it.
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
    if base_model is None:
        _check_adapter_config(folder)
    elif not is_hub_model_id(base_model):
        raise ValueError(f"base_model={base_model!r} is not a Hub id like 'org/name' (a local path is never "
                         "published).")
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
    base_model: str | None = None,
):
    """Upload ``files`` of ``folder`` (plus ``extra`` {repo path: bytes}) to ``repo_id`` in one commit.

    Every push goes through here: a PEFT adapter config is published naming ``base_model`` (when given), and a
    saliency mask's preserve-set names are replaced in the published config and metadata (the local files are left
    as they are). Any failure becomes a ``HubPushError`` naming ``retry_hint``; with ``run_as_future`` it is raised
    by the returned ``Future``. Files that are unchanged on the Hub are skipped by the client (no empty commits).
    """
    folder = os.fspath(folder)
    blocked = sorted(rel for rel in [*files, *(extra or {})] if _never_pushed(rel))
    if blocked:
        raise ValueError(f"Refusing to push {blocked}: these files are never published (see NEVER_PUSHED).")
    prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
    rewritten = _rewritten_for_hub(folder, files, base_model)
    operations = [CommitOperationAdd(prefix + rel, rewritten[rel] if rel in rewritten
                                     else os.path.join(folder, *rel.split("/"))) for rel in files]
    operations += [CommitOperationAdd(prefix + rel, data) for rel, data in (extra or {}).items()]
    api = _hub_api()

    def _commit():
        try:
            return api.create_commit(repo_id, operations, commit_message=commit_message, token=token,
                                     revision=revision)
        except Exception as err:  # noqa: BLE001 - every failure gets the same retry advice
            raise HubPushError(
                f"Pushing to {repo_id!r} failed ({type(err).__name__}: {err}). Nothing was committed and nothing "
                f"local was deleted or changed: the files in {folder!r} are complete. Retry with {retry_hint}."
            ) from err

    # huggingface_hub's own background queue (HfApi.run_as_future, what create_commit(run_as_future=True) uses): one
    # worker per client, so pushes land in the order they were made; the commit is wrapped to keep the retry advice.
    return api.run_as_future(_commit) if run_as_future else _commit()


_APIS: dict[str, HfApi] = {}


def _hub_api() -> HfApi:
    """One ``HfApi`` per endpoint (read at call time: tests and users may point ``HF_ENDPOINT`` elsewhere), so every
    background push to it goes through the same ordered queue."""
    from huggingface_hub import constants

    if constants.ENDPOINT not in _APIS:
        _APIS[constants.ENDPOINT] = HfApi(endpoint=constants.ENDPOINT)
    return _APIS[constants.ENDPOINT]


def warn_if_failed(future) -> None:
    """Checkpoint pushes run in the background; a failure must not pass silently (Trainer ignores it)."""
    err = future.exception()
    if err is not None:  # no path in the message: a run directory's name can name the forget set
        cause = err.__cause__ or err
        logger.warning("A push to the Hub during training failed (%s). The checkpoint is intact locally; call "
                       "`trainer.push_to_hub()` after training to publish the final model.", type(cause).__name__)


def processor_file_names(processing_class) -> tuple[str, ...]:
    """Names a processing class writes (found by saving it once into a temporary folder)."""
    names: list[str] = []
    if processing_class is not None:
        with tempfile.TemporaryDirectory() as tmp:
            processing_class.save_pretrained(tmp)
            for root, _, files in os.walk(tmp):
                rel = os.path.relpath(root, tmp)
                names += [f if rel == "." else "/".join([*rel.split(os.sep), f]) for f in files]
    return tuple(names)


def push_run_dir(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    include_dataset_ids: bool = False,
    dataset_ids: list[str] | None = None,
    commit_message: str = "Upload unlearned model (hf_unlearn)",
    revision: str | None = None,
    token: str | None = None,
    license: str | None = None,
    base_model: str | None = None,
):
    """Push a run directory; returns the ``CommitInfo``. Raises ``HubPushError`` if the upload fails.

    ``license`` and ``base_model`` (a Hub id) replace what the run recorded; ``base_model`` is also what a PEFT
    adapter's published ``adapter_config.json`` names (for an adapter trained on a local copy of the base).
    """
    run_dir = os.fspath(run_dir)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"REPO_ID {repo_id!r} is not a valid Hub repo id ({err}); use e.g. 'your-name/model'."
                         ) from None
    if dataset_ids and not include_dataset_ids:
        raise ValueError("--dataset-id given without --include-dataset-ids: data set ids are published only when you "
                         "opt in. Add --include-dataset-ids, or drop --dataset-id.")
    ids = check_dataset_ids(dataset_ids, include_dataset_ids)
    if base_model is None and os.path.isfile(os.path.join(run_dir, CARD_INPUTS_NAME)):
        base_model = read_card_inputs(run_dir).get("base_model")  # recorded by the run: already a Hub id
    files = publishable_files(run_dir, base_model=base_model)
    inputs = read_card_inputs(run_dir)
    if license is not None:
        inputs["license"] = check_license(license)
    if base_model is not None:
        inputs["base_model"] = base_model
    if os.path.isdir(os.path.join(run_dir, MASK_SUBFOLDER)):
        SaliencyMask.from_pretrained(os.path.join(run_dir, MASK_SUBFOLDER))  # a broken mask fails here, not on load
    check_publishable(run_dir, files)  # one whole save: the manifest matches every file that would go up
    files = [f for f in files if f != CARD_NAME]  # the card is rendered for this repo id, below
    hint = f"{COMMAND_HINT} again (hf-unlearn push {run_dir} {repo_id})"
    try:
        repo_id = HfApi().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    except Exception as err:  # noqa: BLE001 - same retry advice as a failed commit
        raise HubPushError(f"Creating the repo {repo_id!r} failed ({type(err).__name__}: {err}); nothing was pushed "
                           f"and {run_dir!r} is unchanged. Retry with {hint}.") from err
    if inputs.get("library_name") is None and "adapter_config.json" in files:  # a run saved before cards said so
        inputs["library_name"] = "peft"
    card = render_card(inputs, model_name=repo_id, dataset_ids=ids, include_dataset_ids=include_dataset_ids)
    return commit_files(run_dir, files, repo_id, extra={CARD_NAME: str(card).encode("utf-8")},
                        commit_message=commit_message, retry_hint=hint, token=token, revision=revision,
                        base_model=base_model)
