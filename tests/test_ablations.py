"""The ablation grid of notebook 06: its settings, where its runs go, and its effects on hand-made runs."""

import csv
import json

import numpy as np
import pytest
from fakes import count_calls, fake_run, scores, statistics

from mistudy.methods import stats
from mistudy.report import ablations
from mistudy.training import runs


def test_grid_is_one_factor_at_a_time_around_the_papers_settings():
    grid = ablations.settings()
    assert list(grid)[:3] == list(ablations.REFERENCES.values())
    assert len(grid) == 3 + len(ablations.GRIDS["ablations"])
    for name, setting in list(grid.items())[3:]:
        # one factor: pooling sets kind and size; the authors' recipe is pooling plus the slow start (3 fields)
        assert 1 <= len(setting.changes) <= 5, name
        assert setting.baseline in grid, (name, setting.baseline)  # its baseline is trained in the same grid
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
    assert ablations.default_grid("quick") == (ablations.GRIDS["ablations"], [0, 1, 2])
    assert set(ablations.GRIDS["pretrained"]) <= set(ablations.ABLATIONS)


def test_markers_become_the_profiles_pretrained_weights_and_a_slow_start_of_a_tenth_of_the_steps(tmp_path,
                                                                                               monkeypatch):
    from mistudy.training import pretrain

    monkeypatch.setenv("MISTUDY_RESULTS", str(tmp_path / "results"))
    with pytest.raises(FileNotFoundError, match="mistudy pretrain --profile tiny"):
        ablations.configs(["rmi, pretrained U-Net"], seeds=[0], profile="tiny", results_dir="/r", device="cpu")
    weights = pretrain.weights_dir("tiny")
    weights.mkdir(parents=True)
    for net in ("unet", "deeplabv3"):
        (weights / f"{net}.pt").write_bytes(b"")
    cfgs = dict(ablations.configs(["rmi, pretrained U-Net", "rmi, RMI authors' recipe (avg-pool 4, slow start)",
                                   "mutual, pretrained DeepLabV3 partner (head kept)"],
                                  seeds=[0], profile="tiny", results_dir="/r", device="cpu"))
    assert cfgs["rmi, pretrained U-Net"].unet_weights == str(weights / "unet.pt")
    # the stand-in partner was pretrained on the study's classes: it starts with its whole head, not a new one
    partner = cfgs["mutual, pretrained DeepLabV3 partner (head kept)"]
    assert (partner.deeplab_weights, partner.deeplab_head) == (str(weights / "deeplabv3.pt"), "keep")
    assert partner.unet_weights is None  # its student starts from scratch, as in the paper
    both = dict(ablations.configs(["mutual, both pretrained (heads kept)"], seeds=[0], profile="tiny",
                                  results_dir="/r", device="cpu"))["mutual, both pretrained (heads kept)"]
    assert (both.deeplab_weights, both.deeplab_head, both.unet_weights, both.unet_head) == (
        str(weights / "deeplabv3.pt"), "keep", str(weights / "unet.pt"), "keep")
    assert "baseline, pretrained U-Net" in cfgs and "baseline, slow start" in cfgs  # their fair baselines
    slow = cfgs["baseline, slow start"]  # tiny: 16 images, batch 4, 2 epochs = 8 steps -> 1
    assert (slow.warmup_steps, slow.warmup_mode, slow.warmup_factor) == (1, "constant", 0.1)
    assert cfgs["rmi, RMI authors' recipe (avg-pool 4, slow start)"].rmi_pool_size == 4


def _run(tmp_path, name, use_case, seed, miou, counts, boundary_f=None, networks=("unet",)):
    if boundary_f is not None:
        counts = {**counts, "boundary_f": np.full(len(counts["tp"]), boundary_f)}
    return runs.load_run(fake_run(tmp_path / name, "synthetic", use_case, seed, scores(0.5, miou), counts=counts,
                                  networks=networks))



