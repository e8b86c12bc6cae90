"""Tables of the study: the paper's numbers, seeds with intervals, paired differences, missing runs, table files."""

import csv
import io
import json

import numpy as np
import pytest
from fakes import fake_run, scores, statistics
from oracles import miou_from_counts
from scipy import stats as sps

from mistudy.io import tables
from mistudy.methods import stats
from mistudy.methods.metrics import miou_from_confmat
from mistudy.report import comparison, usecase
from mistudy.training import runs
from mistudy.training.config import TrainConfig
from mistudy.training.train import train

_scores = scores


def _row(rows, dataset, use_case, network="unet"):
    found = [r for r in rows if (r["dataset"], r["use_case"], r["network"]) == (dataset, use_case, network)]
    assert len(found) == 1, found
    return found[0]


def test_paper_numbers_are_the_papers_tables():
    # Tables 1-3 of the paper: (IoU, accuracy) for Cityscapes and PASCAL VOC 2012.
    expected = {("baseline", "cityscapes"): (0.5931, 0.9388), ("baseline", "voc"): (0.1965, 0.7367),
                ("rmi", "cityscapes"): (0.5244, 0.9345), ("rmi", "voc"): (0.0607, 0.6893),
                ("mutual", "cityscapes"): (0.5619, 0.9342), ("mutual", "voc"): (0.2203, 0.7539)}
    got = {k: (v["miou"], v["pixel_accuracy"]) for k, v in comparison.PAPER_RESULTS.items()}
    assert got == expected
    assert comparison.PAPER_TABLE_NUMBER == {"baseline": 1, "rmi": 2, "mutual": 3}
    # its text's verdicts: on Cityscapes neither method "significantly" changes the result (not "worse")
    assert comparison.paper_claim("mutual", "cityscapes") == ('"does not significantly change" (its text); mIoU 0.562 '
                                                              'vs 0.593, -0.031 (Table 3, single runs)')
    assert comparison.paper_claim("rmi", "voc").startswith('"achieves worse results"')
    assert comparison.paper_claim("mutual", "voc").startswith('"achieves the best result"')
    assert comparison.paper_claim("baseline", "voc") is None and comparison.paper_claim("rmi", "synthetic") is None


