"""``hf-unlearn push RUN_DIR REPO_ID``: publish a finished run directory (model, processor, mask, card).

The card is rendered for ``REPO_ID`` from the run's ``hf_unlearn_card.json`` (written by the trainer's
``save_model``), so it goes through the same privacy filters as a push from the trainer. Only the allowlisted files
are uploaded (``hf_unlearn.trainers.card.publishable_files``), in one commit; ``training_args.bin``, trainer state,
optimizer and RNG files and checkpoints stay local. The run directory is read, never modified.
"""

from __future__ import annotations

import argparse
import os
import sys

COMMAND_HINT = "`hf-unlearn push RUN_DIR REPO_ID`"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "push",
        help="Push a finished run directory (model, processor, saliency mask, model card) to the Hub.",
        description="Push RUN_DIR (saved by an hf_unlearn trainer) to the Hub repo REPO_ID. Uploaded: config and "
                    "safetensors weights, processor files, saliency_mask/ (if present) and a model card rendered "
                    "for REPO_ID. Never uploaded: training_args.bin, trainer state, optimizer/RNG states, checkpoints.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="The run's output directory (trainer.save_model()).")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repo id, e.g. your-name/llava-unlearned.")
    parser.add_argument("--private", action="store_true", help="Create the repo as private (if it does not exist).")
    parser.add_argument("--include-dataset-ids", action="store_true",
                        help="Name the data sets given with --dataset-id in the card (off by default: a data set id "
                             "can reveal what was forgotten).")
    parser.add_argument("--dataset-id", action="append", default=[], dest="dataset_ids", metavar="ORG/DATASET",
                        help="Hub id of a data set used (repeatable); needs --include-dataset-ids.")
    parser.add_argument("--commit-message", default="Upload unlearned model (hf_unlearn)", help="Commit message.")
    parser.add_argument("--revision", default=None, help="Branch to push to (default: main).")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token / HF_TOKEN).")
    parser.set_defaults(func=run)
    return parser


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
):
    """Push a run directory; returns the ``CommitInfo``. Raises ``HubPushError`` if the upload fails."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from ..saliency.mask import SaliencyMask
    from ..trainers.card import (
        CARD_NAME, MASK_SUBFOLDER, HubPushError, _dataset_ids, commit_files, publishable_files, read_card_inputs,
        render_card,
    )

    run_dir = os.fspath(run_dir)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"REPO_ID {repo_id!r} is not a valid Hub repo id ({err}); use e.g. 'your-name/model'."
                         ) from None
    if dataset_ids and not include_dataset_ids:
        raise ValueError("--dataset-id given without --include-dataset-ids: data set ids are published only when you "
                         "opt in. Add --include-dataset-ids, or drop --dataset-id.")
    ids = _dataset_ids(dataset_ids, include_dataset_ids)
    files = publishable_files(run_dir)
    inputs = read_card_inputs(run_dir)
    if os.path.isdir(os.path.join(run_dir, MASK_SUBFOLDER)):
        SaliencyMask.from_pretrained(os.path.join(run_dir, MASK_SUBFOLDER))  # a broken mask fails here, not on load
    files = [f for f in files if f != CARD_NAME]  # the card is rendered for this repo id, below
    hint = f"{COMMAND_HINT} again (hf-unlearn push {run_dir} {repo_id})"
    try:
        repo_id = HfApi().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    except Exception as err:  # noqa: BLE001 - same retry advice as a failed commit
        raise HubPushError(f"Creating the repo {repo_id!r} failed ({type(err).__name__}: {err}); nothing was pushed "
                           f"and {run_dir!r} is unchanged. Retry with {hint}.") from err
    card = render_card(inputs, model_name=repo_id, dataset_ids=ids, include_dataset_ids=include_dataset_ids)
    return commit_files(run_dir, files, repo_id, extra={CARD_NAME: str(card).encode("utf-8")},
                        commit_message=commit_message, retry_hint=hint, token=token, revision=revision)


def run(args: argparse.Namespace) -> int:
    from ..saliency.errors import MaskFileError
    from ..trainers.card import HubPushError

    try:
        info = push_run_dir(args.run_dir, args.repo_id, private=args.private,
                            include_dataset_ids=args.include_dataset_ids, dataset_ids=args.dataset_ids,
                            commit_message=args.commit_message, revision=args.revision, token=args.token)
    except (HubPushError, MaskFileError, ValueError, OSError) as err:
        print(f"hf-unlearn push: error: {err}", file=sys.stderr)
        return 1
    print(f"Pushed to {info.repo_url}" if getattr(info, "repo_url", None) else f"Pushed to {args.repo_id}")
    return 0
