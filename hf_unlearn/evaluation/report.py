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
    ("forget_vqa_acc", "Forget VQA", "→ oracle"),
    ("forget_qa_acc", "Forget QA", "≈ vanilla"),
    ("retain_vqa_acc", "Retain VQA", "↑"),
    ("retain_qa_acc", "Retain QA", "↑"),
    ("test_vqa_acc", "Test VQA", "→ oracle"),
    ("general_acc", "General", "↑"),
    ("forget_rougeL", "Forget ROUGE-L", "→ oracle"),
    ("mia_auc", "MIA AUC", "→ 0.5"),
    ("mia_min_k_auc", "Min-K% AUC", "→ 0.5"),
    ("mia_min_k_pp_auc", "Min-K%++ AUC", "→ 0.5"),
    ("mia_zlib_auc", "zlib AUC", "→ 0.5"),
    ("mia_reference_auc", "Ref. AUC", "→ 0.5"),
    ("relearn_pre_acc", "Relearn before", ""),
    ("relearn_acc", "Relearn", "→ oracle"),
    ("relearn_gain", "Relearn gain vs oracle", "↓"),
    ("probing_acc", "Probe", "→ oracle"),
    ("probing_chance", "Probe chance", ""),
    ("probing_reference_acc", "Probe (reference)", ""),
    ("rephrase_acc", "Rephrased images", "→ oracle"),
    ("typographic_acc", "Typographic", "→ oracle"),
    ("jailbreak_max_acc", "Jailbreak max", "→ oracle"),
    ("jailbreak_mean_acc", "Jailbreak mean", "→ oracle"),
    ("distance_to_oracle", "Distance to oracle", "↓"),
    ("wall_time_s", "Time (s)", ""),
    ("train_steps", "Steps", ""),
)
# The report's first table: what a reader needs to compare methods; every other column goes to the second table.
LEAD_COLUMNS: tuple[tuple[str, str, str], ...] = tuple(
    c for c in COLUMNS if c[0] in ("forget_vqa_acc", "forget_qa_acc", "retain_vqa_acc", "general_acc",
                                   "distance_to_oracle")
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

* **Forget VQA** (→ oracle): multiple-choice accuracy on image questions about the forget people. The target is the
  oracle's value (a model never trained on those image questions), not the lowest value: below the oracle, the
  model is *visibly* avoiding the answers, which gives the forget set away as much as remembering it.
* **Forget QA** (≈ vanilla): text-only questions about the *same* people. Visual unlearning should leave it where
  the vanilla model is; a drop means the method erased text knowledge too.
* **Retain VQA / Retain QA / General** (↑): other people's image and text questions and shape/colour questions;
  the price paid for forgetting.
* **Test VQA** (→ oracle): the forget people's questions on transformed portraits: does forgetting generalise beyond the
  exact training images?
* **Forget ROUGE-L** (→ oracle): overlap of greedy answers with the true answers on the forget image questions.
* **MIA AUC** (→ 0.5): loss-based membership inference, forget people vs never-seen holdout people. 0.5 means the
  forget rows look unseen; near 1 means they still look memorised; near 0 means their loss is *abnormally* high,
  which also gives them away (typical after gradient ascent). **Min-K%**, **Min-K%++** and **zlib** score the same
  rows by their least likely answer tokens (Min-K%++ normalised by the next-token distribution) and by compressed
  length; **Ref.** compares the model's loss with the oracle's (the oracle itself scores exactly 0.5).
* **Relearn** (→ oracle): forget-image accuracy after briefly fine-tuning a copy on half of the
  forget rows, measured on the other half (**Relearn before**: the same rows before the attack). **Relearn gain vs
  oracle**: how much more the attack brings back than it teaches the oracle, which never saw those images; far above
  0 = the knowledge was hidden, not removed.
* **Probe / Rephrased images / Typographic / Jailbreak** (→ oracle): the robustness attacks (docs/robustness.md):
  a linear probe on hidden states fitted on retain rows and scored on forget rows (with its chance level), and the
  forget accuracy under transformed images, the question rendered into the image, and jailbreak-wrapped questions
  (best and mean template). Above the oracle's value = the knowledge is still reachable.
* **Distance to oracle** (↓): Euclidean distance to the oracle's point over forget VQA, forget QA, retain VQA and
  general: the one number to rank methods by (the first table leads with it and its four coordinates).
* **Time**: wall-clock seconds of unlearning (training time for vanilla and oracle).
* With several seeds a cell reads `mean (low–high)`: the mean over seeds and a 95% interval from a bootstrap over
  seeds and questions.
"""


def _fmt(value: object, key: str, bounds: Sequence[float] | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if bounds is not None:
        digits = 1 if key in ("wall_time_s", "train_steps") else 2
        return f"{float(value):.{digits}f} ({bounds[0]:.{digits}f}–{bounds[1]:.{digits}f})"
    if key in ("wall_time_s", "train_steps"):
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
    rows, bounds = _payload_rows(payload)
    return markdown_table(rows, columns, intervals=bounds if payload.get("intervals") else None)


def _payload_rows(payload: Mapping) -> tuple[dict[str, dict], dict[str, dict]]:
    """``(values, intervals)`` per model of a demo payload, the derived columns included."""
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
    return rows, bounds


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
    rows, bounds = _payload_rows(results) if is_payload else (results, None)
    intervals = bounds if is_payload and results.get("intervals") else None
    rest = [c for c in COLUMNS if c not in LEAD_COLUMNS]
    parts += [markdown_table(rows, LEAD_COLUMNS, intervals), ""]
    if any(k in r for k, _, _ in rest for r in rows.values()):
        parts += ["All other metrics:", "", markdown_table(rows, rest, intervals), ""]
    if notes:
        parts += [f"* {n}" for n in notes] + [""]
    parts += [HOW_TO_READ]
    if plot_name:
        parts += [
            "The plot puts each method at (forget VQA accuracy, retain VQA accuracy). The target is the oracle's point",
            "(green star): a dotted line joins each method to it, and the grey rings around it mark distances of 0.1,",
            "0.2, ... in these two coordinates (the table's distance adds forget QA and general).",
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
    target: str = "oracle",
) -> dict:
    """Scatter ``x`` (forgetting) against ``y`` (utility, higher is better) for every row, around the ``target`` row.

    The target (the oracle: a model never trained on the forget set) is a green star; each method is joined to it by
    a dotted line, and rings around it mark distances of 0.1, 0.2, ... (equal axis scales, so they are circles).
    ``vanilla`` is a black star. Axes span the points (and their intervals, drawn as error bars) with a margin; labels
    are placed so that none overlaps another label or a point. matplotlib is imported here (optional dependency).

    Returns:
        ``{"xlim", "ylim", "labels": {row: (x0, y0, x1, y1)}, "points": {row: (x, y)}}``: the axis limits, each
        label's box and each point's centre, in pixels.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Circle
    except ImportError as err:  # pragma: no cover - matplotlib is an optional extra
        raise ImportError(
            "The trade-off plot needs matplotlib: `pip install matplotlib` (or hf_unlearn[plot])."
        ) from err
    import io

    points = {name: (row[x], row[y]) for name, row in results.items() if row.get(x) is not None
              and row.get(y) is not None}
    xlim, ylim = _limits(points, intervals, x, y, chance)
    height = (ylim[1] - ylim[0]) / (xlim[1] - xlim[0])  # of the axes, per unit of width (equal scales)
    fig = Figure(figsize=(7.0, min(max(1.4 + 4.6 * height, 3.0), 8.0)), dpi=120)  # little empty space
    canvas = FigureCanvasAgg(fig)  # an Agg canvas of its own: no global pyplot state, no display needed
    ax = fig.add_subplot(1, 1, 1)
    styles = {"vanilla": dict(marker="*", s=220, color="black"), target: dict(marker="*", s=260, color="tab:green")}
    goal = points.get(target)
    for name, (px, py) in points.items():
        style = styles.get(name, dict(marker="o", s=60))
        marker = ax.scatter([px], [py], label=f"{name} (target)" if name == target else name, zorder=3, **style)
        if goal is not None and name != target:
            ax.plot([px, goal[0]], [py, goal[1]], linestyle=":", linewidth=0.8, color=marker.get_facecolor()[0],
                    zorder=1)
        bounds = (intervals or {}).get(name, {})
        if x in bounds or y in bounds:
            err = [[[row - bounds[m][0]], [bounds[m][1] - row]] if m in bounds else None
                   for m, row in ((x, px), (y, py))]
            ax.errorbar([px], [py], xerr=err[0], yerr=err[1], fmt="none", zorder=2, capsize=3,
                        ecolor=marker.get_facecolor()[0], linewidth=1)
    if goal is not None:
        reach = math.hypot(max(abs(xlim[0] - goal[0]), abs(xlim[1] - goal[0])),
                           max(abs(ylim[0] - goal[1]), abs(ylim[1] - goal[1])))
        for ring in range(1, min(int(reach / 0.1) + 1, 15)):
            ax.add_patch(Circle(goal, 0.1 * ring, fill=False, linewidth=0.6, color="grey", alpha=0.35, zorder=0))
    if chance is not None and xlim[0] <= chance <= xlim[1]:
        ax.axvline(chance, color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal", adjustable="box")  # equal scales: the rings are circles, distances read alike both ways
    ax.set_xlabel(f"{x} (target: the {target}'s value)" if goal is not None else x)
    ax.set_ylabel(f"{y} (higher = more kept)")
    ax.set_title("Forget / retain trade-off: distance to the target")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    labels = _place_labels(ax, canvas, points)
    pixels = {name: tuple(float(v) for v in ax.transData.transform(p)) for name, p in points.items()}
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return {"xlim": xlim, "ylim": ylim, "labels": labels, "points": pixels}


def _limits(points, intervals, x: str, y: str, chance: float | None) -> tuple[tuple[float, float], ...]:
    """Axis limits spanning the points and their intervals, a margin of 8% of the span (at least 0.03) each side."""
    spans = []
    for metric, i in ((x, 0), (y, 1)):
        values = [p[i] for p in points.values()]
        for name in points:
            values += list((intervals or {}).get(name, {}).get(metric, ()))
        if metric == x and chance is not None:
            values.append(chance)
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        margin = max(0.08 * (high - low), 0.03)
        spans.append((low - margin, high + margin))
    return tuple(spans)


# Offsets (points) tried for a label, nearest first: right, left, above, below, then the diagonals, farther out.
_LABEL_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3, 4) for dx, dy in
                  ((7, -4), (-7, -4), (0, 8), (0, -14), (7, 6), (-7, 6), (7, -14), (-7, -14))]


