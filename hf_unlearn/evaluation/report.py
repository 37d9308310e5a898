"""Reports of evaluation results: a Markdown table, a "how to read" note and the forget/retain trade-off plot.

``results`` everywhere is ``{row name: {metric: value}}`` (e.g. the ``methods`` mapping of the demo's results.json).
Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from ..utils import atomic_write_bytes, atomic_write_text

# (key, header, direction): the direction says which way is better after unlearning.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("forget_vqa_acc", "Forget VQA", "↓"),
    ("forget_qa_acc", "Forget QA", "≈ vanilla"),
    ("retain_vqa_acc", "Retain VQA", "↑"),
    ("retain_qa_acc", "Retain QA", "↑"),
    ("test_vqa_acc", "Test VQA", "↓"),
    ("general_acc", "General", "↑"),
    ("forget_rougeL", "Forget ROUGE-L", "↓"),
    ("mia_auc", "MIA AUC", "→ 0.5"),
    ("mia_min_k_auc", "Min-K% AUC", "→ 0.5"),
    ("mia_min_k_pp_auc", "Min-K%++ AUC", "→ 0.5"),
    ("mia_zlib_auc", "zlib AUC", "→ 0.5"),
    ("mia_reference_auc", "Ref. AUC", "→ 0.5"),
    ("relearn_pre_acc", "Relearn before", ""),
    ("relearn_acc", "Relearn", "↓"),
    ("relearn_gain", "Relearn gain vs oracle", "↓"),
    ("distance_to_oracle", "Distance to oracle", "↓"),
    ("wall_time_s", "Time (s)", ""),
)
# The README's compact table: the headline metric of each kind.
README_COLUMNS: tuple[tuple[str, str, str], ...] = tuple(
    c for c in COLUMNS if c[0] in ("forget_vqa_acc", "forget_qa_acc", "retain_vqa_acc", "test_vqa_acc",
                                   "general_acc", "mia_auc", "mia_min_k_pp_auc", "relearn_acc", "relearn_gain",
                                   "distance_to_oracle", "wall_time_s")
)
# Derived per-model values that results.json keeps outside ``methods``.
_DERIVED = {"relearn_gain": ("paired", "oracle", "relearn_acc"), "distance_to_oracle": ("distance",)}

HOW_TO_READ = """\
How to read the table:

* **Forget VQA** (↓): multiple-choice accuracy on image questions about the forget people. The target is the
  oracle's value (a model never trained on those image questions): chance (0.25) up to the noise of a small split.
* **Forget QA** (≈ vanilla): text-only questions about the *same* people. Visual unlearning should leave it where
  the vanilla model is; a drop means the method erased text knowledge too.
* **Retain VQA / Retain QA / General** (↑): other people's image and text questions and shape/colour questions;
  the price paid for forgetting.
* **Test VQA** (↓): the forget people's questions on transformed portraits: does forgetting generalise beyond the
  exact training images?
* **Forget ROUGE-L** (↓): overlap of greedy answers with the true answers on the forget image questions.
* **MIA AUC** (→ 0.5): loss-based membership inference, forget people vs never-seen holdout people. 0.5 means the
  forget rows look unseen; near 1 means they still look memorised; near 0 means their loss is *abnormally* high,
  which also gives them away (typical after gradient ascent). **Min-K%**, **Min-K%++** and **zlib** score the same
  rows by their least likely answer tokens (Min-K%++ normalised by the next-token distribution) and by compressed
  length; **Ref.** compares the model's loss with the oracle's (the oracle itself scores exactly 0.5).
* **Relearn** (↓, compare with the oracle): forget-image accuracy after briefly fine-tuning a copy on half of the
  forget rows, measured on the other half (**Relearn before**: the same rows before the attack). **Relearn gain vs
  oracle**: how much more the attack brings back than it teaches the oracle, which never saw those images; far above
  0 = the knowledge was hidden, not removed.
* **Distance to oracle** (↓): Euclidean distance to the oracle's point over forget VQA, forget QA, retain VQA and
  general.
* **Time**: wall-clock seconds of unlearning (training time for vanilla and oracle).
* With several seeds a cell reads `mean (low–high)`: the mean over seeds and a 95% interval from a bootstrap over
  seeds and questions.
