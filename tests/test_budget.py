"""The answer as a function of budget: the plateau criterion on hand-made curves, and the per-epoch paired Δ mIoU
against scikit-learn's IoU on the pooled pixels."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, jaccard_score

from fakes import CLASSES, fake_run, masks, per_image, scores
from mistudy import budget, runs


def test_plateau_on_a_rising_and_a_flat_curve():
    epochs = list(range(1, 9))
    rising = budget.plateau(epochs, [0.1 * e for e in epochs])
    # the last quarter of epochs 1..8 starts at 6.25 (epochs 7 and 8); at least three epochs: 6, 7, 8
    assert (rising["from_epoch"], rising["to_epoch"]) == (6, 8)
    assert rising["gain"] == pytest.approx(0.2) and rising["slope_per_epoch"] == pytest.approx(0.1)
    assert not rising["plateaued"]
    flat = budget.plateau(epochs, [0.5, 0.6, 0.65, 0.68, 0.69, 0.695, 0.698, 0.699])
    # least squares through (6, .695), (7, .698), (8, .699): slope 0.002, gain 0.004
    assert flat["plateaued"] and flat["gain"] == pytest.approx(0.004)
    assert not budget.plateau(epochs, [0.5] * 6 + [0.5, 0.52])["plateaued"]  # a late rise is not a plateau
    # one noisy last epoch does not make a rising curve a plateau (the quick baseline: 0.449, 0.533, 0.522)
    noisy = budget.plateau([1, 2, 3, 4, 5, 6], [0.15, 0.27, 0.39, 0.449, 0.533, 0.522])
    assert not noisy["plateaued"] and noisy["gain"] == pytest.approx(0.073)
    long = budget.plateau(list(range(1, 25)), [0.9 - 0.5 * 0.8 ** e for e in range(1, 25)])
    assert long["plateaued"] and (long["from_epoch"], long["to_epoch"]) == (19, 24)


def test_plateau_needs_two_epochs_and_matching_lengths():
    with pytest.raises(ValueError, match="at least two epochs"):
        budget.plateau([3], [0.4])
    with pytest.raises(ValueError, match="one value per epoch"):
        budget.plateau([1, 2, 3], [0.4, 0.5])


def _epoch_run(results, use_case, seed, quality_by_epoch, images=8):
    rng = np.random.default_rng(100 * seed + len(use_case))
    fake_run(results, "synthetic", use_case, seed, scores(0.8, 0.5), epochs=len(quality_by_epoch))
    run_dir = results / "synthetic" / use_case / f"seed{seed}"
    pixels = {}
    for epoch, quality in enumerate(quality_by_epoch, start=1):
        preds, targets = masks(rng, images, quality, size=16)
        cm = np.stack([confusion_matrix(t.ravel(), p.ravel(), labels=range(CLASSES)) for p, t in zip(preds, targets)])
        runs.add_epoch_confmats(run_dir, epoch, {"unet": cm})
        pixels[epoch] = (preds.ravel(), targets.ravel())
    return pixels


def test_difference_by_epoch_is_the_mean_of_per_seed_sklearn_differences(tmp_path):
    method, base = {}, {}
    for seed in range(3):
        base[seed] = _epoch_run(tmp_path, "baseline", seed, [0.3, 0.6, 0.7])
        method[seed] = _epoch_run(tmp_path, "rmi", seed, [0.2, 0.5, 0.9])
    found = {uc: [runs.load_run(p) for p in runs.find_runs(tmp_path, "synthetic", uc)] for uc in ("baseline", "rmi")}
    diffs = budget.difference_by_epoch(found["rmi"], found["baseline"])
    assert [e for e, _ in diffs] == [1, 2, 3]

    def miou(pair):
        preds, targets = pair
        return jaccard_score(targets, preds, average="macro", labels=range(CLASSES))

    for epoch, interval in diffs:
        expected = np.mean([miou(method[s][epoch]) - miou(base[s][epoch]) for s in range(3)])
        assert interval.estimate == pytest.approx(expected)
        assert interval.low < interval.estimate < interval.high and interval.n == 3
    assert diffs[-1][1].low > 0  # 0.9 against 0.7 correct pixels: clearly better at the last epoch

    rows = budget.budget_rows(tmp_path, "synthetic")
    assert [r["use_case"] for r in rows] == ["baseline", "rmi"]
    assert rows[1]["diff_last"].estimate == pytest.approx(diffs[-1][1].estimate)
    assert "still climbing" in budget.budget_lines(rows)[1]


def test_budget_figure_is_saved_with_provenance_and_absent_without_epoch_scores(tmp_path):
    for seed in range(2):
        _epoch_run(tmp_path / "results", "baseline", seed, [0.3, 0.6])
        _epoch_run(tmp_path / "results", "mutual", seed, [0.4, 0.5])
    fig = budget.budget_figure(tmp_path / "results", "synthetic", tmp_path / "figures", {"profile": "test"})
    assert fig is not None
    assert (tmp_path / "figures" / "synthetic_05_budget.png").is_file()
    assert (tmp_path / "figures" / "synthetic_05_budget.png.provenance.json").is_file()
    fake_run(tmp_path / "old", "synthetic", "baseline", 0, scores(0.8, 0.5))  # no val_per_epoch.npz
    assert budget.budget_figure(tmp_path / "old", "synthetic", tmp_path / "figures", {}) is None
    assert budget.budget_rows(tmp_path / "old", "synthetic") == []


def test_verdicts_by_budget_put_each_profiles_paired_verdict_side_by_side(tmp_path):
    from mistudy.comparison import comparison

    for profile, quality in (("quick", 0.5), ("long", 0.95)):
        for seed in range(3):
            rng = np.random.default_rng(seed)
            for uc, q in (("baseline", 0.7), ("rmi", quality)):
                preds, targets = masks(rng, 8, q, size=16)
                fake_run(tmp_path / profile, "synthetic", uc, seed, scores(0.8, 0.5),
                         counts=per_image(preds, targets))
    for seed in range(2):  # long runs still being extended: one epoch short of the long length, never shown
        rng = np.random.default_rng(seed)
        for uc in ("baseline", "rmi"):
            preds, targets = masks(rng, 8, 0.3, size=16)
            fake_run(tmp_path / "long", "synthetic", uc, seed, scores(0.8, 0.5), counts=per_image(preds, targets),
                     epochs=1, name=f"short{seed}")
    rows = budget.verdicts_by_budget({"quick": tmp_path / "quick", "standard": tmp_path / "none",
                                      "long": tmp_path / "long"}, epochs={"quick": 2, "standard": 2, "long": 2})
    assert [r["method (U-Net) vs baseline"] for r in rows] == ["rmi"]
    assert list(rows[0])[2:] == ["quick: Δ mIoU [95%] verdict", "long: Δ mIoU [95%] verdict"]  # no standard runs
    for profile, word in (("quick", "worse"), ("long", "better")):
        expected = [r for r in comparison(tmp_path / profile, ["synthetic"])[0] if r["use_case"] == "rmi"][0]
        cell = rows[0][f"{profile}: Δ mIoU [95%] verdict"]
        assert cell.startswith(f"{expected['miou_diff']:+.3f}") and f" {word} (2 epochs, n=3)" in cell
