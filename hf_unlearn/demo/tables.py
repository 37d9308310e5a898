"""The published benchmark tables: generated from a committed ``results.json``, never edited by hand.

``README.md`` and ``docs/benchmark.md`` carry blocks between ``<!-- hf_unlearn:<name>:start -->`` and
``<!-- hf_unlearn:<name>:end -->`` markers. ``scripts/render_tables.py`` rewrites them from the committed results
file (``docs/results/demo.json``); a test checks that what is committed equals what the script renders.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..evaluation.report import COLUMNS, README_COLUMNS, results_table
from ..provenance import describe
from ..utils import atomic_write_text

RESULTS_FILE = os.path.join("docs", "results", "demo.json")
TEXT_RESULTS_FILE = os.path.join("docs", "results", "text_demo.json")
REAL_RESULTS_FILE = os.path.join("docs", "results", "demo_real_quick.json")
V3_RESULTS_FILE = os.path.join("docs", "results", "v3.json")
V3_VALIDITY_FILE = os.path.join("docs", "results", "v3_validity.json")
V3_CONFIGURATIONS_FILE = os.path.join("docs", "results", "v3_configurations.json")
V3_COSTS_FILE = os.path.join("docs", "results", "v3_costs.json")
TYPOGRAPHIC_READING_FILE = os.path.join("docs", "results", "typographic_reading.json")
REAL_COLUMNS = tuple(c for c in COLUMNS if c[0] in ("forget_vqa_acc", "retain_vqa_acc", "test_vqa_acc",
                                                    "forget_rougeL", "wall_time_s"))
TUNING_FILE = os.path.join("hf_unlearn", "demo", "tuned.json")
V3_TUNING_FILE = os.path.join("hf_unlearn", "demo", "tuned_v3.json")  # beside TUNING_FILE


def _span(values: list[int]) -> str:
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}–{values[-1]}"
    return ", ".join(str(v) for v in values)


def caption(payload: Mapping[str, Any], text: bool = False) -> str:
    """Seeds, machine, date and wall time of a run, as one sentence under its table."""
    seeds = payload["benchmark"].get("seeds", [])
    run = payload.get("run", {})
    machine = run.get("machine", {})
    load = machine.get("load_average")
    questions = payload.get("num_questions", {})
    if text:  # each TOFU metric is one number per seed (several are not means over rows): seeds are resampled
        sample = (f"Mean over seeds {_span(seeds)} ({len(seeds)} seeds) with 95% intervals from a bootstrap over "
                  f"seeds ({questions.get('forget_qa', '?')} forget questions per seed).")
    else:
        sample = (f"Mean over seeds {_span(seeds)} ({len(seeds)} seeds) with 95% intervals from a bootstrap over "
                  f"seeds and questions ({questions.get('forget_vqa', '?')} forget-VQA, "
                  f"{questions.get('forget_qa', '?')} forget-QA, {questions.get('retain_vqa', '?')} retain-VQA "
                  "questions per seed).")
    parts = [
        sample,
        f"Measured {run.get('date', '?')[:10]} on {machine.get('cpu_count', '?')} CPU cores "
        f"({machine.get('processor', '?')}, {machine.get('platform', '?')}, "
        + (describe(machine) if "packages" in machine else f"torch {machine.get('torch', '?')}")
        + f", {machine.get('torch_threads', '?')} torch thread(s)"
        + (f", load average at the end {load[0]}" if load else "") + f"); total wall time {run.get('wall_time_s', '?')} s.",
    ]
    cached = run.get("cached", {}).values()
    if any(any(c.values()) if isinstance(c, Mapping) else c for c in cached):
        parts.append("Vanilla and oracle times are their training times when first trained (this run loaded them "
                     "from the cache).")
    tuning = payload["benchmark"].get("tuning")
    if tuning:
        parts.append(f"Method hyperparameters: the tuning protocol's picks on validation seeds "
                     f"{_span(tuning.get('seeds', []))} (never reported)"
                     + (f"; relearning attack calibrated on validation seeds {_span(tuning['relearn_seeds'])}."
                        if tuning.get("relearn_seeds") else "."))
    return " ".join(parts)


def _fmt_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def tuning_table(record: Mapping[str, Any]) -> str:
    """The tuning protocol's record (``tuned.json``) as a table: each method's grid, pick and mean distance."""
    protocol = record.get("protocol", {})
    lines = ["| Method | Grid (same number of points for every method) | Pick | Mean distance to the oracle |",
             "|---|---|---|---:|"]
    for name, entry in record.get("methods", {}).items():
        rounds = entry["grid"] if isinstance(entry["grid"], list) else [entry["grid"]]
        grid = " + ".join(
            (f"round {i + 1}: " if len(rounds) > 1 else "")
            + "; ".join(f"{k} ∈ {{{', '.join(_fmt_value(v) for v in values)}}}" for k, values in r.items())
            for i, r in enumerate(rounds))
        pick = ", ".join(f"{k}={_fmt_value(v)}" for k, v in entry["picked"].items())
        lines.append(f"| {name} | {grid} | {pick} | {entry['distance']:.3f} |")
    seeds = protocol.get("seeds", [])
    lines += ["", f"Validation seeds {_span(seeds)} (never reported); {protocol.get('grid_size', '?')} points per "
                  f"method per seed; criterion: {protocol.get('criterion', '?')} over "
                  f"{', '.join(protocol.get('metrics', []))}; wall time {protocol.get('wall_time_s', '?')} s"
                  + (f", the sum of {len(protocol['runs'])} runs (one process each, some at once; a point scored in "
                     f"an earlier run is not run again)." if protocol.get("runs") else ".")]
    return "\n".join(lines)


def _points_table(record: Mapping[str, Any], name: str, seed_header: Callable[[Any], str],
                  seed_cell: Callable[[Mapping[str, float], str], str], align: str) -> list[str]:
    """One row per grid point of ``name``: its hyperparameters (the pick in bold), mean distance and a cell per
    validation seed (``seed_cell(point's metrics at the seed, seed)``)."""
    entry = record["methods"][name]
    seeds = record.get("protocol", {}).get("seeds", [])
    lines = ["| Hyperparameters | Mean distance | " + " | ".join(map(seed_header, seeds)) + " |",
             "|---|---:|" + align * len(seeds)]
    for point in entry["points"]:
        hp = ", ".join(f"{k}={_fmt_value(v)}" for k, v in point["hyperparameters"].items())
        if point["hyperparameters"] == entry["picked"]:
            hp = f"**{hp}**"
        cells = [seed_cell(point["per_seed"][str(s)], str(s)) for s in seeds]
        lines.append(f"| {hp} | {point['distance']:.3f} | " + " | ".join(cells) + " |")
    return lines


def method_tuning_table(record: Mapping[str, Any], name: str) -> str:
    """Every grid point of one method (``tuned.json``): its mean distance to the oracle and, per validation seed,
    the four criterion metrics; the pick in bold."""
    seeds = record.get("protocol", {}).get("seeds", [])
    metrics = record.get("protocol", {}).get("metrics", [])
    short = "/".join(m[: -len("_acc")] if m.endswith("_acc") else m for m in metrics)

    def cell(values: Mapping[str, float], _seed: str = "") -> str:
        return " / ".join(f"{values[m]:.2f}" for m in metrics)

    lines = _points_table(record, name, lambda s: f"seed {s}: {short}", cell, "---|")
    oracle = record.get("oracle", {})
    if oracle:
        lines.append("| oracle | 0 | " + " | ".join(cell(oracle[str(s)]) for s in seeds) + " |")
    return "\n".join(lines)


def method_distance_table(record: Mapping[str, Any], name: str) -> str:
    """Every grid point of one method with its distance to the oracle at each validation seed and their mean (the
    pick in bold): for a record whose criterion has too many metrics to list per seed (v3's eight)."""
    from ..evaluation.stats import distance

    oracle, metrics = record["oracle"], record["protocol"]["metrics"]
    return "\n".join(_points_table(record, name, lambda s: f"seed {s}",
                                   lambda values, seed: f"{distance(values, oracle[seed], metrics):.3f}", "---:|"))


def relearn_table(record: Mapping[str, Any]) -> str:
    """The relearning attack's calibration (``tuned.json``'s ``relearn``): test-row accuracy before -> after the
    attack, per candidate budget and validation seed, for vanilla, the oracle and the hiding model."""
    seeds = record.get("seeds", [])
    lines = ["| Budget (lr x steps) | " + " | ".join(f"vanilla, seed {s}" for s in seeds) + " | "
             + " | ".join(f"oracle, seed {s}" for s in seeds) + " | "
             + " | ".join(f"hiding, seed {s}" for s in seeds) + " |",
             "|---|" + "---:|" * (3 * len(seeds))]
    pick = record.get("pick") or {}
    for budget in record.get("budgets", []):
        per_seed = budget["per_seed"]
        cells = [f"{per_seed[str(s)][m]['before']:.2f} → {per_seed[str(s)][m]['after']:.2f}"
                 for m in ("vanilla", "oracle", "hidden") for s in seeds]
        chosen = " **(pick)**" if (budget["learning_rate"], budget["steps"]) == (pick.get("learning_rate"),
                                                                                pick.get("steps")) else ""
        lines.append(f"| {budget['learning_rate']:g} x {budget['steps']}{chosen} | " + " | ".join(cells) + " |")
    rule = record.get("rule") or {"require_exposure": True, "sure_seeds_only": False}
    where = ("at every seed where vanilla answered every test row before the attack" if rule["sure_seeds_only"]
             else "at every seed")
    exposure = (" and under which the hiding model gains more than the oracle at every seed"
                if rule["require_exposure"] else "")
    lines += ["", f"Pick rule: the strongest budget whose vanilla drop is at most {record.get('max_vanilla_drop')} "
                  f"{where}{exposure}." + ("" if record.get("pick") else " No budget met it.")]
    return "\n".join(lines)


def distance_paired_table(payload: Mapping[str, Any], methods: tuple[str, ...] = ("mmunlearner", "vkd"),
                          baselines: tuple[str, ...] = ("ga", "ga_diff", "kl_min", "npo")) -> str:
    """Paired differences of the distance to the oracle (method minus baseline, same seeds and questions): negative
    = the method is closer; an interval that excludes 0 is a difference the seeds resolve."""
    paired = payload.get("distance_paired", {})
    lines = ["| Method | " + " | ".join(f"− {b}" for b in baselines) + " |", "|---|" + "---:|" * len(baselines)]
    for m in methods:
        if m not in paired:
            continue
        cells = []
        for b in baselines:
            entry = paired[m].get(b)
            if entry is None:
                cells.append("—")
                continue
            lo, hi = entry["interval"]
            verdict = " (closer)" if hi < 0 else " (farther)" if lo > 0 else ""
            cells.append(f"{entry['diff']:+.2f} ({lo:+.2f}–{hi:+.2f}){verdict}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rendered_blocks(payload: Mapping[str, Any], tuning: Mapping[str, Any] | None = None,
                    text_payload: Mapping[str, Any] | None = None,
                    real_payload: Mapping[str, Any] | None = None,
                    v3_payload: Mapping[str, Any] | None = None,
                    v3_validity: Mapping[str, Any] | None = None,
                    v3_costs: Mapping[str, Any] | None = None,
                    v3_configurations: Mapping[str, Any] | None = None,
                    v3_tuning: Mapping[str, Any] | None = None,
                    typographic_reading: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``{block name: Markdown}`` for every generated block."""
    blocks = {
        "demo-table": results_table(payload, README_COLUMNS) + "\n\n" + caption(payload),
        "demo-table-full": results_table(payload, COLUMNS) + "\n\n" + caption(payload),
        "distance-paired": distance_paired_table(payload),
    }
    if text_payload:
        from ..evaluation.report import markdown_table
        from .text import TEXT_COLUMNS

        blocks["text-demo-table"] = (markdown_table(text_payload["methods"], TEXT_COLUMNS,
                                                    intervals=text_payload.get("intervals"))
                                     + "\n\n" + caption(text_payload, text=True))
    if real_payload:  # one seed, a first look (docs/real_weights.md says so): no intervals, no caption claims
        run = real_payload.get("run", {})
        blocks["real-demo-table"] = (results_table(real_payload, REAL_COLUMNS) + "\n\n"
                                     + f"One seed ({_span(real_payload['benchmark'].get('seeds', []))}), "
                                     f"measured {run.get('date', '?')[:10]}, total wall time {run.get('wall_time_s')} s "
                                     f"on {run.get('machine', {}).get('cpu_count', '?')} CPU cores (load average at "
                                     f"the end {(run.get('machine', {}).get('load_average') or ['?'])[0]}).")
    if v3_payload:  # the published benchmark: README's table and the full one in docs/benchmark_v3.md
        from .identity_report import readme_block, v3_tables

        blocks["v3-demo-table"] = readme_block(v3_payload)
        blocks["v3-demo-table-full"] = v3_tables(v3_payload)
    if v3_validity:
        from .identity_report import validity_block

        blocks["v3-validity-table"] = validity_block(v3_validity)
    if v3_configurations:
        from .identity_report import configurations_table

        blocks["v3-configurations-table"] = configurations_table(v3_configurations)
    if v3_costs:
        from .identity_report import costs_block

        blocks["v3-costs-table"] = costs_block(v3_costs)
    if typographic_reading:
        blocks["typographic-reading"] = typographic_reading_table(typographic_reading)
    if v3_tuning:
        blocks["v3-tuning-table"] = tuning_table(v3_tuning)
        if v3_tuning.get("relearn"):
            blocks["v3-relearn-calibration"] = relearn_table(v3_tuning["relearn"])
        for name in v3_tuning.get("methods", {}):
            blocks[f"v3-tuning-{name}"] = method_distance_table(v3_tuning, name)
    if tuning:
        blocks["tuning-table"] = tuning_table(tuning)
        for name in tuning.get("methods", {}):
            blocks[f"tuning-{name}"] = method_tuning_table(tuning, name)
        if tuning.get("relearn"):
            blocks["relearn-calibration"] = relearn_table(tuning["relearn"])
    return blocks


def _pattern(name: str) -> re.Pattern:
    # An empty block is the two markers on consecutive lines; a filled one has its content on the lines between.
    return re.compile(rf"(<!-- hf_unlearn:{re.escape(name)}:start -->\n)(?:(.*?)\n)?(<!-- hf_unlearn:{re.escape(name)}:end -->)",
                      re.DOTALL)


def block_in(text: str, name: str) -> str | None:
    """The content of block ``name`` in ``text`` ("" for an empty block; None when the markers are absent)."""
    match = _pattern(name).search(text)
    return (match.group(2) or "") if match else None


def replace_blocks(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with every block whose markers it has replaced by its new content."""
    for name, content in blocks.items():
        text = _pattern(name).sub(lambda m: m.group(1) + content + "\n" + m.group(3), text)
    return text


def typographic_reading_table(record: Mapping[str, Any]) -> str:
    """``scripts/typographic_reading.py``'s measurement: per seed, each model's typographic accuracy on the forget
    canvases before and after learning the retain people's canvases, and how well it learnt those."""
    lines = ["| seed | vanilla: forget canvases before → after | oracle: before → after | retain canvases after "
             "(vanilla / oracle) | vanilla forget-VQA after |", "|---|---|---|---|---|"]
    for seed, point in record["per_seed"].items():
        v, o = point["vanilla"], point["oracle"]
        lines.append(f"| {seed} | {v['before']['typographic_acc']:.2f} → {v['after']['typographic_acc']:.2f} | "
                     f"{o['before']['typographic_acc']:.2f} → {o['after']['typographic_acc']:.2f} | "
                     f"{v['after']['retain_canvases_acc']:.2f} / {o['after']['retain_canvases_acc']:.2f} | "
                     f"{v['after']['forget_vqa_acc']:.2f} |")
    first = next(iter(record["per_seed"].values()))
    settings, env = record["settings"], record["environment"]
    return "\n".join(lines) + (
        f"\n\n{first['num_forget_questions']} forget canvases and {first['num_retain_canvases']} retain canvases per "
        f"seed; {settings['epochs']} epochs at {settings['learning_rate']:g}, batch {settings['batch_size']}, every "
        f"parameter; {env.get('cpu_count')} CPU cores ({describe(env)}). Generated from "
        f"`{TYPOGRAPHIC_READING_FILE}` (`scripts/typographic_reading.py`).")


def _json_or_none(path: str | None) -> Any:
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_blocks(results_path: str = RESULTS_FILE, tuning_path: str | None = TUNING_FILE,
                text_results_path: str | None = None) -> dict[str, str]:
    """The blocks rendered from the committed results file (and the tuning records, v2's and v3's beside it, and
    the other results files, if present; the text results default to ``TEXT_RESULTS_FILE`` next to ``results_path``)."""
    with open(results_path, encoding="utf-8") as f:
        payload = json.load(f)
    folder = os.path.dirname(results_path)
    if text_results_path is None:
        text_results_path = os.path.join(folder, os.path.basename(TEXT_RESULTS_FILE))
    real_results_path = os.path.join(folder, os.path.basename(REAL_RESULTS_FILE))
    v3_results_path = os.path.join(folder, os.path.basename(V3_RESULTS_FILE))
    v3_validity_path = os.path.join(folder, os.path.basename(V3_VALIDITY_FILE))
    v3_costs_path = os.path.join(folder, os.path.basename(V3_COSTS_FILE))
    v3_configurations_path = os.path.join(folder, os.path.basename(V3_CONFIGURATIONS_FILE))
    v3_tuning_path = tuning_path and os.path.join(os.path.dirname(tuning_path), os.path.basename(V3_TUNING_FILE))
    typographic_path = os.path.join(folder, os.path.basename(TYPOGRAPHIC_READING_FILE))
    return rendered_blocks(payload, _json_or_none(tuning_path), _json_or_none(text_results_path),
                           _json_or_none(real_results_path), _json_or_none(v3_results_path),
                           _json_or_none(v3_validity_path), _json_or_none(v3_costs_path),
                           _json_or_none(v3_configurations_path), _json_or_none(v3_tuning_path),
                           _json_or_none(typographic_path))


def update_files(results_path: str, files: list[str], tuning_path: str | None = TUNING_FILE) -> list[str]:
    """Rewrite the generated blocks of ``files`` from ``results_path``; returns the files that changed."""
    blocks = load_blocks(results_path, tuning_path)
    changed = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = replace_blocks(text, blocks)
        if new != text:
            atomic_write_text(path, new)
            changed.append(path)
    return changed
