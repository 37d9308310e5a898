"""The shape of the package holds (CONTRIBUTING.md, "Where things live"): lint passes; no import cycles; every module
imports only from its own layer or lower ones; the library never imports ``hf_unlearn.testing``; no module reads
another module's private names. Read from the source (``ast``), so a function-level import counts like a top one
(imports under ``if TYPE_CHECKING:`` do not: they never run)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_unlearn"

# Lowest first; a module's layer is that of the longest prefix listed.
LAYERS = [
    ("foundation", ["hf_unlearn.version", "hf_unlearn.utils", "hf_unlearn.provenance", "hf_unlearn.losses",
                    "hf_unlearn.config_checks", "hf_unlearn.config", "hf_unlearn.disk", "hf_unlearn.model_folder",
                    "hf_unlearn.models", "hf_unlearn.kbit", "hf_unlearn.tiny_models", "hf_unlearn.real_llava"]),
    ("data", ["hf_unlearn.data", "hf_unlearn.features"]),
    ("launchers", ["hf_unlearn.integrations"]),
    ("masks", ["hf_unlearn.masking", "hf_unlearn.saliency"]),
    ("evaluation", ["hf_unlearn.evaluation"]),
    ("hub", ["hf_unlearn.hub"]),
    ("trainers", ["hf_unlearn.trainers"]),
    ("methods", ["hf_unlearn.methods"]),
    ("applications", ["hf_unlearn.demo", "hf_unlearn.commands", "hf_unlearn.cli", "hf_unlearn"]),
]
# Private names of other libraries we read on purpose, each for a reason stated where it is used.
THIRD_PARTY_PRIVATE = {
    "_prepare_inputs": "transformers.Trainer: batches moved to the device the way the Trainer does it",
    "_hp_mapping": "DeepSpeed ZeRO-1/2: the fp32 master fragment of a parameter (masking/zero.py)",
    "_z3_optimizer": "DeepSpeed ZeRO-3: whether the optimizer is offloaded (masking/zero.py)",
    "_actions": "argparse: the parser's actions (hf-unlearn run's flag checks)",
    "_option_string_actions": "argparse: flag -> action (hf-unlearn run's flag checks)",
    "_orig_mod": "torch.compile: the compiled module's original (models.unwrap_model)",
    "_base": "torch: a view's base tensor (saliency gradient buffers)",
    "_utils": "torch._utils: flat bucket helpers DDP itself uses (integrations/ddp.py)",
    "_flatten_dense_tensors": "torch._utils (integrations/ddp.py)",
    "_unflatten_dense_tensors": "torch._utils (integrations/ddp.py)",
    "_foreach_copy_": "torch: fused copies (divergence guard)",
    "_foreach_norm": "torch: fused norms (divergence guard)",
    "_patched": "lmms-eval 0.7.3: its filelock patch marked done (it imports filelock._api, absent in filelock 4)",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= {n.lineno for child in node.body for n in ast.walk(child) if hasattr(n, "lineno")}
    return lines


@lru_cache(maxsize=1)
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if node.__class__ not in (ast.Import, ast.ImportFrom) or node.lineno in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif node.level:
                parent = ".".join(base.split(".")[: len(base.split(".")) - node.level + 1])
                prefix = f"{parent}.{node.module}" if node.module else parent
                targets = [f"{prefix}.{a.name}" for a in node.names]
            else:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("hf_unlearn"):
                    graph[name].add(target)
    return graph


def _layer(module: str) -> int:
    best, layer = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), index
    assert layer is not None, f"{module} is in no layer: add it to LAYERS (and CONTRIBUTING.md)"
    return layer


def test_lint_passes():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: it is in the dev extra (requirements/lock.txt); run scripts/setup.sh")
    proc = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_no_import_cycles():
    graph = _graph()
    seen, cycles = set(), []

    def visit(node, path):
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        for target in sorted(graph.get(node, ())):
            visit(target, path + [node])

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


def test_modules_import_only_their_layer_or_lower_ones_and_never_the_test_helpers():
    upward, testing = [], []
    for module, targets in sorted(_graph().items()):
        if module.startswith("hf_unlearn.testing"):
            continue  # the test helpers may import anything
        for target in sorted(targets):
            if target.startswith("hf_unlearn.testing"):
                testing.append(f"{module} -> {target}")
            elif _layer(target) > _layer(module) and target != "hf_unlearn":
                upward.append(f"{module} ({LAYERS[_layer(module)][0]}) -> {target} ({LAYERS[_layer(target)][0]})")
    assert upward == [] and testing == []


def test_no_module_reads_another_modules_private_names():
    found = []
    for name, path in _modules().items():
        if name.startswith("hf_unlearn.testing"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hf_unlearn")):
                found += [f"{name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
                own = own or (isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super")
                if not own and node.attr not in THIRD_PARTY_PRIVATE and not node.attr.startswith("_hf_unlearn_"):
                    found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
