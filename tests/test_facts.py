"""Each fact in one home (issue 31): a fact spelled again outside its home -- a run directory's file name, the
evaluation protocols, a notebook's name, the default profile or seeds -- fails here, naming where."""

import ast
import re
from pathlib import Path

from mistudy.data import PROTOCOLS
from mistudy.training import runs
from mistudy.training.config import DEFAULT_PROFILE, PROFILES, USE_CASE_NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mistudy"
# The code a fact may be spelled in: the package and the benchmarks (the tests spell the facts they check).
CODE = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])
RUN_FILES = {runs.CONFIG_FILE, runs.WEIGHTS_RECORD, runs.HISTORY_JSON, runs.HISTORY_CSV, runs.LAST_CHECKPOINT,
             runs.METRICS_FILE, runs.PER_IMAGE_FILE, runs.EPOCH_CONFMATS, runs.LOCK_FILE}
# Public functions of the package that nothing in it calls, kept on purpose (say why).
PUBLIC_API = {"joint_distribution"}  # infotheory's teaching API (an empirical joint from label samples)


def _strings(path: Path):
    """(line, text) of every string constant of ``path``, the literal parts of f-strings included, docstrings not."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def _where(paths, found) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{line}: {text!r}" for p in paths for line, text in _strings(p) if found(text)]


def test_the_run_directorys_file_names_are_spelled_in_runs_only():
    def names_a_file(text: str) -> bool:
        return text in RUN_FILES or any(text.endswith("/" + f) for f in RUN_FILES) or text.startswith("best_*") \
            or text.startswith("history.")

    spelled = _where([p for p in CODE if p != PACKAGE / "training" / "runs.py"], names_a_file)
    assert not spelled, "a run directory's file name spelled outside mistudy/training/runs.py: " + "; ".join(spelled)


def test_the_evaluation_protocols_are_listed_once():
    listed = []
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.List, ast.Tuple)) and {getattr(e, "value", None) for e in node.elts} == set(
                    PROTOCOLS):
                listed.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(listed) == 1 and listed[0].startswith("mistudy/data/transforms.py:"), listed


def test_the_use_case_notebooks_are_named_in_config_only():
    names = set(USE_CASE_NOTEBOOKS.values())
    spelled = _where([p for p in CODE if p != PACKAGE / "training" / "config.py"],
                     lambda t: any(n in t for n in names))
    assert not spelled, spelled


def test_no_command_spells_a_default_profile_or_default_seeds():
    """The default profile is config.resolve_profile's (env MISTUDY_PROFILE, else DEFAULT_PROFILE), the default
    seeds config.study_seeds's: an argparse default or a keyword default of a profile's name or of seed numbers
    would ignore both."""
    found = []
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "default":
                value = node.value
                if isinstance(value, ast.Constant) and value.value in PROFILES:
                    found.append(f"{path.relative_to(ROOT)}:{value.lineno}: default={value.value!r}")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg, value in zip(node.args.args[::-1], node.args.defaults[::-1]):
                    if arg.arg == "seeds" and not (isinstance(value, ast.Constant) and value.value is None):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}(seeds=...)")
    assert not found, found
    assert DEFAULT_PROFILE in PROFILES


def test_study_builds_a_runs_configuration_in_one_place():
    tree = ast.parse((PACKAGE / "study.py").read_text())
    calls = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) ==
             "study_config"]
    assert len(calls) == 1, f"study_config called at lines {calls} of mistudy/study.py: build it in _run_config"


def test_each_class_name_means_one_thing():
    seen: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                seen.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert not {k: v for k, v in seen.items() if len(v) > 1}


def test_every_public_function_of_the_package_is_used_by_it():
    """No dead code, and no helper that only the tests call (those live in tests/): every top-level function and
    class of the package is named somewhere in the package, the notebooks or the benchmarks besides its definition
    and docstrings."""
    sources = {p: p.read_text() for p in CODE}
    notebooks = "".join(p.read_text() for p in (ROOT / "notebooks").glob("*.ipynb"))
    unused = []
    for path, text in sources.items():
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name not in PUBLIC_API:
                pattern = re.compile(rf"(?<!def )(?<!class )(?<!`)\b{re.escape(node.name)}\b(?!`)")
                if not any(pattern.search(s) for s in [*sources.values(), notebooks]):
                    unused.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}")
    assert not unused, f"defined but never used outside the tests: {unused}"