"""


def _fmt(value: object, key: str, bounds: Sequence[float] | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if bounds is not None:
        digits = 1 if key == "wall_time_s" else 2
        return f"{float(value):.{digits}f} ({bounds[0]:.{digits}f}–{bounds[1]:.{digits}f})"
    if key == "wall_time_s":
        return f"{float(value):.1f}"
    return f"{float(value):.3f}"


def markdown_table(
    results: Mapping[str, Mapping[str, float]],
    columns: Sequence[tuple[str, str, str]] = COLUMNS,
    intervals: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> str:
    """A Markdown table: one row per entry of ``results``, one column per metric (missing values shown as —);
    with ``intervals`` (``{row: {metric: [low, high]}}``) each cell reads ``mean (low–high)``."""
    used = [c for c in columns if any(c[0] in r and r[c[0]] is not None for r in results.values())]
    header = "| Method | " + " | ".join(f"{h} {d}".strip() for _, h, d in used) + " |"
    rule = "|---|" + "---:|" * len(used)
    lines = [header, rule]
    for name, row in results.items():
        cells = [_fmt(row.get(k), k, (intervals or {}).get(name, {}).get(k)) for k, _, _ in used]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _derived(payload: Mapping, model: str, path: tuple[str, ...]) -> tuple[float | None, Sequence[float] | None]:
    node = payload.get(path[0], {}).get(model, {})
    for key in path[1:]:
        node = node.get(key, {}) if isinstance(node, Mapping) else {}
    if not node:
        return None, None
    return node.get("diff", node.get("value")), node.get("interval")


def results_table(payload: Mapping, columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
    """The table of a demo ``results.json`` payload: means with intervals when the run had several seeds (or
    intervals at all), plus the derived relearn gain and distance to the oracle."""
    rows: dict[str, dict] = {}
    bounds: dict[str, dict] = {}
    for model, values in payload["methods"].items():
        rows[model] = dict(values)
        bounds[model] = dict(payload.get("intervals", {}).get(model, {}))
        for key, path in _DERIVED.items():
            value, interval = _derived(payload, model, path)
            if value is not None:
                rows[model][key] = value
                if interval is not None:
                    bounds[model][key] = interval
    return markdown_table(rows, columns, intervals=bounds if payload.get("intervals") else None)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically (temp file + ``os.replace``)."""
    atomic_write_text(path, text)


def render_report(
    results: Mapping[str, Mapping[str, float]],
    settings: Mapping[str, object] | None = None,
    notes: Sequence[str] = (),
    plot_name: str | None = "tradeoff.png",
    title: str = "hf_unlearn benchmark report",
) -> str:
    """The report as Markdown: settings, the table, notes (e.g. skipped methods), how to read it and the plot.

    ``results`` is ``{row: {metric: value}}`` or a whole demo ``results.json`` payload (then the table shows its
    intervals and derived columns, see ``results_table``).
    """
    parts = [f"# {title}", ""]
    if settings:
        parts += ["Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()), ""]
    is_payload = "methods" in results and isinstance(results.get("methods"), Mapping)
    parts += [results_table(results) if is_payload else markdown_table(results), ""]
    if notes:
        parts += [f"* {n}" for n in notes] + [""]
    parts += [HOW_TO_READ]
    if plot_name:
        parts += [
            "The plot puts each method at (forget VQA accuracy, retain VQA accuracy): the best place is the top",
            "left, at the oracle's forget accuracy with the vanilla model's retain accuracy.",
            "",
            f"![forget/retain trade-off]({plot_name})",
            "",
        ]
    return "\n".join(parts)


def plot_tradeoff(
    results: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    x: str = "forget_vqa_acc",
    y: str = "retain_vqa_acc",
    chance: float | None = 0.25,
    intervals: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> None:
    """Scatter ``x`` (forgetting, lower is better) against ``y`` (utility, higher is better) for every row.

    ``vanilla`` and ``oracle`` rows are drawn as reference stars; with ``intervals`` (``{row: {metric: [low,
    high]}}``) each point carries its intervals as error bars. matplotlib is imported here (optional dependency).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is an optional extra
        raise ImportError(
            "The trade-off plot needs matplotlib: `pip install matplotlib` (or hf_unlearn[plot])."
        ) from err
    import io

    fig = Figure(figsize=(5.5, 4.5), dpi=120)
    FigureCanvasAgg(fig)  # attaches an Agg canvas: no global pyplot state, no display needed
    ax = fig.add_subplot(1, 1, 1)
    styles = {"vanilla": dict(marker="*", s=220, color="black"), "oracle": dict(marker="*", s=220, color="tab:green")}
    for name, row in results.items():
        if x not in row or y not in row:
            continue
        style = styles.get(name, dict(marker="o", s=60))
        points = ax.scatter([row[x]], [row[y]], label=name, zorder=3, **style)
        bounds = (intervals or {}).get(name, {})
        if x in bounds or y in bounds:
            err = [[[row[m] - bounds[m][0]], [bounds[m][1] - row[m]]] if m in bounds else None for m in (x, y)]
            ax.errorbar([row[x]], [row[y]], xerr=err[0], yerr=err[1], fmt="none", zorder=2, capsize=3,
                        ecolor=points.get_facecolor()[0], linewidth=1)
        ax.annotate(name, (row[x], row[y]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel(f"{x} (lower = more forgotten)")
    ax.set_ylabel(f"{y} (higher = more kept)")
    ax.set_title("Forget / retain trade-off")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
