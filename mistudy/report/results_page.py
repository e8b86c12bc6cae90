"""A profile's results page, written by the study from its own tables; and when a committed table is out of date.

- `write_results_page(figures_dir, profile)`: ``<figures_dir>/RESULTS.md``, every table notebook 05 (and 06) wrote
  there, embedded verbatim between citation markers, with the command that makes them and the machine and
  precision they were made with, read from their provenance sidecars.  Nothing is retyped: regenerate the tables and
  the page follows.  Called by notebooks 05 and 06 after their tables; `python -m mistudy.report.results_page DIR`
  writes it from committed tables without training anything.
- `stale_reasons(path)`: why a committed figure or table no longer describes what the current code and settings
  would make (its settings or protocol against `config.PROFILES`, the metrics' scoring version); `[]` when current.
- `CITATION_HELP`: the citation convention that README.md and docs/ follow (checked by `tests/test_docs.py`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mistudy.io import atomic
from mistudy.methods.metrics import SCORING_VERSION
from mistudy.report.tuning import recipe_folder
from mistudy.training.config import PROFILES, STUDY_SEEDS

# ----------------------------------------------------------------------------------------- citations

CITATION_HELP = """\
A generated table is cited by embedding the lines you need, verbatim, between two HTML comments:

    <!-- table: figures/quick/comparison_by_selection_rule.md -->
    | dataset | method (U-Net) vs baseline | ... |
    |---|---|---|
    | synthetic | rmi | ... |
    <!-- /table -->