def test_effects_pair_each_setting_with_the_baseline_and_the_papers_setting(tmp_path):
    rng = np.random.default_rng(0)
    grid = {label: [] for label in ablations.REFERENCES.values()}
    grid["rmi radius 2"] = []
    for seed in range(3):
        base, good = statistics(rng, 10, 0.6), statistics(rng, 10, 0.9)
        grid["baseline (CE)"].append(_run(tmp_path, "b", "baseline", seed, 0.4, base))
        grid[ablations.REFERENCES["rmi"]].append(_run(tmp_path, "r", "rmi", seed, 0.4, base, boundary_f=0.5))
        grid[ablations.REFERENCES["mutual"]].append(_run(tmp_path, "m", "mutual", seed, 0.4 + 0.1 * seed, base,
                                                         networks=("deeplabv3", "unet")))
        # after its first epoch the partner leads its student: 0.3, 0.4, 0.5 against 0.0, 0.1, 0.2
        (grid[ablations.REFERENCES["mutual"]][-1]["run_dir"] / "history.json").write_text(json.dumps(
            [{"epoch": 1, "deeplabv3/val_miou": 0.3 + 0.1 * seed, "unet/val_miou": 0.1 * seed},
             {"epoch": 2, "deeplabv3/val_miou": 0.9, "unet/val_miou": 0.9}]))
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
    assert table[-1]["setting"] == "rmi radius 2" and table[-1]["vs paper's setting: verdict"] == "better"
    assert table[-1]["vs paper's setting: Holm (1 tests)"] == "better"  # one comparison: nothing to adjust
    # every row under the same columns: the references' empty cells too (the family's size, not the row's, names it)
    assert all(list(c) == list(table[-1]) for c in table)
    assert table[0]["vs baseline: Holm (3 tests)"] == "–"
    # mutual learning: the partner's strength beside its student's (here both at 0.4, 0.5, 0.6 over the seeds)
    mutual = next(c for c in table if c["setting"] == ablations.REFERENCES["mutual"])
    assert mutual["partner's mIoU [95% CI]"] == ("deeplabv3 " + stats.t_interval([0.4, 0.5, 0.6]).format(3)
                                                 + "; after epoch 1: 0.400 (student 0.100)")
    # a run not scored after its first epoch (eval_every 2): the head start is left out, not a KeyError
    first_run = grid[ablations.REFERENCES["mutual"]][0]["run_dir"] / "history.json"
    first_run.write_text(json.dumps([{"epoch": 1}, {"epoch": 2, "deeplabv3/val_miou": 0.9, "unet/val_miou": 0.9}]))
    cells = ablations.effect_table(ablations.effects(grid))
    assert next(c for c in cells if c["setting"] == ablations.REFERENCES["mutual"])["partner's mIoU [95% CI]"] == \
        "deeplabv3 " + stats.t_interval([0.4, 0.5, 0.6]).format(3)
    # a run without its history: the head start is left out, never computed from the seeds that have one
    (grid[ablations.REFERENCES["mutual"]][0]["run_dir"] / "history.json").unlink()
    cells = ablations.effect_table(ablations.effects(grid))
    assert next(c for c in cells if c["setting"] == ablations.REFERENCES["mutual"])["partner's mIoU [95% CI]"] == \
        "deeplabv3 " + stats.t_interval([0.4, 0.5, 0.6]).format(3)
    assert table[0]["partner's mIoU [95% CI]"] == "–"
    lines = ablations.answer_lines(list(rows.values()))
    assert lines == [f"rmi radius 2: mIoU {r2['vs_paper_setting'].format(3, signed=True)} against the paper's "
                     "setting (better; holds after Holm's adjustment for 1 comparisons)."]


