"""The use-case notebooks 02-04 as committed, and what 03 (RMI) and 04 (mutual learning) show beyond the baseline:
the RMI term's scale, each loss's terms over training, the partner beside the student."""

import json
import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from fakes import fake_run, scores

from mistudy.methods import infotheory
from mistudy.report import theory_plots, usecase, viz
from mistudy.training import runs

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
USE_CASE_NOTEBOOKS = ("02_baseline", "03_rmi", "04_mutual_learning")


def _read(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _paragraphs(nb):
    """The paragraphs of a notebook's markdown cells, whitespace normalised."""
    return [re.sub(r"\s+", " ", p).strip() for c in nb.cells if c.cell_type == "markdown"
            for p in c.source.split("\n\n") if p.strip()]


# ----------------------------------------------------------------------------- the notebooks as committed

@pytest.mark.parametrize("name", ["03_rmi", "04_mutual_learning"])
def test_rmi_and_mutual_notebooks_do_not_repeat_the_baselines_explanations(name):
    """The shared cells are explained once, in 02; 03 and 04 link to it and explain their method."""
    shared = [p for p in _paragraphs(_read("02_baseline")) if len(p) > 60 and not p.startswith("#")]
    assert len(shared) >= 5  # the explanations of 02 (a check that this test still reads what it means to)
    mine = _paragraphs(_read(name))
    repeated = [p[:70] for p in shared if any(p in q for q in mine)]
    assert not repeated, f"{name} repeats notebook 02 word for word: {repeated}"
    assert "[notebook 02](02_baseline.ipynb)" in _read(name).cells[0].source


@pytest.mark.parametrize("name", USE_CASE_NOTEBOOKS)
def test_use_case_notebooks_are_committed_without_outputs(name):
    """No output of whichever profile last ran them (the nbval run is tiny; the default is quick)."""
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
        assert "NBVAL_CHECK_OUTPUT" not in cell.source  # nothing to compare against


def test_rmi_and_mutual_notebooks_show_their_own_method():
    cells = {name: [c.source for c in _read(name).cells if c.cell_type == "code"][1:]  # after the parameters
             for name in ("03_rmi", "04_mutual_learning")}
    code = {name: "\n".join(sources) for name, sources in cells.items()}
    for call in ("report.loss_terms()", "report.rmi_examples()", "report.per_class(beside_baseline=True)"):
        assert call in code["03_rmi"]
    for call in ("report.loss_terms()", "report.partners()", "report.per_class(beside_baseline=True)"):
        assert call in code["04_mutual_learning"]
    for sources in cells.values():  # thin cells: the package computes, the notebook calls
        assert max(len(s.splitlines()) for s in sources) <= 7


# ----------------------------------------------------------------------------- RMI's scale

def test_rmi_floor_is_half_log_epsilon():
    """Oracle: a class absent from an image has Sigma_Y = 0, so Sigma_Y|P + eps I = eps I and the term is
    ½ ln(sqrt(eps) + 1e-8) * 2 = ½ ln eps (eps = 5e-4, the Cholesky diagonal's 1e-8 included)."""
    assert usecase.rmi_floor() == pytest.approx(math.log(math.sqrt(5e-4) + 1e-8), abs=1e-9)
    assert usecase.rmi_floor(5) == pytest.approx(usecase.rmi_floor(3), abs=1e-9)  # per dimension: any radius
    labels = np.zeros((8, 8))
    assert usecase.rmi_term(labels, np.random.default_rng(0).random((8, 8))) == pytest.approx(usecase.rmi_floor())


def test_rmi_term_falls_where_notebook_01s_bound_rises():
    rows = usecase.rmi_term_examples()
    term = [r["RMI term (nats/dim)"] for r in rows]
    bound = [r["bound (bits)"] for r in rows]
    assert term[0] == pytest.approx(usecase.rmi_floor()) and bound[0] is None  # the absent class
    assert term[1] > 0 > term[-1] > usecase.rmi_floor()  # noise positive, the truth near the floor
    assert all(a > b for a, b in zip(term[1:], term[2:]))  # more structure, lower term
    assert all(a < b for a, b in zip(bound[1:], bound[2:]))  # ... and a higher bound
    labels = theory_plots.toy_label_map(48)
    assert bound[-1] == pytest.approx(infotheory.rmi_bound_bits(labels, labels, 3))


def test_rmi_term_examples_do_not_depend_on_the_thread_count():
    """The committed RMI examples CSV must come out the same from a Ray task (one thread) and the sequential
    executor (two): unrounded, the float64 terms differed from the 12th digit (1.4181080857460937 on one thread,
    1.4181080857475625 on two)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = usecase.rmi_term_examples()
        torch.set_num_threads(2)
        two = usecase.rmi_term_examples()
    finally:
        torch.set_num_threads(threads)
    assert one == two
    assert all(r[k] == float(f"{r[k]:.10g}") for r in one for k in ("RMI term (nats/dim)", "bound (bits)")
               if r[k] is not None)


# ----------------------------------------------------------------------------- figures and tables

def _history(networks, parts, epochs=3):
    return [{"epoch": e, **{f"{n}/train_{p}": 1.0 / (e + k) for k, n in enumerate(networks) for p in parts},
             **{f"{n}/val_miou": 0.1 * e for n in networks if e != 2}}  # epoch 2 not validated (eval_every)
            for e in range(1, epochs + 1)]


def test_history_terms_one_panel_per_column_one_line_per_network():
    fig = viz.plot_history_terms(_history(["deeplabv3", "unet"], ["ce", "kl"]),
                                 {"val_miou": "mIoU", "train_kl": "KL", "train_rmi": "RMI"}, ["deeplabv3", "unet"],
                                 labels={"unet": "U-Net (student)"}, references={"train_kl": [(0.0, "0")]})
    miou, kl, rmi = fig.axes
    assert [line.get_label() for line in miou.lines] == ["deeplabv3", "U-Net (student)"]
    assert list(miou.lines[0].get_xdata()) == [1, 3]  # the epoch without a value is skipped
    assert len(kl.lines) == 3 and kl.lines[2].get_ydata()[0] == 0.0  # two networks and the reference
    assert not rmi.lines and "not in this run's history" in rmi.texts[0].get_text()
    with pytest.raises(ValueError, match="empty"):
        viz.plot_history_terms([], {"train_kl": "KL"}, ["unet"])
    with pytest.raises(ValueError, match="no panels"):
        viz.plot_history_terms(_history(["unet"], ["ce"]), {}, ["unet"])


def _finished(monkeypatch, tmp_path, use_case, networks, history, per_class):
    """A report whose run is a hand-made finished run directory (train() loads it instead of training)."""
    run = fake_run(tmp_path / "results", "synthetic", use_case, 0, scores(0.8, 0.4, per_class, boundary_f=0.5,
                                                                            ece=0.1), networks=networks)
    (run / "history.json").write_text(json.dumps(history))
    monkeypatch.setattr(usecase, "train_or_load", lambda cfg: {**runs.load_metrics(run), "run_dir": str(run)})
    report = usecase.UseCaseReport.for_notebook(use_case, "tiny", None, tmp_path / "results", tmp_path / "figures",
                                                seed=0, device="cpu")
    report.train()
    return report


def test_rmi_report_shows_its_terms_and_the_baseline_beside_it(monkeypatch, tmp_path, capsys):
    per_class = [0.9, 0.5, None, None, 0.2, None, 0.1]
    report = _finished(monkeypatch, tmp_path, "rmi", ("unet",), _history(["unet"], ["loss", "bce", "rmi"]), per_class)
    fig = report.loss_terms()
    assert [len(ax.lines) for ax in fig.axes] == [2, 1, 2]  # total and RMI with their zero line
    assert (tmp_path / "figures" / "synthetic_03_rmi_seed0_loss_terms.png").is_file()
    table, _ = report.per_class(beside_baseline=True)
    assert "no finished baseline run" in capsys.readouterr().out
    assert "baseline unet IoU" not in table.rows[0]
    fake_run(tmp_path / "results", "synthetic", "baseline", 0, scores(0.9, 0.6, [0.95, 0.7, None, None, 0.4, None,
                                                                                  0.3], boundary_f=0.7))
    table, fig = report.per_class(beside_baseline=True)
    assert [r["baseline unet IoU"] for r in table.rows] == [0.95, 0.7, None, None, 0.4, None, 0.3]
    assert [r["unet IoU"] for r in table.rows] == per_class
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [t for t in legend if t.startswith("U-Net")] == ["U-Net, rmi", "U-Net, baseline"], legend
    assert report.rmi_examples().rows == usecase.rmi_term_examples(seed=0)


def test_mutual_report_sets_the_partner_beside_the_student_and_the_unet_alone(monkeypatch, tmp_path, capsys):
    per_class = [0.9, 0.5, None, None, 0.2, None, 0.1]
    report = _finished(monkeypatch, tmp_path, "mutual", ("deeplabv3", "unet"),
                       _history(["deeplabv3", "unet"], ["loss", "ce", "kl"]), per_class)
    fig = report.loss_terms()
    assert [ax.get_title() for ax in fig.axes][2].startswith("KL(p_other")
    assert [line.get_label() for line in fig.axes[2].lines] == ["DeepLabV3 (partner)", "U-Net (student)"]
    table = report.partners()
    assert [r["network"] for r in table.rows] == ["DeepLabV3 (partner)", "U-Net (student)"]
    assert "no finished baseline run" in capsys.readouterr().out
    fake_run(tmp_path / "results", "synthetic", "baseline", 0, scores(0.9, 0.6, per_class, boundary_f=0.7))
    rows = report.partners().rows
    assert rows[-1]["network"] == "U-Net alone (baseline, same seed)"
    assert (rows[0]["mIoU"], rows[-1]["mIoU"], rows[-1]["boundary F"]) == (0.4, 0.6, 0.7)
    assert (tmp_path / "figures" / "synthetic_04_mutual_learning_seed0_networks.md").is_file()
    _, fig = report.per_class(beside_baseline=True)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [t for t in legend if t.startswith(("U-Net", "DeepLabV3"))] == [
        "DeepLabV3 (partner)", "U-Net (student)", "U-Net, baseline"], legend
