"""``hf-unlearn push RUN_DIR REPO_ID``: publish a finished run directory (model, processor, mask, card).

The card is rendered for ``REPO_ID`` from the run's ``hf_unlearn_card.json`` (written by the trainer's
``save_model``), so it goes through the same privacy filters as a push from the trainer. Only the allowlisted files
are uploaded (``hf_unlearn.hub.push.publishable_files``), in one commit; ``training_args.bin``, trainer state,
optimizer and RNG files and checkpoints stay local. The run directory is read, never modified.
"""

from __future__ import annotations

import argparse
import sys


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
    parser.add_argument("--license", default=None,
                        help="Hub license id for the card (e.g. apache-2.0); default: the one the run recorded (the "
                             "base model's card's, or hf-unlearn run's `license:`).")
    parser.add_argument("--base-model", default=None, metavar="ORG/MODEL",
                        help="Hub id published as the card's base_model, and in a PEFT adapter's adapter_config.json "
                             "(for an adapter trained on a local copy of its base).")
    parser.add_argument("--commit-message", default="Upload unlearned model (hf_unlearn)", help="Commit message.")
    parser.add_argument("--revision", default=None, help="Branch to push to (default: main).")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token / HF_TOKEN).")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..hub.push import HubPushError, push_run_dir
    from ..saliency.errors import MaskFileError

    try:
        info = push_run_dir(args.run_dir, args.repo_id, private=args.private,
                            include_dataset_ids=args.include_dataset_ids, dataset_ids=args.dataset_ids,
                            commit_message=args.commit_message, revision=args.revision, token=args.token,
                            license=args.license, base_model=args.base_model)
    except (HubPushError, MaskFileError, ValueError, OSError) as err:
        print(f"hf-unlearn push: error: {err}", file=sys.stderr)
        return 1
    print(f"Pushed to {info.repo_url}" if getattr(info, "repo_url", None) else f"Pushed to {args.repo_id}")
    return 0
