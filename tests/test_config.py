"""One configuration, every entry point: each TrainConfig field is a CLI option, a study --set key and a notebook
config key, generated from the dataclass, so a new field needs no further edits."""

import argparse
import json
from dataclasses import dataclass, fields
from pathlib import Path

import nbformat
import pytest

from mistudy.__main__ import add_config_options, build_parser
from mistudy.training import config
from mistudy.training.config import TrainConfig, _opt, parse_assignments, study_config

SAMPLE_VALUES = {"bool": "true", "int": "3", "float": "0.25", "str": None}


def _sample(f) -> str:
    """A valid text value for field f."""
    if f.metadata.get("choices"):
        return f.metadata["choices"][-1]
    special = {"device": "cpu", "results_dir": "res", "resize_size": "80", "crop_size": "48"}
    if f.name in special:
        return special[f.name]
    kind = f.type.split(" ")[0]
    return "x" if kind == "str" else SAMPLE_VALUES[kind]


def test_every_field_is_a_cli_option_with_its_help_and_the_profiles_default():
    for profile in ("quick", "tiny"):
        train = build_parser(profile)._subparsers._group_actions[0].choices["train"]
        options = {a.dest: a for a in train._actions}
        settings = config.profile_settings(profile)
        for f in fields(TrainConfig):
            assert f.name in options, f.name
            assert f.metadata["help"] and f.metadata["help"] in options[f.name].help
            shown = settings.get(f.name, config.default_of(f)) if f.name != "results_dir" else "<project>/results/" + profile
            text = options[f.name].help
            assert text.count("(default:") + text.count("(none:") >= 1 and text.count("(default:") <= 1, (f.name, text)
            if shown is not None or "(none:" not in f.metadata["help"]:
                assert text.endswith(f"(default: {shown})"), (f.name, text)
            if f.metadata["choices"]:
                assert list(options[f.name].choices) == list(f.metadata["choices"])


def test_every_field_can_be_set_in_the_study_and_the_notebooks():
    reserved = {"use_case", "dataset", "data_root", "seed", "device", "results_dir", "run_dir", "resume", "download"}
    for f in fields(TrainConfig):
        values = parse_assignments([f"{f.name}={_sample(f)}"])
        assert set(values) == {f.name}
        if f.name in reserved or f.name in ("compile_mode", "deeplab_weights", "deeplab_backbone_weights",
                                             "eval_passes"):
            continue  # set by the study itself, or valid only together with another option / an existing file
        cfg = study_config("baseline", "quick", values, device="cpu")  # what the notebooks and the study build
        assert getattr(cfg, f.name) == values[f.name], f.name


def test_a_new_field_reaches_the_cli_and_the_assignments_without_edits():
    @dataclass
    class Extended(TrainConfig):
        new_knob: int = _opt(3, "a knob added later", low=1)

    p = argparse.ArgumentParser()
    add_config_options(p, {}, Extended)
    assert p.parse_args(["--new-knob", "5"]).new_knob == 5
    with pytest.raises(SystemExit):
        p.parse_args(["--new-knob", "0"])  # the bound comes from the metadata
    assert parse_assignments(["new_knob=7"], Extended) == {"new_knob": 7}
    assert Extended.from_dict({"new_knob": 4}).new_knob == 4
    with pytest.raises(ValueError, match="new_knob must be a positive integer"):
        Extended(new_knob=0)


