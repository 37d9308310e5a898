"""`SaliencyMask`: boolean masks keyed by parameter name, stored bit-packed (about 1 bit per covered entry)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from transformers.utils import PushToHubMixin

from ..integrations.deepspeed import param_shape
from ..models import canonical_parameter_name, parameter_groups, unwrap_model
from ..utils import atomic_write_bytes, fsync_directory
from ..version import __version__
from .config import CONFIG_NAME, SaliencyMaskConfig, push_folder, resolve_file
from .errors import MaskFileError

MASK_NAME = "saliency_mask.safetensors"
FORMAT = "hf_unlearn.saliency_mask"
FORMAT_VERSION = "1"
CHECKSUM_KEY = "checksum"


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
        architecture: what the mask was made for (``describe_architecture``; set by ``compute_saliency_mask``): the
            model type and, per group the mask covers, its parameter count and the parameters the mask leaves out.
            A model whose parameters in those groups differ is refused (``validate``).
    """

    def __init__(
        self,
        masks: dict[str, torch.Tensor],
        config: SaliencyMaskConfig | None = None,
        scores_summary: dict | None = None,
        architecture: dict | None = None,
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
        if architecture is not None and not (isinstance(architecture, dict) and isinstance(
                architecture.get("groups"), dict)):
            raise TypeError("architecture must be a dict from describe_architecture(model, names) or None.")
        self.masks: dict[str, torch.Tensor] = dict(masks)
        self.config = config
        self.scores_summary = scores_summary
        self.architecture = architecture

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
    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the parameter names, shapes and selected bits (not the config): equal masks, equal
        fingerprints. Checkpoints record it so that a resume under another mask is caught."""
        digest = hashlib.sha256(json.dumps({n: list(t.shape) for n, t in self.masks.items()}).encode())
        for packed in _pack(self.masks).values():
            digest.update(packed.tobytes())
        return "sha256:" + digest.hexdigest()

    def to_files(self) -> dict[str, bytes]:
        """The bytes of the files ``save_pretrained`` writes: ``{MASK_NAME: ..., CONFIG_NAME: ...}`` (the config only
        when set). Each mask is flattened, packed with ``np.packbits(bitorder="little")`` and stored as a uint8 tensor;
        the shapes, a sha256 checksum of the data and metadata, the sha256 of the config file and (for computed
        masks) the architecture the mask was made for go into the safetensors metadata. Deterministic: an unchanged
        mask gives the same bytes."""
        packed = _pack(self.masks)
        config_bytes = self.config.to_json_string().encode("utf-8") if self.config is not None else None
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bit_order": "little",
            "shapes": json.dumps({name: list(t.shape) for name, t in self.masks.items()}),
            "scores_summary": json.dumps(self.scores_summary),
            "hf_unlearn_version": __version__,
        }
        if self.architecture is not None:
            metadata["architecture"] = json.dumps(self.architecture, sort_keys=True)
        if config_bytes is not None:
            metadata["config_sha256"] = hashlib.sha256(config_bytes).hexdigest()
        metadata[CHECKSUM_KEY] = _checksum(metadata, packed)
        files = {MASK_NAME: safetensors_bytes(packed, metadata)}
        if config_bytes is not None:
            files[CONFIG_NAME] = config_bytes
        return files

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``saliency_mask.safetensors`` (+ ``saliency_mask_config.json`` when a config is set): ``to_files``.

        Both files are written and fsynced in a temporary directory and moved into place with `os.replace`, the config
        first (a mask whose recorded config hash names another config is refused on load, so an interruption between
        the two renames is detected rather than mixing two masks). Extra keyword arguments (from `push_to_hub`) are
        ignored.
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={save_directory!r} is a file; pass a directory.")
        os.makedirs(save_directory, exist_ok=True)
        files = self.to_files()
        tmp_dir = tempfile.mkdtemp(dir=save_directory, prefix=".tmp-saliency-")
        try:
            for filename, data in files.items():
                atomic_write_bytes(os.path.join(tmp_dir, filename), data)
            for filename in (CONFIG_NAME, MASK_NAME):
                if filename in files:
                    os.replace(os.path.join(tmp_dir, filename), os.path.join(save_directory, filename))
            fsync_directory(save_directory)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any
    ) -> SaliencyMask:
        """Load a mask from a directory written by `save_pretrained` or from a Hub repo. Never unpickles.

        The checksum is verified (files of earlier versions, without one, load with a warning).

        Raises:
            MaskFileError: the mask file or its config is truncated, damaged, not a mask, does not belong to the
                other file, or was written by a newer hf_unlearn. The message names the file and the fix.
            FileNotFoundError / OSError: there is no mask file at that place.
        """
        mask_path = resolve_file(path_or_repo_id, MASK_NAME, subfolder, **hub_kwargs)
        metadata, packed = _read_mask_file(mask_path)
        try:
            shapes = json.loads(metadata["shapes"])
            summary = json.loads(metadata.get("scores_summary", "null"))
            architecture = json.loads(metadata["architecture"]) if "architecture" in metadata else None
        except (KeyError, TypeError, ValueError) as err:
            raise MaskFileError(mask_path, f"has damaged metadata ({type(err).__name__}: {err}).") from None
        if not isinstance(shapes, dict):
            raise MaskFileError(mask_path, "has damaged metadata (`shapes` is not a JSON object).")
        expected = metadata.get(CHECKSUM_KEY)
        if expected is None:
            # No path in a warning: logs are shared, and a run directory's name can name the forget set.
            warnings.warn(f"This {MASK_NAME} has no checksum (written by an earlier hf_unlearn), so damage cannot be "
                          "detected. Save it again with save_pretrained to add one.", stacklevel=2)
        elif _checksum(metadata, {name: packed[name] for name in shapes if name in packed}) != expected:
            raise MaskFileError(mask_path, "does not match its checksum: the file was damaged (changed bytes) after "
                                           "it was written.")
        masks = {}
        for name, array in packed.items():
            if name not in shapes:
                raise MaskFileError(mask_path, f"is corrupt: no shape recorded for {name!r}.")
            shape = shapes[name]
            numel = int(np.prod(shape, dtype=np.int64))
            if array.dtype != np.uint8 or array.size != (numel + 7) // 8:
                raise MaskFileError(mask_path, f"is corrupt: {name!r} holds {array.size} {array.dtype} values, "
                                               f"expected {(numel + 7) // 8} uint8 for shape {shape}.")
            bits = np.unpackbits(array, count=numel, bitorder="little")
            masks[name] = torch.from_numpy(bits.astype(bool).reshape(shape))
        missing = sorted(set(shapes) - set(masks))
        if missing:
            raise MaskFileError(mask_path, f"is incomplete: no data for {missing}.")
        masks = {name: masks[name] for name in shapes}  # keep the saved order
        config = _read_config(path_or_repo_id, subfolder, metadata.get("config_sha256"), mask_path, hub_kwargs)
        return cls(masks, config=config, scores_summary=summary, architecture=architecture)

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
        """Raise a ValueError listing every mask entry that does not fit ``model`` (missing name or wrong shape), or,
        for a mask that records its architecture, every parameter of the covered groups that differs (e.g. a vision
        layer the mask was not made for)."""
        _, problems = self._resolve(model)
        if not problems and self.architecture is not None:
            mismatch = architecture_mismatch(self.architecture, model, list(self.masks))
            if mismatch:
                raise ValueError(
                    f"The saliency mask was made for another architecture than this {type(model).__name__}:\n"
                    + "\n".join(f"  - {line}" for line in mismatch) + "\n"
                    "Its entries would silently leave those parameters frozen or unmasked. Recompute the mask with "
                    "compute_saliency_mask(model, ...) on the model you train."
                )
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

    def to(self, device: str | torch.device) -> SaliencyMask:
        """A copy with every mask on ``device``."""
        return SaliencyMask(
            {name: t.to(device) for name, t in self.masks.items()},
            config=self.config,
            scores_summary=self.scores_summary,
            architecture=self.architecture,
        )

    # --------------------------------------------------------------------------------------------- combinations
    def _combine(self, other: SaliencyMask, op: str) -> SaliencyMask:
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
        architecture = self.architecture if self.architecture == other.architecture else None
        return SaliencyMask(masks, config=self.config if same_config else None, scores_summary=summary,
                            architecture=architecture)

    def union(self, other: SaliencyMask) -> SaliencyMask:
        """Entries selected by either mask (covers the parameters of both); e.g. after sequential forget requests."""
        return self._combine(other, "union")

    def intersection(self, other: SaliencyMask) -> SaliencyMask:
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


# ------------------------------------------------------------------------------------------------ architecture
def _inventory(model: nn.Module, groups: list[str]) -> dict[str, dict[str, list[int]]]:
    """``{group: {canonical parameter name: shape}}`` over every parameter of ``model`` in ``groups``."""
    of = parameter_groups(model)
    out: dict[str, dict[str, list[int]]] = {group: {} for group in groups}
    for name, param in model.named_parameters():
        group = of[name] or "other"
        if group in out:
            out[group][canonical_parameter_name(name)] = list(param_shape(param))
    return out


def describe_architecture(model: nn.Module, names: list[str]) -> dict:
    """What a mask over ``names`` was made for: the model type, and per group (vision / projector / language) of
    those names the number of parameters and the name and shape of each one the mask leaves out. The mask's own
    entries hold the rest, so the record is a few bytes unless the mask leaves many parameters of its groups out."""
    of = parameter_groups(model)
    covered = {canonical_parameter_name(name) for name in names}
    inventory = _inventory(model, sorted({of.get(name) or "other" for name in names}))
    config = getattr(unwrap_model(model), "config", None)
    return {"model_type": getattr(config, "model_type", None),
            "groups": {group: {"parameters": len(params),
                               "uncovered": {n: shape for n, shape in params.items() if n not in covered}}
                       for group, params in inventory.items()}}


def architecture_mismatch(recorded: dict, model: nn.Module, names: list[str]) -> list[str]:
    """Lines describing how ``model`` differs from the ``recorded`` architecture of a mask over ``names``."""
    lines = []
    config = getattr(unwrap_model(model), "config", None)
    model_type = getattr(config, "model_type", None)
    if recorded.get("model_type") and model_type and recorded["model_type"] != model_type:
        lines.append(f"made for model_type {recorded['model_type']!r}, this model is {model_type!r}")
    covered = {canonical_parameter_name(name) for name in names}
    current = _inventory(model, list(recorded["groups"]))
    for group, made_for in recorded["groups"].items():
        have, uncovered = current[group], made_for.get("uncovered", {})
        extra = [n for n in have if n not in covered and n not in uncovered]
        gone = [n for n in uncovered if n not in have]
        reshaped = [n for n, shape in uncovered.items() if n in have and have[n] != list(shape)]
        if extra:
            lines.append(f"{group}: the model has {len(extra)} parameter(s) the mask was not made for "
                         f"({made_for.get('parameters')} in this group when it was computed, {len(have)} now), e.g. "
                         f"{extra[:3]}")
        if gone:
            lines.append(f"{group}: {len(gone)} parameter(s) of the model the mask was made for are missing, e.g. "
                         f"{gone[:3]}")
        if reshaped:
            lines.append(f"{group}: {len(reshaped)} parameter(s) changed shape, e.g. {reshaped[0]} "
                         f"{tuple(uncovered[reshaped[0]])} -> {tuple(have[reshaped[0]])}")
    return lines


# ------------------------------------------------------------------------------------------------ file format
def _pack(masks: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: np.packbits(t.detach().cpu().numpy().reshape(-1), bitorder="little") for name, t in masks.items()}


def _checksum(metadata: dict[str, str], packed: dict[str, np.ndarray]) -> str:
    """sha256 over the metadata (but the checksum itself) and every tensor's name and bytes, in saved order."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in metadata.items() if k != CHECKSUM_KEY},
                                       sort_keys=True).encode("utf-8"))
    for name, array in packed.items():
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(np.ascontiguousarray(array).tobytes())
    return "sha256:" + digest.hexdigest()


def safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """uint8 ``arrays`` as the bytes of a safetensors file, deterministic.

    ``safetensors.numpy.save`` orders the metadata entries differently from run to run, so a mask saved twice would
    differ byte for byte (and be uploaded again on every push). This writes the same layout (8-byte header length,
    JSON header padded with spaces to 8 bytes, tensors back to back) in a fixed order.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, array in arrays.items():
        if array.dtype != np.uint8:
            raise TypeError(f"safetensors_bytes writes uint8 arrays; {name!r} is {array.dtype}.")
        header[name] = {"dtype": "U8", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    return b"".join([struct.pack("<Q", len(blob)), blob, *(np.ascontiguousarray(a).tobytes() for a in arrays.values())])


def _read_mask_file(mask_path: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Metadata and packed arrays of a mask file; every way the file can fail to parse is a `MaskFileError`."""
    try:
        with safe_open(mask_path, framework="np") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise MaskFileError(
                    mask_path, f"is not a saliency mask written by hf_unlearn (metadata format "
                               f"{metadata.get('format')!r}, expected {FORMAT!r}).",
                    "Pass the folder of a mask saved with SaliencyMask.save_pretrained.")
            if metadata.get("format_version") != FORMAT_VERSION or metadata.get("bit_order") != "little":
                raise MaskFileError(
                    mask_path, f"uses mask format version {metadata.get('format_version')!r} / bit order "
                               f"{metadata.get('bit_order')!r}; this hf_unlearn reads version {FORMAT_VERSION!r}, "
                               "'little'.", "Upgrade hf_unlearn (pip install -U hf_unlearn).")
            packed = {name: f.get_tensor(name) for name in f.keys()}
    except MaskFileError:
        raise
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ...: the file cannot be parsed
        raise MaskFileError(mask_path, f"cannot be read ({type(err).__name__}: {err}): it is truncated or "
                                       "damaged.") from None
    return metadata, packed


def _read_config(path_or_repo_id, subfolder, expected_sha: str | None, mask_path: str,
                 hub_kwargs: dict) -> SaliencyMaskConfig | None:
    """The mask's config, checked against the ``config_sha256`` the mask recorded (None: a hand-built mask)."""
    try:
        config_path = resolve_file(path_or_repo_id, CONFIG_NAME, subfolder, **hub_kwargs)
    except OSError:  # FileNotFoundError included
        if expected_sha is not None:
            raise MaskFileError(mask_path, f"was saved with a {CONFIG_NAME}, which is missing next to it.") from None
        return None
    config = SaliencyMaskConfig.from_pretrained(config_path)  # not JSON, or a newer version: said first
    if expected_sha is not None:
        with open(config_path, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != expected_sha:
                raise MaskFileError(config_path, f"does not belong to the mask next to it ({MASK_NAME} recorded "
                                                 "another config): one of the two files was changed, replaced or "
                                                 "damaged.")
    return config