def test_seeds_are_aggregated_and_missing_datasets_noted(tmp_path):
    accs, mious = [0.80, 0.84, 0.86], [0.30, 0.36, 0.33]
    for seed, (a, m) in enumerate(zip(accs, mious)):
        fake_run(tmp_path, "synthetic", "baseline", seed, _scores(a, m))
    fake_run(tmp_path, "synthetic", "rmi", 0, _scores(0.7, 0.2))
    fake_run(tmp_path, "synthetic", "mutual", 0, _scores(0.9, 0.4), networks=("deeplabv3", "unet"))
    fake_run(tmp_path, "voc", "baseline", 0, _scores(0.75, 0.21))

    rows, notes = comparison.comparison(tmp_path)
    base = _row(rows, "synthetic", "baseline")
    assert base["n_seeds"] == 3 and base["seeds"] == "0 1 2"
    assert base["pixel_accuracy_mean"] == pytest.approx(np.mean(accs))
    assert base["pixel_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    low, high = sps.t.interval(0.95, 2, loc=np.mean(mious), scale=sps.sem(mious))
    assert (base["miou_low"], base["miou_high"]) == (pytest.approx(low), pytest.approx(high))
    assert base["miou_mean"] == pytest.approx(np.mean(mious))
    assert base["iou_micro_mean"] == pytest.approx(np.mean([a / (2 - a) for a in accs]))
    assert base["paper_iou"] is None  # the paper has no synthetic data
    rmi = _row(rows, "synthetic", "rmi")
    assert rmi["miou_std"] is None and rmi["miou_low"] is None  # one seed: no interval
    assert rmi["miou_diff"] is None and rmi["verdict"] is None  # no per-image scores: no paired difference
    # mutual learning: both networks, U-Net (the paper's student) first
    mutual = [r for r in rows if r["use_case"] == "mutual" and r["dataset"] == "synthetic"]
    assert [r["network"] for r in mutual] == ["unet", "deeplabv3"]
    # VOC: our baseline beside Table 1; rmi and mutual keep the paper's numbers with no runs
    voc = _row(rows, "voc", "baseline")
    assert (voc["miou_mean"], voc["paper_iou"], voc["paper_accuracy"], voc["paper_table"]) == (0.21, 0.1965, 0.7367, 1)
    assert _row(rows, "voc", "mutual")["n_seeds"] == 0
    assert _row(rows, "voc", "mutual")["paper_iou"] == 0.2203
    assert _row(rows, "cityscapes", "rmi")["paper_accuracy"] == 0.9345
    assert any("cityscapes" in n and "no finished runs" in n for n in notes)
    assert any(n.startswith("voc") and "rmi, mutual" in n for n in notes)
    assert not any(n.startswith("synthetic") for n in notes)


def test_empty_results_dir_gives_paper_rows_and_notes(tmp_path):
    rows, notes = comparison.comparison(tmp_path / "nothing-here", ["synthetic", "voc"])
    assert [(r["dataset"], r["use_case"]) for r in rows] == [("voc", "baseline"), ("voc", "rmi"), ("voc", "mutual")]
    assert all(r["n_seeds"] == 0 and r.get("miou_mean") is None for r in rows)
    assert len(notes) == 2
    md = tables.markdown_table(comparison.format_comparison(rows))
    assert "0.1965" in md and "| – |" in md


def test_runs_differing_in_more_than_the_seed_are_not_averaged(tmp_path):
    fake_run(tmp_path, "synthetic", "baseline", 0, _scores(0.8, 0.3), epochs=2)
    fake_run(tmp_path, "synthetic", "baseline", 1, _scores(0.8, 0.5), epochs=2)
    fake_run(tmp_path, "synthetic", "baseline", 0, _scores(0.9, 0.6), epochs=10, name="long")
    rows, _ = comparison.comparison(tmp_path, ["synthetic"])
    by_epochs = {r["epochs"]: r for r in rows}
    assert by_epochs[2]["n_seeds"] == 2 and by_epochs[2]["miou_mean"] == pytest.approx(0.4)
    assert by_epochs[10]["n_seeds"] == 1 and by_epochs[10]["miou_mean"] == 0.6
    assert by_epochs[10]["setting"] == "epochs=10"
    # figures use the setting with the most seeds, lowest seed first
    assert [r["config"]["seed"] for r in comparison.runs_for(tmp_path, "synthetic", "baseline")] == [0, 1]
    assert comparison.runs_for(tmp_path, "synthetic", "rmi") == []


def test_bad_arguments_and_broken_runs(tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        comparison.comparison(tmp_path, checkpoint="best")
    with pytest.raises(ValueError, match="imagenet"):
        comparison.comparison(tmp_path, ["imagenet"])
    run = fake_run(tmp_path, "synthetic", "rmi", 0, _scores(0.8, 0.3))
    (run / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        comparison.comparison(tmp_path, ["synthetic"])
    (run / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        comparison.comparison(tmp_path, ["synthetic"])


def test_markdown_and_csv_cells():
    rows = [{"a": 0.123456, "b": None, "c": "x|y"}, {"a": float("nan"), "b": 3, "c": ""}]
    md = tables.markdown_table(rows).splitlines()
    assert md[0] == "| a | b | c |" and md[2] == "| 0.1235 | – | x\\|y |" and md[3] == "| – | 3 |  |"
    back = list(csv.DictReader(io.StringIO(tables.csv_text(rows))))
    assert back[0] == {"a": "0.123456", "b": "", "c": "x|y"}  # full precision, None empty


def test_write_table_writes_csv_md_and_provenance(tmp_path):
    rows = [{"checkpoint": "last", "miou": 0.25}]
    csv_path, md_path = tables.write_table(rows, tmp_path / "out" / "t.csv", {"dataset": "synthetic", "seed": 3},
                                            title="A title")
    assert (csv_path.name, md_path.name) == ("t.csv", "t.md")
    assert csv_path.read_text() == "checkpoint,miou\nlast,0.25\n"
    assert md_path.read_text().startswith("A title\n\n| checkpoint | miou |")
    for p in (csv_path, md_path):
        prov = json.loads((p.parent / (p.name + ".provenance.json")).read_text())
        assert prov["dataset"] == "synthetic" and prov["seed"] == 3 and prov["package"].startswith("mistudy")
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == [
        "t.csv", "t.csv.provenance.json", "t.md", "t.md.provenance.json"]  # no temporary files left


def test_tables_of_a_real_run(tmp_path):
    """The helpers read what mistudy.training.train really writes (not only hand-made fixtures)."""
    cfg = TrainConfig(dataset="synthetic", train_samples=6, val_samples=4, resize_size=36, crop_size=32,
                      unet_features=4, epochs=2, batch_size=3, device="cpu", progress="none",
                      results_dir=str(tmp_path))
    summary = train(cfg)
    rows = usecase.metrics_rows(summary)
    assert [r["checkpoint"] for r in rows] == ["last", "best_loss", "best_miou"]
    assert rows[2]["miou"] == summary["networks"]["unet"]["best_miou"]["miou"]
    per_class = usecase.per_class_rows(summary, [f"c{i}" for i in range(7)])
    assert [r["unet IoU"] for r in per_class] == summary["networks"]["unet"]["best_miou"]["iou_per_class"]
    with pytest.raises(ValueError, match="deeplabv3"):
        usecase.metrics_rows(summary, "deeplabv3")
    with pytest.raises(ValueError, match="class names"):
        usecase.per_class_rows(summary, ["only", "two"])
    table, _ = comparison.comparison(tmp_path, ["synthetic"], checkpoint="last")
    row = _row(table, "synthetic", "baseline")
    assert row["n_seeds"] == 1 and row["pixel_accuracy_mean"] == summary["networks"]["unet"]["last"]["pixel_accuracy"]
    # the protocol sentence names what the numbers depend on
    for words in ("synthetic (easy level)", "6 train / 2 selection / 4 validation images", "random 32 crops",
                  "batch 3", "Adam lr 0.001", "2 epochs", "ImageNet normalisation", "random init", "centre 32 crop",
                  "1 pass", "checkpoint last"):
        assert words in row["protocol"], (words, row["protocol"])
    # a BCE-trained (rmi) run is scored through its own sigmoids, with the softmax reading beside; both paired
    rmi_summary = train(cfg.replace(use_case="rmi"))
    own = rmi_summary["networks"]["unet"]["last"]
    assert own["probabilities"] == "sigmoid" and own["ece"] != own["ece_softmax"]
    assert summary["networks"]["unet"]["last"]["ece"] == summary["networks"]["unet"]["last"]["ece_softmax"]
    table, _ = comparison.comparison(tmp_path, ["synthetic"], checkpoint="last")
    rmi = _row(table, "synthetic", "rmi")
    assert rmi["ece_mean"] == pytest.approx(own["ece"]) and rmi["ece_softmax_mean"] == pytest.approx(own["ece_softmax"])
    assert rmi["ece_diff"] is not None and rmi["ece_softmax_diff"] is not None
    assert rmi["mean_entropy_bits_softmax_diff"] is not None
    # the boundary tolerance in pixels at the scored size (0.75% of a 32 x 32 diagonal is 0.34 px: 1 px)
    assert rmi["boundary_tolerance"].startswith("1 px at 32x32 (max(1 px, 0.75% of the image diagonal)")
    headers = comparison.format_extra(table)[1]
    assert "ECE (own probabilities)" in headers and "Δ ECE (softmax reading)" in headers



def test_paired_difference_against_the_baseline_of_the_same_seeds(tmp_path):
    rng = np.random.default_rng(0)
    base, good = {}, {}
    for seed in (0, 1, 2):
        base[seed], good[seed] = statistics(rng, 12, 0.5), statistics(rng, 12, 0.95)
        fake_run(tmp_path, "synthetic", "baseline", seed, _scores(0.5, 0.3), counts=base[seed])
        fake_run(tmp_path, "synthetic", "rmi", seed, _scores(0.9, 0.8), counts=good[seed])
        fake_run(tmp_path, "synthetic", "mutual", seed, _scores(0.5, 0.3), counts=base[seed],
                 networks=("deeplabv3", "unet"))
    fake_run(tmp_path, "synthetic", "rmi", 3, _scores(0.9, 0.8), counts=good[0])  # no baseline with seed 3
    rows, _ = comparison.comparison(tmp_path, ["synthetic"])
    rmi = _row(rows, "synthetic", "rmi")
    expected = np.mean([miou_from_counts(*(good[s][k].sum(0) for k in ("tp", "fp", "fn")))
                        - miou_from_counts(*(base[s][k].sum(0) for k in ("tp", "fp", "fn"))) for s in (0, 1, 2)])
    assert rmi["n_seeds"] == 4 and rmi["miou_diff"] == pytest.approx(expected)  # paired on seeds 0-2 only
    assert rmi["miou_diff_low"] > 0 and rmi["verdict"] == "better"
    mutual = _row(rows, "synthetic", "mutual")  # identical predictions to the baseline: exactly no difference
    assert (mutual["miou_diff"], mutual["miou_diff_low"], mutual["miou_diff_high"]) == (0.0, 0.0, 0.0)
    assert mutual["verdict"] == "no detectable difference at n = 3"
    assert _row(rows, "synthetic", "mutual", "deeplabv3")["miou_diff"] is None  # the teacher is not paired
    assert _row(rows, "synthetic", "baseline")["miou_diff"] is None
    md = tables.markdown_table(comparison.format_comparison(rows))
    assert f"{expected:+.3f} [" in md and "| better |" in md
    lines = comparison.summary_lines(rows)
    assert any(line.startswith("synthetic, rmi vs baseline, n = 4 seeds: mIoU +") and "(better)" in line
               for line in lines)
    title = comparison.comparison_title(rows, "best_miou")
    assert "Student-t" in title and "jackknife over validation images" in title and "Protocol, synthetic:" in title
    # the interval is the package's seed-and-image interval of the same per-image statistics
    cms = [np.stack([c[s]["confmat"] for s in (0, 1, 2)]) for c in (good, base)]
    direct, images_only = stats.paired_difference(*cms, miou_from_confmat)
    assert (rmi["miou_diff_low"], rmi["miou_diff_high"]) == (pytest.approx(direct.low), pytest.approx(direct.high))
    assert rmi["miou_diff_images_low"] == pytest.approx(images_only.low) and rmi["miou_diff_p"] < 0.05


def test_runs_of_another_length_are_not_paired(tmp_path):
    rng = np.random.default_rng(1)
    counts = statistics(rng, 6, 0.7)
    fake_run(tmp_path, "synthetic", "baseline", 0, _scores(0.5, 0.3), epochs=2, counts=counts)
    fake_run(tmp_path, "synthetic", "rmi", 0, _scores(0.5, 0.3), epochs=5, counts=counts)
    rows, _ = comparison.comparison(tmp_path, ["synthetic"])
    assert _row(rows, "synthetic", "rmi")["miou_diff"] is None


def test_runs_scored_at_another_cadence_are_another_setting_and_not_paired(tmp_path):
    """eval_every changes what best_miou can choose among (and mutual learning's dropout stream): runs that differ
    in it are two settings, and a method is paired only with a baseline scored at its cadence."""
    rng = np.random.default_rng(2)
    counts = statistics(rng, 6, 0.7)
    fake_run(tmp_path, "synthetic", "baseline", 0, _scores(0.5, 0.3), epochs=4, counts=counts)
    fake_run(tmp_path, "synthetic", "rmi", 0, _scores(0.5, 0.3), epochs=4, counts=counts, eval_every=2)
    fake_run(tmp_path, "synthetic", "rmi", 1, _scores(0.5, 0.3), epochs=4, counts=counts, eval_every=1)
    groups = comparison.group_by_setting(comparison.find_and_load(tmp_path, "synthetic", "rmi"))
    assert sorted(len(g) for g in groups) == [1, 1]
    rows, _ = comparison.comparison(tmp_path, ["synthetic"])
    assert all(r["miou_diff"] is None for r in rows if r["use_case"] == "rmi")  # seed 1's baseline is missing


def test_scores_beyond_miou_are_paired_over_seeds_and_images(tmp_path):
    """Boundary F (a per-image score) paired over seeds and images, against a hand computation: the per-seed
    differences' variance / S (S - 1 df) plus the variance of the seed-averaged per-image differences / N (N - 1 df),
    with Cochran and Cox's critical value."""
    rng = np.random.default_rng(4)
    images = 8
    base_f = rng.uniform(0.4, 0.6, (3, images))
    rmi_f = base_f + 0.1 + rng.normal(0, 0.02, (3, images))
    for seed in range(3):
        stats_base, stats_rmi = statistics(rng, images, 0.6), statistics(rng, images, 0.6)
        stats_base["boundary_f"], stats_rmi["boundary_f"] = base_f[seed], rmi_f[seed]
        fake_run(tmp_path, "synthetic", "baseline", seed, _scores(0.5, 0.3), counts=stats_base)
        fake_run(tmp_path, "synthetic", "rmi", seed, _scores(0.5, 0.3), counts=stats_rmi)
    rows, _ = comparison.comparison(tmp_path, ["synthetic"])
    rmi = _row(rows, "synthetic", "rmi")
    d = rmi_f - base_f
    seed_part, image_part = d.mean(1).var(ddof=1) / 3, d.mean(0).var(ddof=1) / images
    crit = (seed_part * sps.t.ppf(0.975, 2) + image_part * sps.t.ppf(0.975, images - 1)) / (seed_part + image_part)
    half = crit * np.sqrt(seed_part + image_part)
    assert rmi["boundary_f_diff"] == pytest.approx(d.mean())
    assert (rmi["boundary_f_diff_low"], rmi["boundary_f_diff_high"]) == (pytest.approx(d.mean() - half),
                                                                         pytest.approx(d.mean() + half))
    assert rmi["boundary_f_verdict"] == "better"
    assert rmi["ece_diff"] is None  # no probabilities in these statistics: no calibration to compare
    extra = comparison.format_extra(rows)
    assert extra[1]["use-case"] == "rmi" and extra[1]["Δ boundary F"].startswith(f"{d.mean():+.3f} [")
    comparison.write_comparison(rows, tmp_path / "figs" / "comparison_table")
    beyond = (tmp_path / "figs" / "comparison_table_beyond_miou.md").read_text()
    assert beyond.count("| synthetic |") == 2 and "Csurka" in beyond  # the fake runs' crop: the default 224
    assert "2.38 px at 224x224 (max(1 px, 0.75% of the image diagonal))" in beyond
    assert "sigmoid" in beyond and "softmax reading" in beyond
    assert "Protocol, synthetic: " in beyond and "precision" in beyond  # the precision named here too (issue 22)
    assert any(f"boundary F {d.mean():+.3f} [" in line and "(better)" in line for line in comparison.summary_lines(rows))


def test_comparison_provenance_names_the_device_the_runs_ran_on(tmp_path):
    # config.json keeps what was asked for ("auto"); metrics.json the device resolved at run time.
    for seed, device in enumerate(["cpu", "cuda:0", "cpu"]):
        run = fake_run(tmp_path, "synthetic", "baseline", seed, _scores(0.8, 0.3), epochs=3)
        metrics = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**metrics, "device": device}))
    assert json.loads((tmp_path / "synthetic/baseline/seed0/config.json").read_text())["device"] == "auto"
    prov = comparison.comparison_provenance(tmp_path, ["synthetic", "voc"], "best_miou")
    assert prov["device"] == ["cpu", "cuda:0"]
    assert (prov["epochs"], prov["seed"], prov["datasets"]) == ([3], [0, 1, 2], ["synthetic"])
    assert prov["amp"] == [TrainConfig(dataset="synthetic").amp]


def test_verdicts_under_every_selection_rule_and_robust_only_where_they_agree(tmp_path):
    """RMI better under best_miou, not detectably different under best_loss, worse under last: its verdict depends on
    the rule and the table says so; mutual learning identical to the baseline under every rule: robust."""
    rng = np.random.default_rng(3)
    for seed in range(3):
        base = statistics(rng, 12, 0.6)
        by_rule = {"best_miou": statistics(rng, 12, 0.95), "best_loss": base, "last": statistics(rng, 12, 0.2)}
        fake_run(tmp_path, "synthetic", "baseline", seed, _scores(0.5, 0.3), counts=base)
        run = fake_run(tmp_path, "synthetic", "rmi", seed, _scores(0.5, 0.3), counts=base)
        runs.write_per_image(run, {f"unet/{rule}": c for rule, c in by_rule.items()}, list(range(12)))
        fake_run(tmp_path, "synthetic", "mutual", seed, _scores(0.5, 0.3), counts=base, networks=("deeplabv3", "unet"))
    rows = {r["method (U-Net) vs baseline"]: r for r in comparison.verdicts_by_rule(tmp_path, ["synthetic"])}
    assert set(rows) == {"rmi", "mutual"}
    rmi = rows["rmi"]
    assert rmi["best_miou (headline): Δ mIoU [95%] verdict"].endswith(" better")
    assert rmi["best_loss: Δ mIoU [95%] verdict"] == "+0.000 [+0.000, +0.000] no detectable difference at n = 3"
    assert rmi["last: Δ mIoU [95%] verdict"].endswith(" worse")
    assert rmi["across the rules"] == ("depends on the rule: best_miou better, best_loss no detectable difference at "
                                       "n = 3, last worse")
    assert rows["mutual"]["across the rules"] == "robust: no detectable difference at n = 3 under every rule"
    assert "headline rule best_miou, declared before the runs" in comparison.by_rule_title()
    # beside each verdict, how strong the networks it compares are: the partner beside its student
    table = {(r["use_case"], r["network"]): r for r in comparison.comparison(tmp_path, ["synthetic"], "best_miou")[0]}

    def ci(r):
        return f"{r['miou_mean']:.3f} [{r['miou_low']:.3f}, {r['miou_high']:.3f}]"

    base = ci(table[("baseline", "unet")])
    assert rows["mutual"]["mIoU [95% CI] under the headline rule"] == (
        f"student {ci(table[('mutual', 'unet')])}; partner (DeepLabV3) {ci(table[('mutual', 'deeplabv3')])}; "
        f"baseline {base}")
    assert rows["rmi"]["mIoU [95% CI] under the headline rule"] == f"rmi {ci(table[('rmi', 'unet')])}; baseline {base}"


def test_a_verdict_is_adjusted_for_the_methods_compared_with_the_same_baseline():
    """Holm over a dataset's comparisons, hand-derived: p = 0.03 and 0.09 adjust to 0.06 and 0.09, so the first
    method's "worse" does not hold once two methods are compared; p = 0.01 and 0.04 adjust to 0.02 and 0.04 and both
    hold.  The partner and the baseline are not comparisons, and a row without a p-value (one seed) is not counted."""
    def method(use_case, p, low, high, verdict):
        return {"use_case": use_case, "network": "unet", "n_seeds": 5, "miou_diff": (low + high) / 2,
                "miou_diff_low": low, "miou_diff_high": high, "miou_diff_p": p, "verdict": verdict}

    rows = [{"use_case": "baseline", "network": "unet", "miou_diff_p": None},
            method("rmi", 0.03, -0.09, -0.01, "worse"),
            method("mutual", 0.09, -0.10, +0.01, "no detectable difference at n = 5"),
            {"use_case": "mutual", "network": "deeplabv3", "miou_diff_p": None},
            {"use_case": "rmi", "network": "unet", "n_seeds": 1, "miou_diff_p": None, "verdict": None}]
    comparison.adjust_for_the_family(rows)
    rmi, mutual = rows[1], rows[2]
    assert (rmi["miou_diff_holm"], mutual["miou_diff_holm"]) == (pytest.approx(0.06), pytest.approx(0.09))
    assert rmi["holm_tests"] == mutual["holm_tests"] == 2
    assert rmi["verdict_holm"] == mutual["verdict_holm"] == "no detectable difference at n = 5"
    assert comparison.holm_note(rmi) == "; after Holm (2 comparisons): no detectable difference at n = 5"
    assert comparison.holm_note(mutual) == ""  # unchanged: nothing to add
    assert "verdict_holm" not in rows[0] and "verdict_holm" not in rows[3] and "verdict_holm" not in rows[4]
    held = [method("rmi", 0.01, -0.09, -0.02, "worse"), method("mutual", 0.04, +0.01, +0.08, "better")]
    comparison.adjust_for_the_family(held)
    assert [r["verdict_holm"] for r in held] == ["worse", "better"]
    assert [r["miou_diff_holm"] for r in held] == [pytest.approx(0.02), pytest.approx(0.04)]


def test_the_family_is_one_baseline_in_the_tables(tmp_path):
    """Each dataset's comparisons with its baseline are adjusted among themselves (two here), and every table shows
    the adjusted verdict: the comparison table's column, the rule-by-rule table's last column."""
    rng = np.random.default_rng(6)
    for dataset in ("synthetic", "voc"):
        for seed in range(3):
            base = statistics(rng, 12, 0.6)
            fake_run(tmp_path, dataset, "baseline", seed, _scores(0.5, 0.3), counts=base)
            fake_run(tmp_path, dataset, "rmi", seed, _scores(0.5, 0.3), counts=statistics(rng, 12, 0.4))
            fake_run(tmp_path, dataset, "mutual", seed, _scores(0.5, 0.3), counts=statistics(rng, 12, 0.6),
                     networks=("deeplabv3", "unet"))
    rows = comparison.comparison(tmp_path, ["synthetic", "voc"])[0]
    for dataset in ("synthetic", "voc"):
        family = [_row(rows, dataset, uc) for uc in ("rmi", "mutual")]
        low, high = sorted(r["miou_diff_p"] for r in family)  # Holm for two tests, by hand
        expected = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), high)}
        assert [r["miou_diff_holm"] for r in family] == pytest.approx([expected[r["miou_diff_p"]] for r in family])
        assert [r["holm_tests"] for r in family] == [2, 2]
    cells = {(c["dataset"], c["use-case"], c["network"]): c for c in comparison.format_comparison(rows)}
    rmi = _row(rows, "voc", "rmi")
    assert cells[("voc", "rmi", "U-Net")]["verdict after Holm"] == f"{rmi['verdict_holm']} (2 comparisons)"
    assert cells[("voc", "baseline", "U-Net")]["verdict after Holm"] == "–"
    by_rule = {(r["dataset"], r["method (U-Net) vs baseline"]): r for r in comparison.verdicts_by_rule(tmp_path)}
    verdict = rmi["verdict_holm"]  # the fakes score every rule alike: one verdict under the three
    assert by_rule[("voc", "rmi")]["across the rules, after Holm"] == f"robust: {verdict} under every rule (2 comparisons)"