def test_holm_adjusted_verdicts_of_a_grid():
    """Twelve comparisons, one with p = 0.0001 and eleven with p = 0.01: each excludes 0 on its own, but only the
    first survives Holm's adjustment (0.01 x 11 > 0.05)."""
    from scipy import stats as sps

    def interval(p):  # an interval over 3 seeds (2 df) whose p-value is p: estimate 0.1, se from the t quantile
        se = 0.1 / sps.t.isf(p / 2, 2)
        half = sps.t.ppf(0.975, 2) * se
        return stats.Interval(0.1, 0.1 - half, 0.1 + half, 3, components=((se * se, 2.0),))

    rows = [{"setting": f"s{k}", "use_case": "rmi", "n": 3, "miou": stats.t_interval([0.5, 0.6]),
             "vs_paper_setting": interval(p)} for k, p in enumerate([1e-4] + [0.01] * 11)]
    assert [r["vs_paper_setting"].p_value for r in rows] == pytest.approx([1e-4] + [0.01] * 11)
    for r, p in zip(rows, stats.holm([r["vs_paper_setting"].p_value for r in rows])):
        r["vs_paper_setting_holm"], r["vs_paper_setting_tests"] = p, 12
    table = ablations.effect_table(rows)
    assert {c["vs paper's setting: verdict"] for c in table} == {"better"}
    held = [c["vs paper's setting: Holm (12 tests)"] for c in table]
    assert held[0] == "better" and set(held[1:]) == {"no detectable difference at n = 3"}
    lines = ablations.answer_lines(rows)
    assert "holds after Holm" in lines[0] and all("not after Holm" in line for line in lines[1:])


@pytest.mark.slow
def test_an_interrupted_pretraining_continues_where_it_stopped(tmp_path, monkeypatch, capsys):
    import torch

    from mistudy.training import engine, pretrain

    argv = ["--profile", "tiny", "--samples", "8", "--epochs", "2", "--networks", "unet", "--out",
            str(tmp_path / "pre"), "--device", "cpu"]
    # tiny: 6 training images after the selection split, batch 4 -> 2 steps per epoch: dies in epoch 2
    calls = count_calls(monkeypatch, engine, "train_step", raise_at=3)
    with pytest.raises(KeyboardInterrupt):
        pretrain.main(argv)
    run = tmp_path / "pre" / "runs" / "unet"
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1 and not (tmp_path / "pre" / "unet.pt").exists()
    calls.update(n=0, raise_at=None)
    assert pretrain.main(argv) == 0  # the same command again: epoch 2 only, not a refusal or a fresh start
    assert calls["n"] == 2 and [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2]
    weights = tmp_path / "pre" / "unet.pt"
    written = weights.stat().st_mtime_ns
    assert pretrain.main(argv) == 0 and "Reusing the finished run" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == written  # the same weights: the file is not rewritten
    # more epochs extend the finished pretraining (epoch 3 only) and export its new best weights
    calls.update(n=0)
    longer = argv[:argv.index("--epochs") + 1] + ["3"] + argv[argv.index("--epochs") + 2:]
    assert pretrain.main(longer) == 0
    assert calls["n"] == 2 and [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2, 3]
    best = torch.load(run / "best_miou-unet.pt", weights_only=True)
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in best["model"].items())
    assert json.loads((tmp_path / "pre" / "unet.pt.provenance.json").read_text())["epoch"] == best["epoch"]
    # fewer epochs than done: refused with the difference named, nothing trained
    calls.update(n=0)
    fewer = argv[:argv.index("--epochs") + 1] + ["1"] + argv[argv.index("--epochs") + 2:]
    assert pretrain.main(fewer) == 1 and calls["n"] == 0
    assert "epochs: saved 3, now 1" in capsys.readouterr().err


