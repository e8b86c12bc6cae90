"""Default locations of results and figures, independent of the current directory.

Notebooks run from JupyterLab (cwd notebooks/), from papermill at the repository root
(`papermill notebooks/03_rmi.ipynb out.ipynb`) or from the study runner; relative paths would land in
different places. In a source checkout the defaults are `<checkout>/results` and `<checkout>/figures`;
for an installed package they are `./results` and `./figures`. Env MISTUDY_RESULTS / MISTUDY_FIGURES override.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path | None:
    """The source checkout holding this package (pyproject.toml beside mistudy/), if any."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def _default(env: str, name: str, given: str | os.PathLike | None) -> Path:
    if given is not None:
        return Path(given)
    if os.environ.get(env):
        return Path(os.environ[env])
    root = project_root()
    return (root if root is not None else Path.cwd()) / name


def results_dir(given: str | os.PathLike | None = None) -> Path:
    """`given` if not None, else $MISTUDY_RESULTS, else <checkout>/results (or ./results)."""
    return _default("MISTUDY_RESULTS", "results", given)


def figures_dir(given: str | os.PathLike | None = None) -> Path:
    """`given` if not None, else $MISTUDY_FIGURES, else <checkout>/figures (or ./figures)."""
    return _default("MISTUDY_FIGURES", "figures", given)
