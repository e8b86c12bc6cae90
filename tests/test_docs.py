"""The README and docs/ against the generated tables they cite; committed figures against the settings that made them.

The convention (`mistudy.report.results_page.CITATION_HELP`): a result enters README.md or docs/*.md only as lines of
a generated table embedded verbatim between ``<!-- table: FILE -->`` and ``<!-- /table -->``; a measured number
anywhere else fails here.  Each profile's RESULTS.md must be what the study would write from the committed tables.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

from mistudy.io import provenance
from mistudy.report import results_page as rp

import citations

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Committed files known to be out of date, each with why and what remakes it.  A stale file not matched here fails
# the test (a figure whose settings, protocol or scoring changed under it); an exact path (no wildcard) that is no
# longer stale fails too, so the entry is removed when the file is regenerated.  Wildcards cover folders being re-run.
KNOWN_STALE: dict[str, str] = {}


def _doc_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_cited_tables_match_the_generated_files(doc):
    blocks = citations.cited_blocks(doc.read_text())
    for line, cited, lines in blocks:
        path = ROOT / cited
        assert path.is_file(), f"{_doc_id(doc)}:{line} cites {cited}, which does not exist"
        mismatch = citations.block_mismatch(lines, path.read_text())
        assert mismatch is None, f"{_doc_id(doc)}:{line} differs from {cited}: {mismatch}"
        stale = rp.stale_reasons(path)
        assert not stale, f"{_doc_id(doc)}:{line} cites {cited}, which is stale: {'; '.join(stale)}"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_no_number_is_retyped_outside_a_citation(doc):
    found = citations.number_outside_citations(doc.read_text())
    assert not found, (f"{_doc_id(doc)}: measured numbers outside a <!-- table: FILE --> citation (cite the "
                       f"generated table, or end a line that is no result with {citations.NOT_A_RESULT}):\n"
                       + "\n".join(f"  line {i}: {s.strip()[:160]}" for i, s in found))


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    text = "\n".join(lines)
    for link in ("docs/", "benchmarks/README.md"):
        assert link in text


@pytest.mark.parametrize("page", sorted(ROOT.glob("figures/**/RESULTS.md")), ids=_doc_id)
def test_results_pages_are_what_the_study_writes(page):
    profile = next(p for p in reversed(page.parent.relative_to(ROOT).parts) if p in rp.PROFILES)
    assert page.read_text() == rp.results_page(page.parent, profile), (
        f"{_doc_id(page)} is not what the study writes from the committed tables: "
        f"python -m mistudy.report.results_page {page.parent.relative_to(ROOT)}")


def _committed_outputs():
    for side in sorted(ROOT.glob("figures/**/*.provenance.json")):
        yield Path(str(side)[: -len(".provenance.json")])


def test_committed_figures_are_current_or_declared_stale():
    stale = {p.relative_to(ROOT).as_posix(): rp.stale_reasons(p) for p in _committed_outputs()}
    stale = {k: v for k, v in stale.items() if v}
    undeclared = {k: v for k, v in stale.items() if not any(fnmatch.fnmatch(k, pat) for pat in KNOWN_STALE)}
    assert not undeclared, "committed files out of date with the code or settings:\n" + "\n".join(
        f"  {k}: {'; '.join(v)}" for k, v in undeclared.items())
    for pattern in KNOWN_STALE:
        if not any(ch in pattern for ch in "*?["):
            assert pattern in stale, f"{pattern} is current now: remove it from KNOWN_STALE"
        else:
            matched = [p.relative_to(ROOT).as_posix() for p in _committed_outputs()
                       if fnmatch.fnmatch(p.relative_to(ROOT).as_posix(), pattern)]
            assert any(m in stale for m in matched), \
                f"{pattern}: every file it matches is current now (regenerated?): remove it from KNOWN_STALE"


# ------------------------------------------------------------------------ the checks on made-up files


def _write(tmp_path, rel, prov, text="x\n"):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    Path(str(path) + ".provenance.json").write_text(json.dumps(prov))
    return path


def test_stale_reasons_catch_settings_protocol_epochs_and_scoring(tmp_path):
    batch = rp.PROFILES["quick"]["batch_size"]
    settings = {k: rp.PROFILES["quick"][k] for k in ("batch_size", "lr", "crop_size")}
    assert rp.stale_reasons(_write(tmp_path, "levels.md", dict(profile="quick", settings=settings))) == []
    old = _write(tmp_path, "levels_old.md", dict(profile="quick", settings=dict(settings, batch_size=2 * batch)))
    assert any("batch_size" in r for r in rp.stale_reasons(old))
    proto = f"training: random 64 crops, batch {2 * batch}, Adam lr 0.001 (constant), 6 epochs"
    assert any("batch" in r for r in rp.stale_reasons(_write(tmp_path, "quick/a.md", dict(protocol=proto))))
    assert rp.stale_reasons(_write(tmp_path, "quick/b.md", dict(protocol=proto.replace(str(2 * batch), str(batch)))))\
        == []
    assert any("epochs" in r for r in rp.stale_reasons(_write(tmp_path, "quick/c.md", dict(epochs=[12]))))
    now = rp.SCORING_VERSION
    for prov, is_stale in ((dict(notebook="05_comparison.ipynb", date="2026-12-02T00:00:00+00:00"), True),
                           (dict(notebook="05_comparison.ipynb", date="2026-12-06T11:36:40+00:00"), False),
                           (dict(notebook="06_ablations.ipynb", scoring_version=[now - 1]), True),
                           (dict(notebook="06_ablations.ipynb", scoring_version=[now]), False)):
        assert bool(rp.stale_reasons(_write(tmp_path, "quick/d.md", prov))) == is_stale, prov


def test_a_changed_number_or_a_retyped_one_is_caught():
    table = "title\n\n| a | b |\n|---|---|\n| rmi | 0.221 [0.087, 0.354] |\n| mutual | 0.354 |\n"
    doc = "text\n<!-- table: t.md -->\n| a | b |\n|---|---|\n| mutual | 0.354 |\n<!-- /table -->\nmore\n"
    (_, cited, lines), = citations.cited_blocks(doc)
    assert cited == "t.md" and citations.block_mismatch(lines, table) is None
    assert "0.221" in citations.block_mismatch(["| rmi | 0.222 [0.087, 0.354] |"], table)
    assert citations.block_mismatch(["| mutual | 0.354 |", "| rmi | 0.221 [0.087, 0.354] |"], table)  # order kept
    assert citations.number_outside_citations(doc) == []
    assert [i for i, _ in citations.number_outside_citations(doc + "RMI reached 0.221 here.\n")] == [8]
    assert [i for i, _ in citations.number_outside_citations("Δ −0.32 [−0.45, −0.19]\n")] == [1]
    assert citations.number_outside_citations("the paper's 0.1965 " + citations.NOT_A_RESULT + "\n0.75% of 64 px\n") == []
    with pytest.raises(ValueError, match="not closed"):
        citations.cited_blocks("<!-- table: t.md -->\n| a |\n")


def test_results_page_embeds_the_tables_with_their_machine(tmp_path):
    d = tmp_path / "quick"
    d.mkdir()
    text = "caption\n\n| dataset | method (U-Net) vs baseline |\n|---|---|\n| synthetic | rmi |\n"
    (d / "comparison_by_selection_rule.md").write_text(text)
    provenance.write_provenance(d / "comparison_by_selection_rule.md", provenance.provenance(
        notebook="05_comparison.ipynb", device=["cpu"], amp=["off"], seed=[0, 1, 2], epochs=[6],
        scoring_version=[rp.SCORING_VERSION]))
    page = rp.write_results_page(d, "quick").read_text()
    assert "`python -m mistudy study --profile quick`" in page and "float32" in page and "current" in page
    assert provenance.cpu_model().split(",")[0] in page
    (_, cited, lines), = citations.cited_blocks(page)
    assert cited == "comparison_by_selection_rule.md" and citations.block_mismatch(lines, text) is None
    # a table another command makes (the pretraining's) is shown with that command, not the study's
    (d / "pretrain.md").write_text("caption\n\n| network |\n|---|\n| unet |\n")
    provenance.write_provenance(d / "pretrain.md", provenance.provenance(
        command="python -m mistudy pretrain --profile quick", device=["cpu"], amp=["off"]))
    page = rp.write_results_page(d, "quick").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| [pretrain.md]"))
    assert "`python -m mistudy pretrain --profile quick`" in row and "float32" in row and "current" in row
    assert "## The pretrained stand-ins" in page


def test_a_results_page_command_names_a_folder_other_than_the_profiles_own(tmp_path, monkeypatch):
    """Tables of a second precision live beside the profile's (figures/long/bf16/): their page's command must write
    them there (--figures-dir, relative to the project), and the profile's own folders (<profile>/, its tuned/)
    need no flag; wherever MISTUDY_FIGURES points (the nbval run sets it), the committed pages stay the same."""
    monkeypatch.setenv("MISTUDY_FIGURES", str(tmp_path / "elsewhere"))
    prov = provenance.provenance(notebook="05_comparison.ipynb", device=["cpu"], amp=["bf16"], seed=[0, 1, 2],
                                 epochs=[6], scoring_version=[rp.SCORING_VERSION])

    def command(folder):
        folder.mkdir(parents=True)
        (folder / "comparison_table.md").write_text("caption\n\n| dataset |\n|---|\n| synthetic |\n")
        provenance.write_provenance(folder / "comparison_table.md", prov)
        row = next(line for line in rp.results_page(folder, "quick").splitlines()
                   if line.startswith("| [comparison_table.md]"))
        return row.split("`")[1]

    assert command(tmp_path / "figures" / "quick") == "python -m mistudy study --profile quick"
    assert command(tmp_path / "figures" / "quick" / "tuned") == "python -m mistudy study --profile quick --recipe tuned"
    bf16 = tmp_path / "figures" / "quick" / "bf16"
    assert command(bf16) == f"python -m mistudy study --profile quick --figures-dir {bf16.resolve().as_posix()}"
    committed = rp.results_page(ROOT / "figures" / "long" / "bf16", "long")
    assert "`python -m mistudy study --profile long --figures-dir figures/long/bf16`" in committed
    assert "--figures-dir" not in rp.results_page(ROOT / "figures" / "long", "long")


def test_an_unchanged_file_keeps_its_sidecar_when_only_the_date_or_cpu_differ(tmp_path):
    path = tmp_path / "t.md"
    path.write_text("x")
    side = provenance.write_provenance(path, dict(provenance.provenance(a=1), date="2020-01-01", cpu="old"))
    before = side.read_text()
    provenance.write_provenance(path, provenance.provenance(a=1), content_changed=False)
    assert side.read_text() == before
    provenance.write_provenance(path, provenance.provenance(a=2), content_changed=False)
    assert json.loads(side.read_text())["a"] == 2
    # the same figure made in another clone: only the folders of its runs differ, so the sidecar stays
    side = provenance.write_provenance(path, dict(provenance.provenance(a=2), results_dir="/work/results/quick",
                                                  run_dir="/work/results/quick/synthetic/baseline/seed0"))
    before = side.read_text()
    provenance.write_provenance(path, dict(provenance.provenance(a=2), results_dir="/tmp/clone/results/quick",
                                           run_dir="/tmp/clone/results/quick/synthetic/baseline/seed0"),
                                content_changed=False)
    assert side.read_text() == before