def test_runs_of_another_length_are_another_family(tmp_path):
    """A results folder holding 2-epoch and 4-epoch runs (a long profile's runs extended one by one): RMI at 4 epochs
    is paired with the 4-epoch baseline and is its only comparison, so Holm leaves its p-value as it is; at 2 epochs
    RMI and mutual learning form a family of two.  One method alone reads "1 comparison"."""
    rng = np.random.default_rng(7)
    for seed in range(3):
        for epochs in (2, 4):
            fake_run(tmp_path, "synthetic", "baseline", seed, _scores(0.5, 0.3), counts=statistics(rng, 12, 0.6),
                     epochs=epochs, name=f"e{epochs}s{seed}")
            fake_run(tmp_path, "synthetic", "rmi", seed, _scores(0.5, 0.3), counts=statistics(rng, 12, 0.45),
                     epochs=epochs, name=f"e{epochs}s{seed}")
        fake_run(tmp_path, "synthetic", "mutual", seed, _scores(0.5, 0.3), counts=statistics(rng, 12, 0.5),
                 networks=("deeplabv3", "unet"), epochs=2)
    rows = comparison.comparison(tmp_path, ["synthetic"])[0]
    by = {(r["use_case"], r["epochs"]): r for r in rows if r["network"] == "unet" and r["use_case"] != "baseline"}
    assert set(by) == {("rmi", 2), ("rmi", 4), ("mutual", 2)}
    assert by[("rmi", 4)]["holm_tests"] == 1
    assert by[("rmi", 4)]["miou_diff_holm"] == pytest.approx(by[("rmi", 4)]["miou_diff_p"])
    assert by[("rmi", 2)]["holm_tests"] == by[("mutual", 2)]["holm_tests"] == 2
    cell = next(c for c in comparison.format_comparison(rows) if c["use-case"] == "rmi" and c["epochs"] == 4)
    assert cell["verdict after Holm"].endswith("(1 comparison)")


