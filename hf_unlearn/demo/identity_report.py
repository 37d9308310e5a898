"""Benchmark v3's report: the results table (means and 95% intervals), the text-damage ratios and the validity
checks of every seed, as Markdown, from a ``identity_pipeline.run_identity_demo`` payload."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..evaluation.report import markdown_table, write_text
from ..provenance import describe
from .identity_evaluation import text_damage_ratio
from .identity_validity import damage_is_specific, ga_check

# The table's columns: what a reader needs to judge MMUnlearner's and VKD's problem (forget the face, keep the text).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("forget_vqa_acc", "Forget VQA acc", "→ oracle"),
    ("forget_vqa_truth", "Forget VQA truth", "→ oracle"),
    ("forget_vqa_rougeL", "Forget VQA ROUGE-L", "→ oracle"),
    ("forget_qa_truth", "Forget QA truth", "≈ vanilla"),
    ("forget_qa_prob", "Forget QA prob", "≈ vanilla"),
    ("retain_vqa_truth", "Retain VQA truth", "↑"),
    ("retain_qa_truth", "Retain QA truth", "↑"),
    ("general_truth", "General truth", "↑"),
    ("pope_acc", "POPE acc", "↑"),
    ("pope_yes", "POPE yes-ratio", "→ 0.5"),
    ("test_vqa_acc", "Rephrased VQA acc", "→ oracle"),
    ("quant8_forget_vqa_acc", "8-bit forget VQA", "→ oracle"),
    ("quant4_forget_vqa_acc", "4-bit forget VQA", "→ oracle"),
    ("relearn_acc", "Relearn", "→ oracle"),
    ("mia_auc", "MIA AUC", "→ 0.5"),
    ("text_damage_ratio", "Text damage", "↓"),
    ("distance_to_oracle", "Distance (trusted)", "↓"),
)

# The README's columns: forget the face, keep the text, keep everything else (general utility: the drawn shapes and
# POPE's object presence), stay forgotten, and the one number.
README_COLUMNS = tuple(c for c in COLUMNS if c[0] in (
    "forget_vqa_truth", "forget_qa_prob", "retain_vqa_truth", "general_truth", "pope_acc", "quant4_forget_vqa_acc",
    "relearn_acc", "distance_to_oracle"))

VALIDITY_COLUMNS = ("seed", "vanilla min acc", "oracle forget-VQA / forget-QA (text-prior guess)",
                    "GA step: forget-QA / retain-QA prob drop; text damage (95%), specific", "vision-only forget-VQA / forget-QA",
                    "mediation follows / keeps", "passed")


def _mean_damage(payload: Mapping[str, Any], model: str) -> float | None:
    """The text-damage ratio's mean over the seeds where it is defined, from the per-seed points (so a table always
    follows ``text_damage_ratio`` as the code defines it)."""
    values = [text_damage_ratio(points[model], points["vanilla"]) for points in payload.get("per_seed", {}).values()
              if model in points and model != "vanilla"]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def table_rows(payload: Mapping[str, Any]) -> tuple[dict[str, dict], dict[str, dict]]:
    """``(values, intervals)`` per model, with the text-damage ratio (mean over seeds) and the distance."""
    rows, bounds = {}, {}
    for model, values in payload["methods"].items():
        rows[model] = {**values, "text_damage_ratio": _mean_damage(payload, model)}
        bounds[model] = dict(payload.get("intervals", {}).get(model, {}))
        distance = payload.get("distance", {}).get(model)
        if distance:
            rows[model]["distance_to_oracle"] = distance["value"]
            bounds[model]["distance_to_oracle"] = distance["interval"]
    return rows, bounds


def _fmt(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _prior(oracle: Mapping[str, Any]) -> str:
    return "" if oracle.get("text_prior_acc") is None else f" ({oracle['text_prior_acc']:.2f})"


def _damage(ga: Mapping[str, Any]) -> str:
    if ga.get("text_damage_interval") is None:
        return ""
    low, high = ga["text_damage_interval"]  # two decimals: specificity reads the low end against 1
    return f"; {ga['text_damage_ratio']:.2f} ({low:.2f}–{high:.2f}), {'✓' if damage_is_specific(low) else '✗'}"


def check_marks(record: Mapping[str, Any]) -> tuple[bool, bool, bool, bool]:
    """The four checks' verdicts of one seed's record, GA's recomputed by ``ga_check`` from its stored numbers."""
    ga = record["check_ga"]
    return (record["check_vanilla"]["passed"], record["check_oracle"]["passed"],
            ga_check(ga.get("relative_drop"), (ga.get("text_damage_interval") or [None])[0])[1],
            record["check_vision_only"]["passed"])


