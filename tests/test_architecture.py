"""The package's shape, as docs/architecture.md states it: layers that import only downwards, no
import circle, plugins that see the training contract but never the engine, and files that stay
small enough to read.

Every import counts, wherever it stands (module level, inside a function, under TYPE_CHECKING):
an import hidden in a function is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: rank of each part of the package: a module may import its own rank or lower, never higher
LAYERS = {
    "cmfnet": 0, "cmfnet.errors": 0,
    "cmfnet.data": 1,
    "cmfnet.training": 2,
    "cmfnet.evaluation": 3,
    "cmfnet.provenance": 4, "cmfnet.cli": 4, "cmfnet.bench": 4,
}
#: what a method plugin (baselines/) may import of the package: the contract and what it builds on
PLUGIN_MAY_IMPORT = ("cmfnet.errors", "cmfnet.data.io", "cmfnet.training.cards", "cmfnet.training.contract",
                     "cmfnet.training.losses", "cmfnet.training.networks")
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


MODULES = {module_name(p): p for package in ("cmfnet", "baselines") for p in source_files(package)}


def imported_modules(path: Path) -> set[str]:
    """Every module of this repository that ``path`` imports (``from a import b`` may name module a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


def layer(module: str) -> int:
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)
    return LAYERS[best]


GRAPH = {module: imported_modules(path) for module, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("cmfnet")))
def test_package_modules_import_only_their_own_layer_or_lower(module: str) -> None:
    upward = sorted(other for other in GRAPH[module]
                    if other.startswith("cmfnet") and layer(other) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports a higher layer: {upward}"


def test_the_package_never_imports_a_method_plugin() -> None:
    """Plugins are found by the card's name at run time (cmfnet.training.plugins), never imported."""
    offenders = {m: sorted(o for o in GRAPH[m] if o.startswith("baselines")) for m in MODULES if m.startswith("cmfnet")}
    assert not {m: o for m, o in offenders.items() if o}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of the import graph (depth-first search: a back edge closes one), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for other in sorted(graph.get(module, ())):
            if other == module:  # ``from pkg import sub`` inside pkg/__init__.py names pkg itself
                continue
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state and (circle := visit(other)):
                return circle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def test_there_is_no_import_circle() -> None:
    circle = find_circle(GRAPH)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_circle_check_finds_the_old_engine_inference_method_circle() -> None:
    old = {"engine": {"inference", "method"}, "inference": {"engine"}, "method": {"engine"}, "io": set()}
    assert find_circle(old) == ["engine", "inference", "engine"]
    assert find_circle({"pkg": {"pkg", "pkg.sub"}, "pkg.sub": set()}) is None


@pytest.mark.parametrize("plugin", sorted(m for m in MODULES if m.startswith("baselines.")))
def test_plugins_see_the_contract_never_the_engine(plugin: str) -> None:
    """A plugin gets a TrainingContext; the engine, prediction and evaluation are not its business."""
    package = sorted(o for o in GRAPH[plugin] if o.startswith("cmfnet"))
    allowed = [o for o in package if any(o == a or o.startswith(a + ".") for a in PLUGIN_MAY_IMPORT)]
    assert package == allowed, f"{plugin} imports {sorted(set(package) - set(allowed))}"


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: str(p.relative_to(REPO)))
def test_no_source_file_is_over_500_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_layer_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checks above must be able to fail: an evaluation import inside a data module is found."""
    fake = REPO / "cmfnet" / "data" / "io.py"
    tree_text = fake.read_text() + "\n\ndef _late() -> None:\n    from cmfnet.evaluation.metrics import evaluate_case\n"
    probe = tmp_path / "io.py"
    probe.write_text(tree_text)
    found = imported_modules(probe)
    assert "cmfnet.evaluation.metrics" in found and layer("cmfnet.evaluation.metrics") > layer("cmfnet.data.io")


@pytest.mark.parametrize("command", ["tables", "curves", "qualitative"])
def test_reports_need_no_torch(command: str) -> None:
    """`cmfnet tables` and `cmfnet curves` regenerate their outputs from stored CSVs on a machine
    without torch."""
    code = f"import sys, cmfnet.evaluation.{command}, cmfnet.cli; cmfnet.cli.build_parser('{command}'); " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
