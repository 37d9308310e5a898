"""Sparsity tables and plots of a saliency mask (per module or per model part)."""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn

from ..models import LANGUAGE, PROJECTOR, VISION, canonical_parameter_name, is_vision_language_model, parameter_group

_GROUP_COLORS = {VISION: "tab:blue", PROJECTOR: "tab:orange", LANGUAGE: "tab:green", "other": "tab:gray"}


def module_of(name: str) -> str:
    """The module a parameter belongs to, without wrapper prefixes; LoRA parameters count for the adapted module."""
    parts = canonical_parameter_name(name).split(".")[:-1]
    for i, part in enumerate(parts):
        if part.startswith("lora_"):
            parts = parts[:i]
            break
    return ".".join(parts) or "(root)"


def sparsity_rows(masks: dict[str, torch.Tensor], model: nn.Module | None = None, by: str = "module") -> list[dict]:
    """Rows ``{module, group, covered, selected, fraction, sparsity}`` in order of first appearance.

    ``fraction`` is the selected fraction (selected / covered, allowed to move); ``sparsity`` the fraction held fixed.

    ``by="module"``: one row per module; ``by="group"``: one row per model part (``vision``, ``projector``,
    ``language``). Names with no recognised part are ``language`` on a text-only model (or when no mask name is a
    vision / projector parameter and no model is given) and ``other`` otherwise.
    """
    if by not in ("module", "group"):
        raise ValueError(f"by={by!r} is not supported; use 'module' or 'group'.")
    groups = {name: parameter_group(name) for name in masks}
    text_only = (
        not is_vision_language_model(model) if model is not None
        else not any(g in (VISION, PROJECTOR) for g in groups.values())
    )
    rows: dict[str, dict] = {}
    for name, mask in masks.items():
        group = groups[name] or (LANGUAGE if text_only else "other")
        key = module_of(name) if by == "module" else group
        row = rows.setdefault(key, {"module": key, "group": group, "covered": 0, "selected": 0})
        row["covered"] += mask.numel()
        row["selected"] += int(mask.sum())
    for row in rows.values():
        row["fraction"] = row["selected"] / row["covered"] if row["covered"] else 0.0
        row["sparsity"] = 1.0 - row["fraction"] if row["covered"] else 0.0
    return list(rows.values())


def rows_to_markdown(rows: list[dict]) -> str:
    """A Markdown table of sparsity rows, with a total row."""
    lines = ["| module | group | covered | selected | selected fraction | sparsity |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['module']} | {row['group']} | {row['covered']:,} | {row['selected']:,} | {row['fraction']:.4f} "
            f"| {1.0 - row['fraction'] if row['covered'] else 0.0:.4f} |"
        )
    covered = sum(row["covered"] for row in rows)
    selected = sum(row["selected"] for row in rows)
    fraction = selected / covered if covered else 0.0
    held = 1.0 - fraction if covered else 0.0
    lines.append(f"| **total** |  | {covered:,} | {selected:,} | {fraction:.4f} | {held:.4f} |")
    return "\n".join(lines) + "\n"


def plot_rows(rows: list[dict], path: str | os.PathLike) -> None:
    """Save a horizontal bar chart (PNG) of the selected fraction per row, coloured by model part."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as err:
        raise ImportError(
            "Plotting a saliency mask needs matplotlib: `pip install hf_unlearn[plot]` (or `pip install matplotlib`)."
        ) from err
    path = os.fspath(path)
    height = max(2.0, 0.22 * len(rows) + 1.2)
    fig = Figure(figsize=(8, height))  # no pyplot: no global state, no GUI backend
    ax = fig.add_subplot()
    labels = [row["module"] for row in rows]
    ax.barh(range(len(rows)), [row["fraction"] for row in rows],
            color=[_GROUP_COLORS.get(row["group"], "tab:gray") for row in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=6 if len(rows) > 30 else 8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction selected (allowed to move)")
    present = list(dict.fromkeys(row["group"] for row in rows))
    ax.legend(handles=[Patch(color=_GROUP_COLORS.get(g, "tab:gray"), label=g) for g in present], loc="lower right")
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
