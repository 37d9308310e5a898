"""`SaliencyMask`: boolean masks keyed by parameter name, stored bit-packed (about 1 bit per covered entry)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from torch import nn
from transformers.utils import PushToHubMixin

from ..integrations.deepspeed import param_shape
from ..models import canonical_parameter_name
from .config import CONFIG_NAME, SaliencyMaskConfig, push_folder, resolve_file

MASK_NAME = "saliency_mask.safetensors"
FORMAT = "hf_unlearn.saliency_mask"
FORMAT_VERSION = "1"


class SaliencyMask(PushToHubMixin):
    """Boolean masks over model parameters: True = the entry is salient and may be moved by the forget gradient.

    Covered parameters are the keys; parameters that are not keys are outside the mask (what happens to them is the
    trainer's business). Save / load / push like a PEFT adapter::

        mask.save_pretrained("out/mask")            # saliency_mask.safetensors + saliency_mask_config.json
        mask = SaliencyMask.from_pretrained("out/mask")
        mask.push_to_hub("me/unlearned-llava", subfolder="saliency_mask")

    Args:
        masks: bool tensors keyed by parameter name (names as in ``model.named_parameters()``).
        config: the `SaliencyMaskConfig` that produced the mask, if any.
        scores_summary: JSON-serialisable statistics of the scores (no data content), stored with the mask.
    """

    def __init__(
        self,
        masks: dict[str, torch.Tensor],
        config: SaliencyMaskConfig | None = None,
        scores_summary: dict | None = None,
    ) -> None:
        if not isinstance(masks, dict):
            raise TypeError(f"masks must be a dict from parameter name to bool tensor, got {type(masks).__name__}.")
        for name, tensor in masks.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"Mask keys must be non-empty parameter names, got {name!r}.")
            if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.bool:
                got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise TypeError(f"masks[{name!r}] must be a torch.bool tensor, got {got}; convert with `t.bool()`.")
        if config is not None and not isinstance(config, SaliencyMaskConfig):
            raise TypeError(f"config must be a SaliencyMaskConfig or None, got {type(config).__name__}.")
        if scores_summary is not None:
            json.dumps(scores_summary)  # fail now, not at save time
        self.masks: dict[str, torch.Tensor] = dict(masks)
        self.config = config
        self.scores_summary = scores_summary

    # ---------------------------------------------------------------------------------------------- dict-like view
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.masks[name]

    def __contains__(self, name: object) -> bool:
        return name in self.masks

    def __iter__(self) -> Iterator[str]:
        return iter(self.masks)

    def __len__(self) -> int:
        return len(self.masks)

    def names(self) -> list[str]:
        return list(self.masks)

    @property
    def num_covered(self) -> int:
        """Number of covered entries (all elements of all masks)."""
        return sum(t.numel() for t in self.masks.values())

    @property
    def num_selected(self) -> int:
        """Number of selected (True) entries, i.e. allowed to move."""
        return sum(int(t.sum()) for t in self.masks.values())

    @property
    def selected_fraction(self) -> float:
        """Fraction of covered entries that are selected (allowed to move)."""
        covered = self.num_covered
        return self.num_selected / covered if covered else 0.0

    @property
    def sparsity(self) -> float:
        """Fraction of covered entries held fixed (not selected): ``1 - selected_fraction``.

        Before hf_unlearn 0.1.0 this property returned the selected fraction; use ``selected_fraction`` for that.
        """
        covered = self.num_covered
        return (covered - self.num_selected) / covered if covered else 0.0

    def __repr__(self) -> str:
        return (
            f"SaliencyMask(parameters={len(self)}, covered={self.num_covered}, selected={self.num_selected}, "
            f"selected_fraction={self.selected_fraction:.4f}, sparsity={self.sparsity:.4f}, "
            f"score={getattr(self.config, 'score', None)!r})"
        )

    # -------------------------------------------------------------------------------------------- save and load
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``saliency_mask.safetensors`` (+ ``saliency_mask_config.json`` when a config is set).

        Each mask is flattened, packed with ``np.packbits(bitorder="little")`` and stored as a uint8 tensor; the
        shapes go into the safetensors metadata. Files are written into a temporary directory and moved into place
        with `os.replace`. Extra keyword arguments (from `push_to_hub`) are ignored.
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={save_directory!r} is a file; pass a directory.")
        os.makedirs(save_directory, exist_ok=True)
        packed = {
            name: np.packbits(t.detach().cpu().numpy().reshape(-1), bitorder="little") for name, t in self.masks.items()
        }
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bit_order": "little",
            "shapes": json.dumps({name: list(t.shape) for name, t in self.masks.items()}),
            "scores_summary": json.dumps(self.scores_summary),
        }
        tmp_dir = tempfile.mkdtemp(dir=save_directory, prefix=".tmp-saliency-")
        try:
            save_file(packed, os.path.join(tmp_dir, MASK_NAME), metadata=metadata)
            if self.config is not None:
                self.config.save_pretrained(tmp_dir)
            for filename in (MASK_NAME, CONFIG_NAME):
                if os.path.exists(os.path.join(tmp_dir, filename)):
                    os.replace(os.path.join(tmp_dir, filename), os.path.join(save_directory, filename))
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any
    ) -> "SaliencyMask":
        """Load a mask from a directory written by `save_pretrained` or from a Hub repo. Never unpickles."""
        mask_path = resolve_file(path_or_repo_id, MASK_NAME, subfolder, **hub_kwargs)
        with safe_open(mask_path, framework="np") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(
                    f"{mask_path} is not a saliency mask written by hf_unlearn (metadata format "
                    f"{metadata.get('format')!r}, expected {FORMAT!r})."
                )
            if metadata.get("format_version") != FORMAT_VERSION or metadata.get("bit_order") != "little":
                raise ValueError(
                    f"{mask_path} uses mask format version {metadata.get('format_version')!r} / bit order "
                    f"{metadata.get('bit_order')!r}; this hf_unlearn reads version {FORMAT_VERSION!r}, 'little'. "
                    "Upgrade hf_unlearn."
                )
            shapes = json.loads(metadata["shapes"])
            masks = {}
            for name in f.keys():
                if name not in shapes:
                    raise ValueError(f"{mask_path} is corrupt: no shape recorded for {name!r}.")
                shape = shapes[name]
                numel = int(np.prod(shape, dtype=np.int64))
                packed = f.get_tensor(name)
                if packed.dtype != np.uint8 or packed.size != (numel + 7) // 8:
                    raise ValueError(
                        f"{mask_path} is corrupt: {name!r} holds {packed.size} {packed.dtype} values, expected "
                        f"{(numel + 7) // 8} uint8 for shape {shape}."
                    )
                bits = np.unpackbits(packed, count=numel, bitorder="little")
                masks[name] = torch.from_numpy(bits.astype(bool).reshape(shape))
        missing = sorted(set(shapes) - set(masks))
        if missing:
            raise ValueError(f"{mask_path} is incomplete: no data for {missing}.")
        masks = {name: masks[name] for name in shapes}  # keep the saved order
        summary = json.loads(metadata.get("scores_summary", "null"))
        try:
            config = SaliencyMaskConfig.from_pretrained(path_or_repo_id, subfolder=subfolder, **hub_kwargs)
        except (FileNotFoundError, OSError):
            config = None  # a mask built by hand has no config
        return cls(masks, config=config, scores_summary=summary)

    def push_to_hub(self, repo_id: str, *, subfolder: str | None = None, **kwargs: Any):
        """Push the mask files to a Hub repo (`PushToHubMixin.push_to_hub` kwargs allowed).

        With ``subfolder`` the files go into that folder of the repo, e.g. next to the unlearned model's weights.
        """
        return push_folder(self, repo_id, subfolder=subfolder, **kwargs)

    # ------------------------------------------------------------------------------------------- model matching
    def _resolve(self, model: nn.Module) -> tuple[dict[str, tuple[str, nn.Parameter]], list[str]]:
        """Match mask names to model parameters: exact name first, then the name without wrapper prefixes."""
        params = dict(model.named_parameters())
        by_canonical: dict[str, list[str]] = {}
        for name in params:
            by_canonical.setdefault(canonical_parameter_name(name), []).append(name)
        resolved, problems = {}, []
        for name, mask in self.masks.items():
            target = name if name in params else None
            if target is None:
                candidates = by_canonical.get(canonical_parameter_name(name), [])
                target = candidates[0] if len(candidates) == 1 else None
            if target is None:
                problems.append(f"  - {name}: no such parameter in the model")
                continue
            param = params[target]
            if tuple(param_shape(param)) != tuple(mask.shape):
                problems.append(
                    f"  - {name}: mask shape {tuple(mask.shape)} != parameter shape {tuple(param_shape(param))}"
                    + (f" (model parameter {target})" if target != name else "")
                )
                continue
            resolved[name] = (target, param)
        return resolved, problems

    def validate(self, model: nn.Module) -> None:
        """Raise a ValueError listing every mask entry that does not fit ``model`` (missing name or wrong shape)."""
        _, problems = self._resolve(model)
        if problems:
            examples = [name for name, _ in model.named_parameters()][:5]
            raise ValueError(
                f"The saliency mask does not fit {type(model).__name__}: {len(problems)} of {len(self)} mask "
                "entries do not match:\n" + "\n".join(problems) + "\n"
                f"Model parameter names look like {examples}. The mask must be computed on the same architecture "
                "and size, and on the same trainable parameters (a mask computed on a PEFT/LoRA model covers the "
                "adapter parameters, one computed on the bare model covers the base weights). Recompute it with "
                "compute_saliency_mask(model, ...) on the model you train."
            )

    def for_model(self, model: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
        """Map each covered parameter object of ``model`` to its mask, on the parameter's device (validated first)."""
        self.validate(model)
        resolved, _ = self._resolve(model)
        return {param: self.masks[name].to(param.device) for name, (_, param) in resolved.items()}

    def masks_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The masks keyed by ``model``'s own parameter names (e.g. with a ``module.`` prefix), on the parameters'
        devices (validated first). Use this rather than ``.masks`` when the model may be wrapped."""
        self.validate(model)
        resolved, _ = self._resolve(model)
        return {target: self.masks[name].to(param.device) for name, (target, param) in resolved.items()}

    def to(self, device: str | torch.device) -> "SaliencyMask":
        """A copy with every mask on ``device``."""
        return SaliencyMask(
            {name: t.to(device) for name, t in self.masks.items()},
            config=self.config,
            scores_summary=self.scores_summary,
        )

    # --------------------------------------------------------------------------------------------- combinations
    def _combine(self, other: "SaliencyMask", op: str) -> "SaliencyMask":
        if not isinstance(other, SaliencyMask):
            raise TypeError(f"Can only combine a SaliencyMask with another SaliencyMask, got {type(other).__name__}.")
        mismatched = [
            f"  - {name}: {tuple(self.masks[name].shape)} vs {tuple(other.masks[name].shape)}"
            for name in self.masks
            if name in other.masks and self.masks[name].shape != other.masks[name].shape
        ]
        if mismatched:
            raise ValueError(
                f"Cannot take the {op} of two masks whose shapes differ for the same parameter name:\n"
                + "\n".join(mismatched) + "\nBoth masks must come from the same model architecture."
            )
        if op == "union":
            names = list(self.masks) + [n for n in other.masks if n not in self.masks]
            masks = {
                n: (self.masks[n].cpu() | other.masks[n].cpu()) if n in self.masks and n in other.masks
                else (self.masks.get(n, other.masks.get(n))).cpu().clone()
                for n in names
            }
        else:
            names = [n for n in self.masks if n in other.masks]
            if not names:
                raise ValueError(
                    "The two masks cover no common parameter, so their intersection is empty. Check that both were "
                    "computed on the same model and parameter set."
                )
            masks = {n: self.masks[n].cpu() & other.masks[n].cpu() for n in names}
        same_config = self.config is not None and other.config is not None and (
            self.config.to_dict() == other.config.to_dict()
        )
        summary = {
            "combined": op,
            "parts": [
                {"config": None if m.config is None else m.config.to_dict(), "scores_summary": m.scores_summary}
                for m in (self, other)
            ],
        }
        return SaliencyMask(masks, config=self.config if same_config else None, scores_summary=summary)

    def union(self, other: "SaliencyMask") -> "SaliencyMask":
        """Entries selected by either mask (covers the parameters of both); e.g. after sequential forget requests."""
        return self._combine(other, "union")

    def intersection(self, other: "SaliencyMask") -> "SaliencyMask":
        """Entries selected by both masks, over the parameters both cover."""
        return self._combine(other, "intersection")

    __or__ = union
    __and__ = intersection

    # ------------------------------------------------------------------------------------------------- reporting
    def sparsity_report(self, model: nn.Module | None = None, by: str = "module") -> list[dict]:
        """Rows ``{module, group, covered, selected, fraction, sparsity}`` (``fraction`` = selected / covered), one per module (``by="module"``, the parameter name
        without its last component) or per model part (``by="group"``). With ``model`` the mask is validated first and
        text-only models report ``"language"``."""
        from .report import sparsity_rows

        if model is not None:
            self.validate(model)
        return sparsity_rows(self.masks, model=model, by=by)

    def to_markdown(self, model: nn.Module | None = None, by: str = "module") -> str:
        """The sparsity report as a Markdown table with a total row."""
        from .report import rows_to_markdown

        return rows_to_markdown(self.sparsity_report(model, by=by))

    def plot(self, path: str | os.PathLike, model: nn.Module | None = None, by: str = "module") -> None:
        """Save a PNG bar chart of the selected fraction per module or part (``pip install hf_unlearn[plot]``)."""
        from .report import plot_rows

        plot_rows(self.sparsity_report(model, by=by), path)