def test_the_networks_beside_a_verdict_are_those_of_its_own_length(tmp_path):
    """One results folder with baselines of two lengths (a long profile's runs extended one by one): the strength
    shown beside RMI's 2-epoch verdict is the 2-epoch baseline's, the one its difference is paired with."""
    rng = np.random.default_rng(4)
    for seed in range(3):
        short, long_ = statistics(rng, 12, 0.3), statistics(rng, 12, 0.9)
        fake_run(tmp_path, "synthetic", "baseline", seed, _scores(0.5, 0.3), counts=short, epochs=2, name=f"s{seed}")
        fake_run(tmp_path, "synthetic", "baseline", seed, _scores(0.9, 0.8), counts=long_, epochs=4, name=f"l{seed}")
        fake_run(tmp_path, "synthetic", "rmi", seed, _scores(0.5, 0.3), counts=short, epochs=2)
    table = comparison.comparison(tmp_path, ["synthetic"], "best_miou")[0]
    base = next(r for r in table if r["use_case"] == "baseline" and r["epochs"] == 2)
    assert [r["miou_diff"] for r in table if r["use_case"] == "rmi"] == [0.0]  # paired with the 2-epoch runs
    cell = comparison.verdicts_by_rule(tmp_path, ["synthetic"])[0]["mIoU [95% CI] under the headline rule"]
    assert cell == f"rmi 0.300 [0.300, 0.300]; baseline {base['miou_mean']:.3f} [{base['miou_low']:.3f}, " \
                   f"{base['miou_high']:.3f}]"


