"""The package's shape: folders by layer, each importing only itself and the folders below it, and no import cycle
between modules (even through an import inside a function)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mistudy"
# Bottom to top.  The commands (__main__, study, executors, demo) sit in mistudy/ itself, above every folder.
LAYERS = ("io", "data", "methods", "training", "report")
COMMANDS = "commands"
# The analysis reads finished runs; it never imports the trainer.
ANALYSIS = ("report/comparison.py", "report/comparison_figures.py", "report/budget.py", "report/tuning.py",
            "report/viz.py", "report/theory_plots.py")


def _modules() -> dict[str, Path]:
    """'mistudy.training.runs' -> its file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else COMMANDS


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it (``from mistudy.x import y`` counts y when y is
    a module)."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mistudy":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                deps.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.split(".")[0] == "mistudy"}
    return deps


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, set(modules)) - {m, "mistudy"} for m, p in modules.items()}


def test_every_module_sits_in_a_layer_folder_or_is_a_command():
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "demo.py", "executors.py", "study.py"], flat
    folders = sorted(d.name for d in PACKAGE.iterdir() if (d / "__init__.py").is_file())
    assert folders == sorted(LAYERS), folders


def test_each_folder_imports_only_itself_and_the_folders_below():
    rank = {name: i for i, name in enumerate((*LAYERS, COMMANDS))}
    upward = [(m, d) for m, deps in _graph().items() for d in deps
              if d.startswith("mistudy.") and rank[_layer(d)] > rank[_layer(m)]]
    assert not upward, f"imports from a higher layer: {upward}"


def test_no_import_cycles():
    graph = _graph()

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in graph.get(start, ()))

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_analysis_never_imports_the_trainer():
    graph = _graph()
    for name in ANALYSIS:
        module = "mistudy." + name.removesuffix(".py").replace("/", ".")
        assert "mistudy.training.train" not in graph[module], module


def test_the_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a data module importing the trainer is caught, inside a function too."""
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from mistudy.training import train\n")
    deps = _imports(path, set(_modules()))
    assert deps == {"mistudy.training.train"}
    assert _layer("mistudy.data.bad") == "data" and _layer("mistudy.training.train") == "training"
    assert _layer("mistudy.study") == COMMANDS and _layer("mistudy.data") == "data"
