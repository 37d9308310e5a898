"""The report and the trade-off plot, rendered from the committed results files (issue 28, item 5): the first table
leads with the columns that rank methods, forgetting points at the oracle (not "lower"), the plot marks the oracle as
the target, every label is readable (no label covers another label or a point) and the axes span the data."""

import json
import os
import re

import pytest

from hf_unlearn.evaluation.report import COLUMNS, LEAD_COLUMNS, plot_tradeoff, render_report

ROOT = os.path.join(os.path.dirname(__file__), "..", "docs", "results")


def load(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return json.load(f)


def tables(markdown: str) -> list[list[str]]:
    """The header cells of each Markdown table, in order."""
    return [[c.strip() for c in line.strip("|").split("|")][1:] for line in markdown.splitlines()
            if line.startswith("| Method |")]


def test_report_leads_with_the_ranking_columns_and_points_forgetting_at_the_oracle():
    payload = load("demo.json")
    report = render_report(payload, notes=["a note"], title="t")
    first, second = tables(report)
    assert first == [f"{h} {d}".strip() for _, h, d in LEAD_COLUMNS] and len(first) == 5
    assert first[0] == "Forget VQA → oracle" and first[-1] == "Distance to oracle ↓"
    assert not set(first) & set(second) and len(first) + len(second) <= len(COLUMNS)
    assert "Relearn → oracle" in second and "MIA AUC → 0.5" in second
    assert "lower = more forgotten" not in report and "Forget VQA** (→ oracle)" in report
    rows = [line for line in report.splitlines() if line.startswith("| npo |")]
    assert len(rows) == 2 and re.search(r"\d\.\d\d \(\d\.\d\d–\d\.\d\d\)", rows[0])  # means with intervals


@pytest.mark.parametrize("name, x, y, chance", [("demo.json", "forget_vqa_acc", "retain_vqa_acc", 0.25),
                                                ("text_demo.json", "forget_prob", "model_utility", None)])
def test_plot_marks_the_target_and_no_label_hides_another_or_a_point(name, x, y, chance, tmp_path):
    payload = load(name)
    methods, intervals = payload["methods"], payload.get("intervals")
    layout = plot_tradeoff(methods, tmp_path / "tradeoff.png", x=x, y=y, chance=chance, intervals=intervals)
    png = (tmp_path / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and os.listdir(tmp_path) == ["tradeoff.png"]
    boxes = layout["labels"]
    assert set(boxes) == set(methods)  # every method is labelled, the oracle included
    names = sorted(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            A, B = boxes[a], boxes[b]
            assert not (A[0] < B[2] and B[0] < A[2] and A[1] < B[3] and B[1] < A[3]), (a, b)
    for label, box in boxes.items():  # no label covers a marker's centre
        assert not any(box[0] < px < box[2] and box[1] < py < box[3] for px, py in layout["points"].values()), label
    # The axes span every point and interval with a margin of at most 8% of the span (or 0.03): no empty half axis.
    for metric, (low, high) in ((x, layout["xlim"]), (y, layout["ylim"])):
        values = [r[metric] for r in methods.values()]
        values += [v for m in methods for v in (intervals or {}).get(m, {}).get(metric, ())]
        values += [chance] if metric == x and chance is not None else []
        span = max(values) - min(values)
        margin = max(0.08 * span, 0.03)
        assert low == pytest.approx(min(values) - margin) and high == pytest.approx(max(values) + margin)