def test_a_seed_that_failed_to_take_off_is_named_beside_the_mean(tmp_path):
    """Five seeds, four where RMI is as good as the baseline and one (seed 3) where it failed: the mean's interval
    alone would hide that the typical run is not worse; the table names the seed and the sign count."""
    rng = np.random.default_rng(5)
    for seed in range(5):
        base = statistics(rng, 12, 0.9)
        fake_run(tmp_path, "synthetic", "baseline", seed, _scores(0.5, 0.3), counts=base)
        fake_run(tmp_path, "synthetic", "rmi", seed, _scores(0.5, 0.3),
                 counts=statistics(rng, 12, 0.1) if seed == 3 else base)
    rows, _ = comparison.comparison(tmp_path, ["synthetic"])
    rmi = _row(rows, "synthetic", "rmi")
    assert rmi["outlier_seeds"] == "3"
    assert rmi["seeds_check"].startswith("0 of 5 seeds better, 1 worse") and "seed 3 an outlier" in rmi["seeds_check"]
    assert comparison.format_comparison(rows)[1]["seed by seed"] == rmi["seeds_check"]
    assert _row(rows, "synthetic", "baseline")["seeds_check"] is None


def test_a_table_never_mixes_runs_scored_under_two_definitions(tmp_path):
    rng = np.random.default_rng(6)
    for seed in range(2):
        fake_run(tmp_path, "synthetic", "baseline", seed, _scores(0.5, 0.3), counts=statistics(rng, 6, 0.6))
    metrics = tmp_path / "synthetic" / "baseline" / "seed1" / "metrics.json"
    old = json.loads(metrics.read_text())
    del old["scoring_version"]  # a run scored before versions were kept: softmax ECE, 0.68-px boundary tolerance
    metrics.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"1 run\(s\) were scored under an older version .*seed1: score them again"):
        comparison.comparison(tmp_path, ["synthetic"])