def test_use_case_notebooks_take_any_field_through_config():
    for name in ("02_baseline", "03_rmi", "04_mutual_learning"):
        nb = nbformat.read(Path(__file__).parent.parent / "notebooks" / f"{name}.ipynb", as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert "config = {}" in params.source and 'profile = None' in params.source
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "UseCaseReport.for_notebook(" in code and "TrainConfig(" not in code  # no field list in the notebook


def test_profiles_and_overrides_in_order():
    cfg = study_config("rmi", "quick", {"epochs": 2}, device="cpu", seed=4)
    assert (cfg.epochs, cfg.seed, cfg.batch_size, cfg.crop_size) == (2, 4, 8, 64)
    paper = study_config("mutual", "paper", device="cpu")
    assert (paper.resolved_batch_size, paper.resolved_lr, paper.crop_size, paper.epochs) == (10, 1e-4, 224, 200)
    with pytest.raises(ValueError, match="unknown profile"):
        study_config("rmi", "huge")


def test_quick_profile_drops_bf16_on_cpus_without_it(monkeypatch):
    import mistudy.training.distributed as d

    monkeypatch.setattr(d, "cpu_has_native_bf16", lambda: False)
    assert config.profile_settings("quick", "cpu")["amp"] == "off"
    assert config.profile_settings("quick", "cpu")["channels_last"] is True  # it pays in float32 too
    monkeypatch.setattr(d, "cpu_has_native_bf16", lambda: True)
    assert config.profile_settings("quick", "cpu")["amp"] == "bf16"


@pytest.mark.parametrize("item,match", [("epochs", "NAME=VALUE"), ("epochs=two", "expected int"),
                                        ("compile=maybe", "expected bool"), ("nope=1", "unknown option 'nope'")])
def test_bad_assignments_are_named(item, match):
    with pytest.raises(ValueError, match=match):
        parse_assignments([item])


def test_kinds_of_options():
    assert {"device", "num_workers", "compile", "cache_dir", "data_root", "download"} <= config.RUNTIME_OPTIONS
    assert {"epochs", "run_dir"} <= config.RESUMABLE_CHANGES
    # eval_every too: a run scored at two cadences would be filed under one (its best_miou chose among other epochs)
    assert not {"lr", "rmi_radius", "seed", "select_fraction", "eval_every"} & config.RESUMABLE_CHANGES
    json.dumps([f.metadata["help"] for f in fields(TrainConfig)])  # plain strings


def test_train_cli_starts_from_a_profile_and_options_override_it(tmp_path, capsys):
    from mistudy.__main__ import main

    run = tmp_path / "run"
    assert main(["train", "--profile", "tiny", "--use-case", "rmi", "--epochs", "1", "--device", "cpu",
                 "--progress", "none", "--run-dir", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["use_case"], saved["epochs"], saved["train_samples"], saved["crop_size"]) == ("rmi", 1, 16, 32)
    parsed = build_parser().parse_args(["train", "--lr", "0.01"])
    assert vars(parsed) == {"command": "train", "profile": None, "assignments": [], "lr": 0.01}  # others absent
    assert "run written to" in capsys.readouterr().out


def test_train_cli_shares_the_notebooks_defaults_and_layout(tmp_path, monkeypatch, capsys):
    """`mistudy train` with no options is notebook 02's run: the same profile's settings and the same run
    directory, so either reuses the other's finished run."""
    from mistudy.__main__ import main
    from mistudy.report.usecase import UseCaseReport

    monkeypatch.setenv("MISTUDY_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MISTUDY_PROFILE", "tiny")
    assert main(["train", "--set", "epochs=1", "--device", "cpu", "--progress", "none", "--set", "use_case=rmi"]) == 0
    run = tmp_path / "results" / "tiny" / "synthetic" / "rmi" / "seed0"
    assert (run / "metrics.json").is_file()
    report = UseCaseReport.for_notebook("rmi", None, {"epochs": 1}, device="cpu", progress="none")
    assert report.cfg.resolved_run_dir() == run
    report.train()
    assert "Reusing the finished run" in capsys.readouterr().out
    # the README's commands one after another: the same command again reports the finished run and its scores
    # (it used to fail with "already holds a run; pass --resume (--resume)")
    assert main(["train", "--set", "epochs=1", "--device", "cpu", "--set", "use_case=rmi"]) == 0
    out = capsys.readouterr().out
    scores = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert "Reusing the finished run" in out and "run reused from" in out and "run written to" not in out
    assert scores["unet"] == {
        k: v for k, v in json.loads((run / "metrics.json").read_text())["networks"]["unet"]["best_miou"].items()
        if k in scores["unet"]}


def test_the_command_line_introduces_itself(capsys):
    from mistudy.__main__ import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: mistudy" in out and "Does mutual information help semantic segmentation?" in out
    for command in ("study", "train", "evaluate", "pretrain", "levels", "demo"):
        assert command in out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("mistudy 0.")


def test_cli_errors_name_flags_not_fields(capsys):
    from mistudy.__main__ import cli_words, main

    assert cli_words("pass resume=True to continue") == "pass --resume to continue"
    assert cli_words("warmup_factor must be in (0, 1]") == "--warmup-factor must be in (0, 1]"
    assert cli_words("the dataset voc needs root") == "the dataset voc needs root"  # prose is left alone
    assert cli_words("holds a run; pass --resume (resume=True) to continue") == \
        "holds a run; pass --resume to continue"  # the flag once, not "--resume (--resume)"
    assert main(["train", "--dataset", "voc", "--device", "cpu"]) == 2
    assert "needs --data-root" in capsys.readouterr().err


# Values are checked when a config is made (the filesystem only when a run starts: test_train.py).
TINY = dict(dataset="synthetic", train_samples=10, val_samples=6, resize_size=36, crop_size=32, unet_features=4,
            epochs=3, batch_size=4, device="cpu", progress="none", seed=3)


@pytest.mark.parametrize("kw,match", [
    (dict(use_case="segformer"), "use_case"), (dict(dataset="coco"), "dataset"), (dict(epochs=0), "epochs"),
    (dict(batch_size=0), "batch_size"), (dict(use_case="mutual", batch_size=1), "ASPP"),
    (dict(dataset="voc"), "data_root"), (dict(crop_size=64, resize_size=32), "crop_size"),
    (dict(compile_mode="reduce-overhead"), "needs compile=True"), (dict(compile=True, compile_mode="fast"), "compile_mode"),
    (dict(finite_check_every=0), "finite_check_every"),
])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**TINY, **kw})


