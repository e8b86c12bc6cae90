"""The ablation grid of notebook 06: its settings, where its runs go, and its effects on hand-made runs."""

import json

import numpy as np
import pytest

from mistudy import ablations, runs, stats
from mistudy.config import TrainConfig


def test_grid_is_one_factor_at_a_time_around_the_papers_settings():
    grid = ablations.settings()
    assert list(grid)[:3] == list(ablations.REFERENCES.values())
    assert len(grid) == 3 + 12
    for name, (use_case, changes) in list(grid.items())[3:]:
        assert len(changes) in (1, 2) and use_case in ("rmi", "mutual"), name  # pooling sets kind and size
    cfgs = dict(ablations.configs(["rmi λ=0.25", "mutual two U-Nets"], seeds=[0, 1], profile="tiny",
                                  results_dir="/r", device="cpu"))
    assert len(ablations.configs(["rmi λ=0.25"], seeds=[0, 1], profile="tiny", results_dir="/r", device="cpu")) == 8
    assert cfgs["mutual two U-Nets"].networks == ("unet_peer", "unet")
    with pytest.raises(ValueError, match="unknown ablations"):
        ablations.settings(["rmi radius 99"])


def test_runs_go_beside_the_study_and_references_are_the_studys_own():
    pairs = ablations.configs(["rmi λ=0.25"], seeds=[2], profile="tiny", results_dir="/r", device="cpu")
    dirs = {name: str(cfg.resolved_run_dir()) for name, cfg in pairs}
    assert dirs["baseline (CE)"] == "/r/synthetic/baseline/seed2"  # the run notebook 02 trains
    assert dirs["rmi λ=0.25"] == "/r/ablations/synthetic/rmi/rmi_lambda=0.25-seed2"  # ASCII directory names
    assert dict(pairs)["rmi λ=0.25"].rmi_bce_weight == 0.25
    # with overrides the references cannot be the study's runs: they are trained beside the ablations
    other = dict(ablations.configs(["rmi λ=0.25"], seeds=[2], profile="tiny", overrides={"epochs": 1},
                                   results_dir="/r", device="cpu"))
    assert str(other["baseline (CE)"].resolved_run_dir()).startswith("/r/ablations/")
    assert ablations.default_grid("tiny") == (["rmi radius 2", "mutual two U-Nets"], [0, 1])
    assert ablations.default_grid("quick") == (list(ablations.ABLATIONS), [0, 1, 2])


def _run(tmp_path, name, use_case, seed, miou, counts, **extra):
    run = tmp_path / name / f"seed{seed}"
    run.mkdir(parents=True)
    cfg = {**TrainConfig().__dict__, "use_case": use_case, "seed": seed, "epochs": 2}
    scores = {"epoch": 2, "miou": miou, "boundary_f": extra.get("boundary_f", 0.5), "ece": 0.1,
              "mean_entropy_bits": 0.5, "mutual_information_bits": 1.0, "normalized_mutual_information": 0.5}
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "metrics.json").write_text(json.dumps({"networks": {"unet": {"best_miou": scores}}}))
    runs.write_per_image(run, {"unet/best_miou": counts}, list(range(len(counts["tp"]))))
    return runs.load_run(run)


def _counts(rng, quality, images=10, classes=3):
    t = rng.integers(0, classes, (images, 6, 6))
    p = np.where(rng.random(t.shape) < quality, t, rng.integers(0, classes, t.shape))
    per = lambda f: np.stack([[f(pi, ti, c) for c in range(classes)] for pi, ti in zip(p, t)])  # noqa: E731
    return {"tp": per(lambda pi, ti, c: ((pi == c) & (ti == c)).sum()),
            "fp": per(lambda pi, ti, c: ((pi == c) & (ti != c)).sum()),
            "fn": per(lambda pi, ti, c: ((pi != c) & (ti == c)).sum())}


def test_effects_pair_each_setting_with_the_baseline_and_the_papers_setting(tmp_path):
    rng = np.random.default_rng(0)
    grid = {label: [] for label in ablations.REFERENCES.values()}
    grid["rmi radius 2"] = []
    for seed in range(3):
        base, good = _counts(rng, 0.6), _counts(rng, 0.9)
        grid["baseline (CE)"].append(_run(tmp_path, "b", "baseline", seed, 0.4, base))
        grid[ablations.REFERENCES["rmi"]].append(_run(tmp_path, "r", "rmi", seed, 0.4, base, boundary_f=0.5))
        grid[ablations.REFERENCES["mutual"]].append(_run(tmp_path, "m", "mutual", seed, 0.4, base))
        grid["rmi radius 2"].append(_run(tmp_path, "r2", "rmi", seed, 0.8, good, boundary_f=0.6 + 0.01 * seed))
    rows = {r["setting"]: r for r in ablations.effects(grid)}
    assert "vs_baseline" not in rows["baseline (CE)"]
    ref = rows[ablations.REFERENCES["rmi"]]
    assert ref["vs_baseline"].estimate == 0.0 and "vs_paper_setting" not in ref  # same predictions as the baseline
    r2 = rows["rmi radius 2"]
    assert r2["vs_paper_setting"].low > 0 and stats.verdict(r2["vs_paper_setting"]) == "better"
    assert r2["miou"].estimate == pytest.approx(0.8) and r2["n"] == 3
    assert r2["boundary_f_vs_paper_setting"].estimate == pytest.approx(0.11)
    table = ablations.effect_table(list(rows.values()))
    assert table[-1]["setting"] == "rmi radius 2" and table[-1]["paper's setting: verdict"] == "better"
    lines = ablations.answer_lines(list(rows.values()))
    assert lines == [f"rmi radius 2: mIoU {r2['vs_paper_setting'].format(3, signed=True)} against the paper's "
                     "setting (better)."]