Every line between the markers must be a line of the cited file, in the file's order (a header and any subset of
rows); the cited file must exist and must not be stale (`stale_reasons`).  Outside such blocks a line may not carry
a measured number (three or more decimals, or an interval [a, b]) unless it ends with `<!-- not a result -->`
(e.g. the paper's own numbers, a definition's worked example)."""

# ----------------------------------------------------------------------------------------- staleness

# Sidecars written before the scoring version was recorded in them: the metrics' version 3 (issue 28's fixes) first
# scored the quick tables on 2026-12-06 (commit 79fa697); a table of notebook 05 or 06 written before that day's
# re-scoring was scored under an older definition.  Newer sidecars say their `scoring_version`.
LEGACY_SCORING_CUTOFF = "2026-12-06T11:00:00+00:00"


def read_provenance(path) -> dict | None:
    side = Path(str(path) + ".provenance.json")
    if not side.is_file():
        return None
    return json.loads(side.read_text())


def _profile_of(path: Path, prov: dict) -> str | None:
    if prov.get("profile") in PROFILES:
        return prov["profile"]
    for part in reversed(path.parent.parts):
        if part in PROFILES:
            return part
    return None


def stale_reasons(path, prov: dict | None = None) -> list[str]:
    """Why the committed file at ``path`` is not what the current code and settings would make; [] when current.

    Checks: the `settings` its provenance records against `config.PROFILES[profile]` (a value that differs changes
    the figure, e.g. a batch size); the batch size and epochs its protocol sentence names against the profile's;
    a table or figure scored from runs under an older metrics `scoring_version` than `methods.metrics`'.
    """
    path = Path(path)
    prov = read_provenance(path) if prov is None else prov
    if prov is None:
        return [f"{path}: no provenance sidecar"]
    reasons = []
    profile = _profile_of(path, prov)
    settings = PROFILES.get(profile, {})
    for key, value in (prov.get("settings") or {}).items():
        if key in settings and settings[key] != value:
            reasons.append(f"made with {key}={value!r}; the {profile} profile now has {key}={settings[key]!r}")
    protocol = prov.get("protocol") or ""
    m = re.search(r"\bbatch (\d+)\b", protocol)
    if m and settings.get("batch_size") and int(m.group(1)) != settings["batch_size"]:
        reasons.append(f"its runs used batch {m.group(1)}; the {profile} profile now has batch "
                       f"{settings['batch_size']}")
    epochs = prov.get("epochs")
    epochs = epochs if isinstance(epochs, list) else [epochs] if epochs is not None else []
    if (profile in ("quick", "standard", "long") and "settings" not in prov and epochs
            and any(e != settings["epochs"] for e in epochs)):
        reasons.append(f"its runs trained {epochs} epochs; the {profile} profile trains {settings['epochs']}")
    if prov.get("notebook", "")[:2] in ("05", "06") or "scoring_version" in prov:
        version = prov.get("scoring_version")
        versions = [v for v in _as_list(version) if v != SCORING_VERSION]
        if version is None and str(prov.get("date", "")) < LEGACY_SCORING_CUTOFF:
            reasons.append(f"scored under the metrics before version {SCORING_VERSION} (written "
                           f"{str(prov.get('date'))[:10]}, before the re-scoring of {LEGACY_SCORING_CUTOFF[:10]})")
        elif versions:
            reasons.append(f"scored under metrics version {versions}; the code's is {SCORING_VERSION}")
    return reasons


# ----------------------------------------------------------------------------------------- the page

# notebook 05's tables, then 06's, in the order the page shows them: (file stem or glob, heading, what it answers)
PAGE_TABLES = (
    ("comparison_by_selection_rule", "The verdicts under each checkpoint rule",
     "each method's Δ mIoU against the baseline under best_miou (the headline rule), best_loss and last"),
    ("comparison_table", "The comparison table (the paper's Tables 1-3)",
     "mIoU and pixel accuracy with intervals over seeds, Δ against the baseline, the seeds one by one"),
    ("comparison_table_beyond_miou", "Beyond mIoU", "boundary F, calibration, entropy, I(Y;Ŷ), each paired the same way"),
    ("*_05_budget", "Along the budget", "each curve's plateau state and the last epoch's Δ"),
    ("*_06_tuning", "Each method's learning rate", "the tuning grid, chosen on the selection split"),
    ("*_06_ablations", "Notebook 06: the ablations grid", "the paper's open questions, Holm-adjusted"),
    ("pretrain", "The pretrained stand-ins", "each network's mIoU on its own pretraining corpus, and on the study's "
     "validation images before any training on them: what notebook 06's pretrained settings start from"),
    ("*_06_pretrained", "Notebook 06: the pretrained regime", "fine-tuning pretrained networks"),
    ("*_06_controls", "Notebook 06: the controls", "BCE alone, RMI added to softmax CE"),
)
FIGURES = ("*_05_budget.png", "*_05_per_class_iou.png", "*_05_reliability.png", "*_05_predictions.png",
           "*_06_*.png")


def _precision(amp) -> str:
    amps = amp if isinstance(amp, list) else [amp]
    names = {"off": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast", None: "not recorded"}
    return ", ".join(names.get(a, str(a)) for a in amps)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def study_command(profile: str, prov: dict, recipe: str | None = None, stem: str = "",
                  figures_dir: str | None = None) -> str:
    """The command that makes a table, from its provenance: the profile, the seeds when not the default ones (the
    declared number; the tuning grid's: its tuning seeds), the recipe, notebook 06's grid, and ``figures_dir`` (the
    table's folder, when not the profile's own: e.g. a second precision's tables); a table made by another command
    names it (provenance "command")."""
    if prov.get("command"):
        return prov["command"]
    parts = ["python -m mistudy study", f"--profile {profile}"]
    grid = (stem.rsplit("_06_", 1)[-1] if "_06_" in stem else "ablations") \
        if prov.get("notebook", "").startswith("06") else None
    seeds = _as_list(prov.get("seed"))
    if grid:
        from mistudy.report.ablations import default_grid  # the grid's default seeds (the tuning grid: its own)

        default = default_grid(profile, grid=grid)[1]
    else:
        default = list(range(STUDY_SEEDS.get(profile, 0)))
    if seeds and seeds != default:  # e.g. the long tuning check on one tuning seed
        parts.append("--seeds " + " ".join(map(str, seeds)))
    if recipe and recipe != "shared":
        parts.append(f"--recipe {recipe}")
        if prov.get("rates_from") and prov["rates_from"] != profile:
            parts.append(f"--rates-from {prov['rates_from']}")
    if grid:
        parts.append(f"--notebooks 06 --grids {grid}")
    if figures_dir:
        parts.append(f"--figures-dir {figures_dir}")
    return " ".join(parts)


def _figures_dir_option(figures_dir: Path, profile: str, recipe: str) -> str | None:
    """--figures-dir's value for tables in ``figures_dir``: None in a profile's own folder (<profile>/, tuned/ under
    it for the tuned recipe; told by the names, so the page is the same wherever figures/ is), else the folder,
    relative to the project when inside it."""
    from mistudy.training.runs import project_root

    where = figures_dir.resolve()
    own = (profile, recipe_folder(recipe)) if recipe_folder(recipe) else (profile,)
    if where.parts[-len(own):] == own:
        return None
    root = project_root().resolve()
    return where.relative_to(root).as_posix() if where.is_relative_to(root) else where.as_posix()


def _find(figures_dir: Path, pattern: str) -> list[Path]:
    return sorted(figures_dir.glob(pattern + ".md"))


def results_page(figures_dir, profile: str, recipe: str | None = None, link_prefix: str = "") -> str:
    """The text of ``<figures_dir>/RESULTS.md``: see the module docstring.  ``recipe``: 'tuned' for the tuned
    recipe's folder (default: 'tuned' when the folder is named so)."""
    figures_dir = Path(figures_dir)
    recipe = recipe or ("tuned" if figures_dir.name == recipe_folder("tuned") else "shared")
    found = [(p, heading, what) for pattern, heading, what in PAGE_TABLES for p in _find(figures_dir, pattern)]
    rel = lambda p: link_prefix + p.relative_to(figures_dir).as_posix()  # noqa: E731
    out = [f"# Results: the {profile} profile" + (" at each method's tuned learning rate" if recipe == "tuned" else ""),
           "",
           "Written by the study (`mistudy.report.results_page`, called by notebooks 05 and 06) from the tables in "
           "this folder; every table below is the generated file itself, embedded verbatim. Do not edit: regenerate.",
           ""]
    if not found:
        out += ["No tables in this folder yet: run the study (`python -m mistudy study --profile "
                f"{profile}`).", ""]
        return "\n".join(out)
    provs = {p: read_provenance(p) or {} for p, _, _ in found}
    stale = {p: stale_reasons(p, provs[p]) for p, _, _ in found}
    elsewhere = _figures_dir_option(figures_dir, profile, recipe)
    out += ["## How these were made", "", "| table | command | device | precision | CPU (of the machine that wrote it) | torch | written | status |",
            "|---|---|---|---|---|---|---|---|"]
    for p, _, _ in found:
        prov = provs[p]
        status = "current" if not stale[p] else "**stale**: " + "; ".join(stale[p])
        out.append(f"| [{p.name}]({rel(p)}) | `{study_command(profile, prov, recipe, p.stem, elsewhere)}` | "
                   f"{', '.join(map(str, _as_list(prov.get('device')))) or 'not recorded'} | "
                   f"{_precision(prov.get('amp'))} | {prov.get('cpu') or 'not recorded'} | {prov.get('torch', '?')} | "
                   f"{str(prov.get('date', ''))[:10]} | {status} |")
    out += ["", "The numbers depend on the machine: `make run` on a CPU with native bf16 (AVX512-BF16 or AMX) "
            "trains in bf16 autocast, elsewhere in float32, and the two give different numbers from the same commit "
            "(so do different thread counts). Compare tables of one precision only.", ""]
    for p, heading, what in found:
        out += [f"## {heading}", "", f"{what}. File: [{p.name}]({rel(p)})"
                + (" — **stale**, see above." if stale[p] else "."), "",
                f"<!-- table: {rel(p)} -->", p.read_text().rstrip("\n"), "<!-- /table -->", ""]
    figures = [f for pattern in FIGURES for f in sorted(figures_dir.glob(pattern))]
    if figures:
        out += ["## Figures", ""] + [f"* [{f.name}]({rel(f)})" for f in figures] + [""]
    return "\n".join(out)


def write_results_page(figures_dir, profile: str, recipe: str | None = None) -> Path:
    """Write ``<figures_dir>/RESULTS.md`` (atomically; left untouched when its text is unchanged)."""
    path = Path(figures_dir) / "RESULTS.md"
    atomic.write_text_if_changed(path, results_page(figures_dir, profile, recipe))
    return path


if __name__ == "__main__":  # python -m mistudy.report.results_page figures/quick [--profile quick] [--recipe tuned]
    import argparse

    parser = argparse.ArgumentParser(description="write <figures_dir>/RESULTS.md from the tables already there")
    parser.add_argument("figures_dir")
    parser.add_argument("--profile", help="default: the folder's profile (figures/<profile>[/tuned])")
    parser.add_argument("--recipe", choices=("shared", "tuned"))
    a = parser.parse_args()
    d = Path(a.figures_dir)
    prof = a.profile or next((part for part in reversed(d.resolve().parts) if part in PROFILES), None)
    if prof is None:
        parser.error(f"cannot tell the profile of {d}: pass --profile")
    print(write_results_page(d, prof, a.recipe))