def _place_labels(ax, canvas, points) -> dict[str, tuple[float, float, float, float]]:
    """Each point's name at the first offset whose box overlaps no placed label and no point (pixel boxes); the
    crowded centre is served first. A label set away from its point gets a thin leader line."""
    canvas.draw()  # fixes the layout (equal aspect, tight layout): pixel positions are final from here
    renderer = canvas.get_renderer()
    to_px = ax.transData.transform
    dots = [tuple(to_px(p)) for p in points.values()]
    placed: list[tuple[float, float, float, float]] = []
    out = {}

    def crowding(name):
        px, py = to_px(points[name])
        return -sum(1 for dx, dy in dots if abs(dx - px) < 60 and abs(dy - py) < 20)

    def label(name, offset, **extra):
        ha = "left" if offset[0] > 0 else "right" if offset[0] < 0 else "center"
        return ax.annotate(name, points[name], textcoords="offset points", xytext=offset, fontsize=8, ha=ha,
                           zorder=4, **extra)

    for name in sorted(points, key=crowding):
        chosen = _LABEL_OFFSETS[-1]  # nowhere free: the farthest offset, so at least the point stays visible
        for offset in _LABEL_OFFSETS:
            text = label(name, offset)
            box = _padded(text.get_window_extent(renderer))
            text.remove()
            hits_dot = any(box[0] - 4 < px < box[2] + 4 and box[1] - 4 < py < box[3] + 4 for px, py in dots)
            if not hits_dot and not any(_overlap(box, other) for other in placed):
                chosen = offset
                break
        far = math.hypot(*chosen) > 20  # set away from its point: a thin leader line says whose label it is
        text = label(name, chosen, **({"arrowprops": dict(arrowstyle="-", linewidth=0.5, color="grey")} if far else {}))
        box = _padded(text.get_window_extent(renderer))
        placed.append(box)
        out[name] = box
    return out


def _padded(extent, pad: float = 1.0) -> tuple[float, float, float, float]:
    return (extent.x0 - pad, extent.y0 - pad, extent.x1 + pad, extent.y1 + pad)


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