def test_an_interval_of_a_bounded_score_stays_in_its_range(tmp_path):
    """Two seeds far apart: the t-interval (+-12.7 standard errors) would pass 0 and 1 (issue 34)."""
    for seed, (a, m) in enumerate([(0.05, 0.02), (0.70, 0.60)]):
        fake_run(tmp_path, "synthetic", "baseline", seed, _scores(a, m))
    base = _row(comparison.comparison(tmp_path)[0], "synthetic", "baseline")
    for m in ("pixel_accuracy", "miou"):
        assert (base[f"{m}_low"], base[f"{m}_high"]) == (0.0, 1.0), m


def test_a_use_case_reading_sets_its_run_beside_the_baseline_of_the_same_seed(tmp_path, capsys):
    """UseCaseReport.reading finds the baseline run through the run-directory layout (`runs.run_path`)."""
    fake_run(tmp_path, "synthetic", "baseline", 1, _scores(0.5, 0.3, [0.3] * 7))  # synthetic: 7 classes
    run = fake_run(tmp_path, "synthetic", "rmi", 1, _scores(0.9, 0.8, [0.8] * 7))
    report = usecase.UseCaseReport(TrainConfig(use_case="rmi", results_dir=str(tmp_path), seed=1), tmp_path / "f")
    report.summary, report.run_dir = runs.load_metrics(run), run
    lines = report.reading()
    assert any(line.startswith("mIoU: 0.800 here against 0.300 for the baseline of the same seed") for line in lines)
    report.run_dir = run.parent / "seed2"  # no baseline of that seed
    assert report.reading()[-1] == f"(no finished baseline run in {tmp_path / 'synthetic' / 'baseline' / 'seed2'} " \
        "to set this run beside)"
