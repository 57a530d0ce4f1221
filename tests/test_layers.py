"""The layering of DESIGN.md holds: a module imports only from its own layer or
the layers above it in the list, and no subpackage has an import circle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import fiefdom

ROOT = Path(fiefdom.__file__).parent

# DESIGN.md "Layers", top to bottom: each may import the ones before it.
LAYERS = [
    "_errors",
    "_log",
    "_lifecycle",
    "_throttle",
    "_durations",
    "_address",
    "_admission",
    "_gc",
    "_shielded",
    "actors",
    "supervisors",
    "storage",
    "jobs",
    "cluster",
    "vault",
    "protocol",
    "web",
    "daemon",
    "cli",
    "__main__",
    "__init__",
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(["fiefdom", *parts])


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every fiefdom module ``path`` imports: at module level, in functions and
    under ``TYPE_CHECKING`` alike (a circle hidden in a function is still one)."""
    module = _module_name(path)
    package = module if _is_package(path) else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fiefdom"):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if not base.startswith("fiefdom"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                # ``from . import _migrations`` names a module; ``from ._x import Y`` a name.
                target = candidate if _resolves(candidate) else base
                yield node.lineno, target


def _resolves(module: str) -> bool:
    rel = module.split(".")[1:]
    return (ROOT.joinpath(*rel).with_suffix(".py")).exists() or (
        ROOT.joinpath(*rel, "__init__.py")
    ).exists()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_every_layer_is_listed() -> None:
    """Each top-level module and subpackage of fiefdom has a place in LAYERS."""
    names = {p.stem if p.suffix == ".py" else p.name for p in ROOT.iterdir()}
    names = {n for n in names if not n.startswith("__pycache__") and n != "py"}
    unknown = sorted(n for n in names if n not in LAYERS and (ROOT / n).exists())
    unknown = [n for n in unknown if (ROOT / n).is_dir() or (ROOT / f"{n}.py").exists()]
    assert unknown == [], f"add {unknown} to LAYERS in the order of DESIGN.md"


def upward_imports() -> list[str]:
    found = []
    for path in _sources():
        here = _layer(_module_name(path))
        for line, target in _imports(path):
            there = _layer(target)
            if LAYERS.index(there) > LAYERS.index(here):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return found


def test_no_module_imports_a_lower_layer() -> None:
    """No module imports from a layer below its own (DESIGN.md "Layers")."""
    assert upward_imports() == []


def _graph(package: str) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _sources():
        module = _module_name(path)
        if _is_package(path) or not module.startswith(package + "."):
            continue
        if module.count(".") != package.count(".") + 1:
            continue
        edges = graph.setdefault(module, set())
        for _, target in _imports(path):
            if target.startswith(package + ".") and target != module and target != package:
                edges.add(".".join(target.split(".")[: package.count(".") + 2]))
    return graph


def circles(package: str) -> list[list[str]]:
    """The import circles among the modules of ``package`` (one per circle found)."""
    graph = _graph(package)
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


PACKAGES = [
    "fiefdom",
    *sorted(_module_name(p) for p in ROOT.rglob("__init__.py") if p.parent != ROOT),
]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle_inside_a_package(package: str) -> None:
    """The modules of one package import each other one way only."""
    assert circles(package) == []


def test_the_check_catches_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    """The two checks fire: an upward import and a circle written on purpose are found."""
    global ROOT
    saved = ROOT
    fake = tmp_path / "fiefdom"
    (fake / "storage").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "jobs").mkdir()
    (fake / "jobs" / "__init__.py").write_text("")
    (fake / "storage" / "__init__.py").write_text("")
    (fake / "storage" / "_a.py").write_text("from ..jobs import X\nfrom ._b import Y\n")
    (fake / "storage" / "_b.py").write_text("def f():\n    from ._a import Z\n")
    ROOT = fake
    try:
        assert upward_imports() == ["storage/_a.py:1 imports fiefdom.jobs"]
        assert circles("fiefdom.storage") == [
            ["fiefdom.storage._a", "fiefdom.storage._b", "fiefdom.storage._a"]
        ]
    finally:
        ROOT = saved
