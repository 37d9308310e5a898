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
    ("relearn_acc", "Relearn", "↓"),
    ("wall_time_s", "Time (s)", ""),
)

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
  which also gives them away (typical after gradient ascent).
* **Relearn** (↓, compare with the oracle): forget-image accuracy after briefly fine-tuning a copy on half of the
  forget rows, measured on the other half. Far above the oracle = the knowledge was hidden, not removed.
* **Time**: wall-clock seconds of unlearning (training time for vanilla and oracle).
"""


def _fmt(value: object, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if key == "wall_time_s":
        return f"{float(value):.1f}"
    return f"{float(value):.3f}"


def markdown_table(
    results: Mapping[str, Mapping[str, float]], columns: Sequence[tuple[str, str, str]] = COLUMNS
) -> str:
    """A Markdown table: one row per entry of ``results``, one column per metric (missing values shown as —)."""
    used = [c for c in columns if any(c[0] in r for r in results.values())]
    header = "| Method | " + " | ".join(f"{h} {d}".strip() for _, h, d in used) + " |"
    rule = "|---|" + "---:|" * len(used)
    lines = [header, rule]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(k), k) for k, _, _ in used) + " |")
    return "\n".join(lines)


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
    """The report as Markdown: settings, the table, notes (e.g. skipped methods), how to read it and the plot."""
    parts = [f"# {title}", ""]
    if settings:
        parts += ["Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()), ""]
    parts += [markdown_table(results), ""]
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
) -> None:
    """Scatter ``x`` (forgetting, lower is better) against ``y`` (utility, higher is better) for every row.

    ``vanilla`` and ``oracle`` rows are drawn as reference stars. matplotlib is imported here (optional dependency).
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
        ax.scatter([row[x]], [row[y]], label=name, zorder=3, **style)
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