def validity_table(payload: Mapping[str, Any]) -> str:
    """One row per seed: the four checks of issue 25 item 6 and the identity-mediation measurement."""
    lines = ["| " + " | ".join(VALIDITY_COLUMNS) + " |", "|" + "---|" * len(VALIDITY_COLUMNS)]
    for seed, record in payload.get("validity", {}).items():
        if not record:
            continue
        ga, vision, mediation = record["check_ga"], record["check_vision_only"], record["mediation"]
        reached = vision.get("reached") or {}
        marks = "".join("✓" if passed else "✗" for passed in check_marks(record))
        lines.append("| " + " | ".join([
            seed, _fmt(record["check_vanilla"]["min_trained_accuracy"]),
            f"{_fmt(record['check_oracle']['forget_vqa_acc'])} / {_fmt(record['check_oracle']['forget_qa_acc'])}"
            + _prior(record["check_oracle"]),
            "—" if ga.get("relative_drop") is None else
            f"{ga['reached']['step']}: {100 * ga['relative_drop']:.1f}% / {100 * ga['retain_qa_relative_drop']:.1f}%"
            + _damage(ga),
            f"{_fmt(reached.get('forget_vqa_acc'))} / {_fmt(reached.get('forget_qa_acc'))}",
            f"{_fmt(mediation.get('follows_edit'), 2)} / {_fmt(mediation.get('keeps_old'), 2)}", marks]) + " |")
    return "\n".join(lines)


def validity_block(payload: Mapping[str, Any]) -> str:
    """The validity table of a validity-only run (``scripts/v3_validity.py``) with its caption."""
    run, seeds = payload["run"], payload["benchmark"]["seeds"]
    machine = run.get("machine", {})
    passed = sum(bool(r) and all(check_marks(r)) for r in payload.get("validity", {}).values())
    return "\n".join([
        validity_table(payload), "",
        f"Seeds {', '.join(map(str, seeds))} ({passed} of {len(seeds)} pass every check); {run['date']}; "
        f"{machine.get('cpu_count')} CPUs; {describe(machine)}; hf_unlearn {payload['benchmark']['hf_unlearn_version']};"
        f" wall time {run['wall_time_s']} s (references trained: "
        f"{sum(not c.get('vanilla', True) for c in run.get('cached', {}).values())} of {len(seeds)} seeds). "
        "✓/✗ per check: vanilla, oracle, GA, vision-only. GA: registered `ga`, language model only, lr 5e-4, "
        "batch 8, probed every step; drops are relative to the vanilla's answer probability; text damage is the "
        "forget-QA NLL change over the retain-QA NLL change (95% bootstrap interval over questions). The check asks "
        "for a forget-QA drop of at least 30% (the issue's check); whether the damage is specific (text-damage "
        "interval above 1) is reported beside it, not counted. Text-prior guess: the forget-VQA "
        "accuracy of answering every question with the option most people hold, the face ignored."])


def _span(values: list[float], digits: int = 2) -> str:
    return "—" if not values else f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def configurations_table(record: Mapping[str, Any]) -> str:
    """One row per recorded configuration (``scripts/v3_configurations.py``): how many seeds pass each check (and
    all four), with the range of the oracle's forget-VQA, GA's text-damage ratio and the mediation."""
    lines = ["| configuration | seeds | all four | vanilla | oracle (forget-VQA) | GA (text-damage ratio) | GA specific | "
             "vision-only | mediation follows |", "|---|---|---|---|---|---|---|---|---|"]
    for configuration in record.get("configurations", []):
        records = list(configuration["validity"].values())
        marks = [check_marks(r) for r in records]
        passes = [sum(m[i] for m in marks) for i in range(4)]
        oracle = _span([r["check_oracle"]["forget_vqa_acc"] for r in records])
        ratios = _span([r["check_ga"]["text_damage_ratio"] for r in records
                        if r["check_ga"].get("text_damage_ratio") is not None])
        specific = sum(damage_is_specific((r["check_ga"].get("text_damage_interval") or [None])[0]) for r in records)
        mediation = _span([r["mediation"]["follows_edit"] for r in records if r.get("mediation")])
        lines.append(f"| {configuration['label']} | {len(records)} | {sum(all(m) for m in marks)} | {passes[0]} | "
                     f"{passes[1]} ({oracle}) | {passes[2]} ({ratios}) | {specific} | {passes[3]} | {mediation} |")
    return "\n".join(lines)


def costs_block(payload: Mapping[str, Any]) -> str:
    """``benchmarks/bench_v3_costs.py``'s measurements against issue 25's goals, as Markdown."""
    env = payload["environment"]
    lines = ["| step | seconds | goal (s) | load before / after | verdict |", "|---|---:|---:|---|---|"]
    for r in payload["steps"]:
        verdict = "under load (not a verdict)" if r["under_load"] else ("meets" if r["meets_goal"] else "misses")
        lines.append(f"| {r['step']} | {r['seconds']} | {r['goal_s']} | {r['load'][0]} / {r['load'][1]} | {verdict} |")
    workers = payload.get("workers", 1)
    return "\n".join(lines + ["", f"Methods: {payload['methods']}; seed {payload['seed']}; "
                               f"{workers} worker process{'es' if workers > 1 else ''}; {payload['date']}; "
                               f"{env['cpu_count']} CPUs; {describe(env)}; load rule: {payload['load_rule']} "
                               f"({payload['load_limit']:g})."])


