"""The package's shape: imports run one way (no module imports, even inside a function, one that imports it back)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mistudy"


def _units() -> dict[str, list[Path]]:
    """The package's parts: each module, and each subpackage (mistudy/data/) with all its files."""
    units = {p.stem: [p] for p in PACKAGE.glob("*.py")}
    units |= {d.name: sorted(d.glob("*.py")) for d in PACKAGE.iterdir() if (d / "__init__.py").is_file()}
    return units


def _imports() -> dict[str, set[str]]:
    units = _units()
    modules = set(units)
    graph = {}
    for unit, paths in units.items():
        deps = set()
        for node in (n for path in paths for n in ast.walk(ast.parse(path.read_text()))):
            if isinstance(node, ast.ImportFrom) and node.module == "mistudy":
                deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mistudy."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mistudy.")}
        graph[unit] = deps - {unit}
    return graph


def test_no_import_cycles():
    graph = _imports()

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in graph.get(start, ()))

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_lower_layers_do_not_import_the_top():
    graph = _imports()
    top = {"train", "engine", "inference", "comparison", "comparison_figures", "usecase", "study", "ablations", "levels",
           "pretrain", "viz", "demo", "__main__"}
    for low in ("atomic", "config", "data", "models", "losses", "metrics", "infotheory", "stats", "runs",
                "distributed", "progress", "safeload", "tables", "loaders", "networks"):
        assert not graph[low] & top, (low, graph[low] & top)