@pytest.mark.slow
def test_pretrain_writes_weights_that_a_study_run_starts_from(tmp_path, capsys):
    import torch

    from mistudy.training import pretrain
    from mistudy.training.config import TrainConfig
    from mistudy.training.train import train

    assert pretrain.main(["--profile", "tiny", "--samples", "8", "--epochs", "1", "--networks", "unet",
                          "--out", str(tmp_path / "pre"), "--device", "cpu", "--figures-dir", str(tmp_path / "f")]) == 0
    assert "unet: " in capsys.readouterr().out
    # the pretraining's scores are a table the README can cite, read from the run itself
    run = tmp_path / "pre" / "runs" / "unet"
    history = json.loads((run / "history.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    best = metrics["networks"]["unet"]["best_miou"]
    table = (tmp_path / "f" / "pretrain.md").read_text()
    assert f"| unet | 1 | {metrics['train_samples']} | {best['epoch']} | {round(best['miou'], 4)} | {round(history[0]['unet/val_miou'], 4)} |" \
        in table, table
    assert "python -m mistudy pretrain --profile tiny" in table and (tmp_path / "f" / "pretrain.csv").is_file()
    table_prov = json.loads((tmp_path / "f" / "pretrain.md.provenance.json").read_text())
    assert (table_prov["command"], table_prov["device"]) == ("python -m mistudy pretrain --profile tiny", ["cpu"])
    weights = tmp_path / "pre" / "unet.pt"
    prov = (tmp_path / "pre" / "unet.pt.provenance.json").read_text()
    assert "data_seed 1000" in prov and "medium" in prov  # another corpus than the study's (data_seed 0, easy)
    state = torch.load(weights, weights_only=True)
    # the stand-in's head start on the study's validation images: the table's column is `study_start_miou` of the
    # exported file, which scores the file's own weights on the study's validation split -- checked with weights
    # whose last layer predicts one class everywhere, against scikit-learn's confusion matrix of that prediction
    from sklearn.metrics import confusion_matrix

    from mistudy.data import IGNORE_INDEX, dataset_info
    from mistudy.training import loaders
    from mistudy.training.config import profile_settings

    start = next(r for r in csv.DictReader((tmp_path / "f" / "pretrain.csv").open()) if r["network"] == "unet")
    assert float(start[pretrain.START_COLUMN]) == round(pretrain.study_start_miou(weights, "unet", "tiny", "cpu"), 4)
    classes = dataset_info("synthetic").num_classes
    targets = [t[t != IGNORE_INDEX].numpy() for _, t in loaders.build_datasets(TrainConfig.from_dict(
        {**profile_settings("tiny", "cpu"), "device": "cpu"}))["val"]]
    for predicted in (0, 1):  # background, and a shape present in these images
        constant = {k: v.clone() for k, v in state.items()}
        constant["head.weight"].zero_()
        constant["head.bias"].copy_(torch.nn.functional.one_hot(torch.tensor(predicted), classes) * 10.0)
        torch.save(constant, tmp_path / "constant.pt")
        cm = sum(confusion_matrix(t, np.full_like(t, predicted), labels=list(range(classes))) for t in targets)
        union = cm.sum(0) + cm.sum(1) - np.diag(cm)
        expected = np.mean(np.diag(cm)[union > 0] / union[union > 0])
        assert expected > 0.01  # a score that wrong weights or a wrong split would miss
        assert pretrain.study_start_miou(tmp_path / "constant.pt", "unet", "tiny", "cpu") == pytest.approx(expected)
    # the DeepLabV3 stand-in is scored with its head kept: a file whose last layer predicts class 1 everywhere
    # scores that class's IoU (a new, random head would not)
    from mistudy.methods.models import build_model

    deeplab = build_model("deeplabv3_resnet50", classes).state_dict()
    deeplab["net.classifier.4.weight"].zero_()
    deeplab["net.classifier.4.bias"].copy_(torch.nn.functional.one_hot(torch.tensor(1), classes) * 10.0)
    torch.save(deeplab, tmp_path / "deeplab.pt")
    assert pretrain.study_start_miou(tmp_path / "deeplab.pt", "deeplabv3", "tiny", "cpu") == pytest.approx(expected)
    cfg = TrainConfig(dataset="synthetic", train_samples=8, val_samples=4, resize_size=36, crop_size=32,
                      unet_features=8, epochs=1, batch_size=4, device="cpu", progress="none",
                      unet_weights=str(weights), run_dir=str(tmp_path / "run"))
    from mistudy.training.networks import build_networks

    started = build_networks(cfg)["unet"].state_dict()
    assert all(torch.equal(started[k], v) for k, v in state.items())  # every pretrained tensor is loaded
    train(cfg)
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_the_tuning_grid_chooses_each_use_cases_rate_on_the_selection_split(tmp_path):
    """Every use-case at every rate on the tuning seeds; each chooses the rate whose runs reach the highest mean best
    selection-split mIoU (history.json), whatever the validation scores say; the profile's own rate is the reference
    run, not a second identical one."""
    from mistudy.report import tuning

    names, seeds = ablations.default_grid("quick", grid="tuning")
    assert seeds == list(tuning.TUNING_SEEDS) and len(names) == 3 * len(tuning.LEARNING_RATES)
    assert min(tuning.LEARNING_RATES) <= 1e-4 and max(tuning.LEARNING_RATES) >= 3e-3  # the paper's 1e-4 to 3e-3
    cfgs = ablations.configs(names, [100], "quick", results_dir=str(tmp_path), device="cpu")
    by_name = {name: cfg for name, cfg in cfgs}
    assert by_name["rmi lr=0.001"] is by_name[ablations.REFERENCES["rmi"]]  # the quick recipe's rate: one run
    # tuning seeds never reach the study's folders (its tables would count them)
    assert all("ablations" in c.resolved_run_dir().parts for _, c in cfgs)
    paper = dict(ablations.configs(names, [100], "paper", results_dir=str(tmp_path), device="cpu"))
    assert paper["rmi lr=0.0001"] is paper[ablations.REFERENCES["rmi"]]  # the paper's own rate (lr None): one run
    assert by_name["rmi lr=0.0003"].lr == 3e-4 and by_name["rmi lr=0.0003"].seed == 100
    assert len({c.resolved_run_dir() for _, c in cfgs}) == 3 * len(tuning.LEARNING_RATES)
    # scores: rate 3e-4 best on the selection split for rmi, though its validation score is the worst
    grid = {}
    for lr, select in ((1e-3, [0.5, 0.6]), (3e-4, [0.7, 0.8])):
        for seed, best in zip((100, 101), select):
            run = fake_run(tmp_path / f"r{lr}", "synthetic", "rmi", seed, scores(0.5, 0.9 - best), lr=lr)
            history = [{"epoch": 1, "unet/select_miou": best - 0.2}, {"epoch": 2, "unet/select_miou": best},
                       {"epoch": 3, "unet/select_miou": best - 0.1}]
            (run / "history.json").write_text(json.dumps(history))
            grid.setdefault(tuning.setting_name("rmi", lr), []).append(runs.load_run(run))
    rows = tuning.tuning_rows(grid)
    assert [(r["lr"], r["chosen"]) for r in rows] == [(3e-4, True), (1e-3, False)]
    assert next(r for r in rows if r["lr"] == 3e-4)["selection_miou"] == pytest.approx(0.75)
    tuning.write_tuning(rows, tmp_path / "f", "synthetic", {}, "the protocol")
    with pytest.raises(ValueError, match=r"chose no rate for \['baseline', 'mutual'\]"):
        tuning.chosen_rates(tmp_path / "f", "synthetic")
    md = (tmp_path / "f" / "synthetic_06_tuning.md").read_text()
    assert "Chosen: rmi 0.0003" in md and "validation images are never looked at" in md
    assert ablations.answer_lines(rows) == ["rmi: learning rate 0.0003 chosen, selection-split mIoU "
                                            f"{rows[0]['selection mIoU [95% CI]']} (seeds 100 101)"]


def test_a_tuning_interval_stays_within_miou_range(tmp_path):
    """Two tuning seeds far apart: the t-interval (+-12.7 standard errors) would pass 0 and 1 (issue 34's rule)."""
    from mistudy.report import tuning

    grid = {}
    for seed, best in ((100, 0.05), (101, 0.95)):
        run = fake_run(tmp_path, "synthetic", "baseline", seed, scores(0.5, 0.5), lr=1e-3)
        (run / "history.json").write_text(json.dumps([{"epoch": 1, "unet/select_miou": best}]))
        grid.setdefault(tuning.setting_name("baseline", 1e-3), []).append(runs.load_run(run))
    assert tuning.tuning_rows(grid)[0]["selection mIoU [95% CI]"] == "0.500 [0.000, 1.000]"