def tuning_sentence(tuning: str | Mapping[str, str]) -> str:
    """Which tuning run each method's hyperparameters came from (a payload's ``benchmark.tuning``)."""
    if isinstance(tuning, str):  # payloads written before v3 had its own tuning run
        return tuning
    by_run = {run: [m for m, r in tuning.items() if r == run] for run in ("v3", "v2")}
    if by_run["v3"] and not by_run["v2"]:
        return "every method's, the tuning protocol's pick on v3's validation seeds (tuned_v3.json)"
    return "; ".join(part for part in (
        by_run["v3"] and f"{', '.join(by_run['v3'])}: the tuning protocol's picks on v3's validation seeds "
                         "(tuned_v3.json)",
        by_run["v2"] and f"{', '.join(by_run['v2'])}: the v2 demo's picks (tuned.json), not re-tuned on v3") if part)


def v3_tables(payload: Mapping[str, Any]) -> str:
    """The results table, its caption and the validity table (the report's body; docs' generated block)."""
    bench, run = payload["benchmark"], payload["run"]
    rows, bounds = table_rows(payload)
    intervals = bounds if len(bench["seeds"]) > 1 else None
    machine = run.get("machine", {})
    parts = [
        f"Seeds {', '.join(map(str, bench['seeds']))}; {run['date']}; {machine.get('cpu_count')} CPUs; "
        f"{describe(machine)}; hf_unlearn {bench['hf_unlearn_version']}; wall time {_wall_time(run)}. "
        f"Hyperparameters: {tuning_sentence(bench['tuning'])}."
        + (f" Evaluated on {bench['rows_per_split']} questions per split (a quick look)."
           if bench.get("rows_per_split") else ""), "",
        markdown_table(rows, COLUMNS, intervals), "",
        "Cells: mean over seeds (95% interval: bootstrap over seeds and questions). *truth*: the truth-ratio score "
        "max(0, 1 - P(perturbed)/P(true)); *Text damage*: forget-QA NLL change over retain-QA NLL change from the "
        "vanilla (mean over the seeds where retain-QA moved by at least 0.01 nat; above 1 = the forget people's text "
        "facts were hit specifically); *Distance "
        f"(trusted)*: to the oracle over {', '.join(payload.get('distance_metrics', []))}.", "",
        "Validity checks (issue 25 item 6; ✓/✗ per check: vanilla, oracle, GA, vision-only):", "",
        validity_table(payload) if any(payload.get("validity", {}).values()) else "Not run (`--quick`).",
    ]
    notes = [f"* {n}" for n in payload.get("notes", [])]
    return "\n".join(parts + ([""] + notes if notes else []))


def readme_block(payload: Mapping[str, Any]) -> str:
    """The README's table: the columns that judge the problem, ordered by distance to the oracle, with its caption."""
    bench, run = payload["benchmark"], payload["run"]
    rows, bounds = table_rows(payload)
    first = {"vanilla": 0, "oracle": 1}
    ordered = dict(sorted(rows.items(), key=lambda item: (first.get(item[0], 2),
                                                          item[1].get("distance_to_oracle", float("inf")))))
    machine = run.get("machine", {})
    checks = [r for r in payload.get("validity", {}).values() if r]
    passed = sum(all(check_marks(r)) for r in checks)
    return "\n".join([
        markdown_table(ordered, README_COLUMNS, bounds), "",
        f"Mean over seeds {', '.join(map(str, bench['seeds']))} with 95% intervals (bootstrap over seeds and "
        f"questions; {payload['num_questions']['forget_vqa']} forget-VQA questions per seed); measured "
        f"{run['date'][:10]} on {machine.get('cpu_count')} CPU cores ({describe(machine)}), wall time "
        f"{_wall_time(run)}. Hyperparameters: {tuning_sentence(bench['tuning'])}. Validity checks: {passed} of "
        f"{len(checks)} reported seeds pass all four (every seed: docs/benchmark.md). *truth*: the truth-ratio score; "
        f"*Distance*: to the oracle over {', '.join(payload.get('distance_metrics', []))}."])


def _wall_time(run: Mapping[str, Any]) -> str:
    workers = run.get("workers", 1)
    return f"{run['wall_time_s']} s" + (f" ({workers} worker processes)" if workers > 1 else "")


def render_identity_report(payload: Mapping[str, Any]) -> str:
    """The whole report as Markdown."""
    return "# hf_unlearn benchmark v3 (quick configuration)\n\n" + v3_tables(payload) + "\n"


def write_identity_outputs(payload: Mapping[str, Any], output_dir: str) -> None:
    """``results.json`` and ``report.md`` in ``output_dir``, each written atomically."""
    os.makedirs(output_dir, exist_ok=True)
    write_text(os.path.join(output_dir, "results.json"), json.dumps(payload, indent=2) + "\n")
    write_text(os.path.join(output_dir, "report.md"), render_identity_report(payload))
