"""The library's floor plan holds: subpackages by stage, no import cycle between its modules, no
private name imported from another module, no module grown past a readable size, and the rules
files laid out like the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "workflow" / "residual_dynamics"
ROOT = "residual_dynamics"
STAGES = {"io", "inputs", "recording", "analysis", "paper", "beyond", "report", "config", "studies"}
MAX_LINES = 600


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: Path = PACKAGE) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, module-level or
    inside a function, with relative imports resolved."""
    name = module_name(path, package)
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [alias.name for alias in node.names], node.lineno))
    return out


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package's modules it imports; and every private name imported across modules."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for module, path in modules.items():
        for target, names, line in imports_of(path, package):
            if not target.startswith(package.name):
                continue
            for name in names or [None]:
                # `from pkg import sub` imports the submodule pkg.sub
                full = f"{target}.{name}" if name and f"{target}.{name}" in modules else target
                if full in modules and full != module:
                    graph[module].add(full)
                if name and name.startswith("_") and f"{target}.{name}" not in modules:
                    private.append(f"{path.relative_to(package.parent)}:{line} imports {name}")
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each a cycle's members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_the_package_modules():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_no_private_name_imported_across_modules():
    _, private = import_graph()
    assert private == []


def test_the_checks_catch_a_cycle_and_a_private_import(tmp_path):
    """The two checks above fail on a package that has the faults (so they can fail)."""
    package = tmp_path / "residual_dynamics"
    (package / "analysis").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "analysis" / "__init__.py").write_text("")
    (package / "analysis" / "a.py").write_text("from residual_dynamics.analysis.b import f\n")
    (package / "analysis" / "b.py").write_text(
        "def f():\n    from . import a\n\n\ndef _helper():\n    pass\n"
    )
    (package / "c.py").write_text("from residual_dynamics.analysis.b import _helper\n")
    graph, private = import_graph(package)
    assert cycles(graph) == [["residual_dynamics.analysis.a", "residual_dynamics.analysis.b"]]
    assert private == ["residual_dynamics/c.py:1 imports _helper"]


def test_the_package_is_arranged_by_stage():
    top = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert top == STAGES
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules outside the stage subpackages: {loose}"
    studies = {p.name for p in (PACKAGE / "studies").iterdir() if (p / "__init__.py").exists()}
    assert studies == {"affine", "talking_heads", "embedding_space"}
    for study in studies:
        # every study has the same parts: its analysis, figures, report section and config check
        parts = {p.stem for p in (PACKAGE / "studies" / study).glob("*.py")}
        assert {"config", "section"} <= parts, (
            f"studies/{study} lacks { ({'config', 'section'} - parts) }"
        )
        assert parts & {"figures"}, f"studies/{study} has no figures module"


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_module_is_too_long_to_read(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {n} lines; split it by what it holds"


def test_rules_mirror_the_package():
    rules = REPO / "workflow" / "rules"
    stages = {p.stem for p in rules.glob("*.smk")}
    assert {"common", "datasets", "training", "extraction", "statistics", "reduction"} <= stages
    assert {"perturbation", "paper", "beyond", "report"} <= stages
    assert {p.stem for p in (rules / "studies").glob("*.smk")} == {
        "affine",
        "talking_heads",
        "embedding_space",
    }
    text = "\n".join(p.read_text() for p in rules.rglob("*.smk"))
    # one way to switch a module on: rules always defined, outputs asked for through if_enabled
    assert "\nif " not in text, "a rule defined inside `if`: define it always, use if_enabled()"
    assert "optional_output" not in text
    # scripts get the config values they need, never the whole config under `config=`
    assert "        config=config," not in text