def test_bad_device_is_rejected_before_training():
    with pytest.raises(ValueError, match="device"):
        TrainConfig(**{**TINY, "device": "tpu"})


# ------------------------------------------------------------------------- issue 30: defaults and names per dataset

def test_no_profile_means_quick_on_synthetic_data_and_the_paper_on_real_data(monkeypatch):
    monkeypatch.delenv("MISTUDY_PROFILE", raising=False)
    quick = study_config("rmi", None, device="cpu")
    assert (quick.epochs, quick.crop_size, quick.train_samples) == (6, 64, 256)
    paper = study_config("mutual", None, dataset="voc", data_root="/data/voc", device="cpu")
    assert (paper.epochs, paper.crop_size, paper.resize_size, paper.train_samples, paper.val_samples) == \
        (200, 224, 234, None, None)
    assert (paper.resolved_batch_size, paper.resolved_lr) == (10, 1e-4)
    # the authors' partner: torchvision's COCO checkpoint with a new DeepLabHead
    assert (paper.deeplab_weights, paper.deeplab_head) == ("COCO_WITH_VOC_LABELS_V1", "replace")
    city = study_config("baseline", None, {"data_root": "/c"}, dataset="cityscapes", device="cpu")
    assert city.epochs == 200 and city.deeplab_weights is None  # no DeepLabV3 trained: the run records no weights
    assert study_config("baseline", "paper", {"network": "deeplabv3"}, device="cpu").deeplab_weights == \
        "COCO_WITH_VOC_LABELS_V1"
    assert study_config("mutual", "paper", {"mutual_partner": "unet"}, device="cpu").deeplab_weights is None
    assert study_config("rmi", "quick", dataset="voc", data_root="/v", device="cpu").crop_size == 64  # named: kept
    monkeypatch.setenv("MISTUDY_PROFILE", "tiny")
    assert study_config("rmi", None, dataset="voc", data_root="/v", device="cpu").epochs == 2  # env names one


def test_train_cli_on_real_data_without_a_profile_runs_the_paper_profile(tmp_path, monkeypatch, capsys):
    from mistudy.__main__ import main
    from mistudy.training import train as train_module

    monkeypatch.delenv("MISTUDY_PROFILE", raising=False)
    monkeypatch.setenv("MISTUDY_RESULTS", str(tmp_path / "results"))
    seen = []
    monkeypatch.setattr(train_module, "train_or_load", lambda cfg: seen.append(cfg) or {"networks": {}, "run_dir": "r"})
    for flag in ("--data-root", "--root"):  # the old name, an alias
        assert main(["train", "--dataset", "voc", flag, "/data/voc", "--device", "cpu"]) == 0
        cfg = seen.pop()
        assert cfg.data_root == "/data/voc" and cfg.epochs == 200 and cfg.train_samples is None
        assert cfg.resolved_run_dir() == tmp_path / "results" / "paper" / "voc" / "baseline" / "seed0"
    assert build_parser().parse_args(["evaluate", "--run", "r", "--root", "/d"]).data_root == "/d"  # every command
    assert main(["train", "--use-case", "mutual", "--deeplab-weights", "none", "--device", "cpu"]) == 0
    assert seen.pop().deeplab_weights is None  # "none" on the command line, as in --set
    assert main(["train", "--dataset", "voc", "--data-root", "/v", "--deeplab-weights", "COCO_V2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'COCO_V2'" in err[0] and "COCO_WITH_VOC_LABELS_V1" in err[0]


def test_a_run_saved_with_the_old_root_option_still_loads(tmp_path):
    from mistudy.training import runs

    cfg = TrainConfig(**{**TINY, "dataset": "voc", "data_root": "/data/voc"})
    saved = {k if k != "data_root" else "root": v for k, v in json.loads(json.dumps(cfg.__dict__)).items()}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = runs.load_config(tmp_path)
    assert loaded.data_root == "/data/voc" and loaded == cfg
    assert runs.config_differences(cfg.replace(data_root="/elsewhere"), tmp_path, ignore=set()) == {
        "data_root": ("/data/voc", "/elsewhere")}  # compared under its new name
    assert parse_assignments(["root=/x"]) == {"data_root": "/x"}


def test_profile_of_names_the_profile_and_what_departs_from_it():
    assert config.profile_of(study_config("rmi", "paper", device="cpu")) == "paper"
    assert config.profile_of(study_config("rmi", "quick", {"epochs": 1}, device="cpu")) == "quick, with epochs=1"
    assert config.profile_of(study_config("rmi", "long", device="cpu")) == "long"


def test_pretraining_starts_from_random_init_whatever_the_profile(tmp_path):
    from mistudy.training.pretrain import pretrain_config

    cfg = pretrain_config("deeplabv3", "paper", tmp_path, 16, 1, "cpu")  # the stand-in of the COCO weights
    assert cfg.network == "deeplabv3" and cfg.weights_options() == {}
