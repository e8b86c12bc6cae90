"""The study runner: option handling, the plan, papermill execution and failure reporting (tiny notebooks),
and the notebooks' train-or-reuse helper."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from mistudy import study
from mistudy.io import machine
from mistudy.report import ablations
from mistudy.study import NOTEBOOKS, UsageError, build_parser, main, plan
from mistudy.training import runs
from mistudy.training import train as train_module
from mistudy.training.config import PROFILES, TrainConfig
from mistudy.training.train import train_or_load

# Each throwaway notebook records what the runner gave it: injected parameters, environment, working directory.
RECORD = '''
import json, os
from pathlib import Path
Path(results_dir).mkdir(parents=True, exist_ok=True)
Path(results_dir, f"{NAME}-{dataset}-{seed}.json").write_text(json.dumps(dict(
    dataset=dataset, seed=seed, profile=profile, config=config, data_root=data_root, figures_dir=figures_dir,
    progress=os.environ.get("MISTUDY_PROGRESS"), cwd=os.getcwd())))
'''


def write_notebooks(folder: Path, fail: dict[str, str] | None = None) -> Path:
    """Tiny notebooks under the real names; fail: {key: code of a cell that raises}."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in NOTEBOOKS.items():
        params = new_code_cell(f'dataset = "none"\nseed = -1\nprofile = "none"\nconfig = {{}}\ndata_root = None\n'
                               f'results_dir = "{folder}"\nfigures_dir = "figs"\ndevice = "auto"')
        params.metadata["tags"] = ["parameters"]
        cells = [params, new_code_cell(f"NAME = {key!r}\nx = 1\nprint('the output of', NAME)")]
        if fail and key in fail:
            cells.append(new_code_cell(fail[key]))
        cells.append(new_code_cell(RECORD))
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "mistudy", "display_name": "Python (mistudy)",
                                                                "language": "python"}})
        nbformat.write(nb, folder / name)
    return folder


@pytest.fixture(scope="module")
def nb_dir(tmp_path_factory):
    return write_notebooks(tmp_path_factory.mktemp("notebooks"))


def _plan(nb_dir, *argv):
    return plan(build_parser().parse_args(["--notebooks-dir", str(nb_dir), *argv]))


@pytest.fixture(autouse=True)
def _no_profile_from_the_environment(monkeypatch):
    """The nbval conftest sets MISTUDY_PROFILE=tiny for the notebooks' kernels (and pytest imports it before any test
    runs); these tests read the profiles' own defaults."""
    monkeypatch.delenv("MISTUDY_PROFILE", raising=False)


def _run(capsys, *argv):
    """(exit status, stdout, stderr) of `python -m mistudy study ARGV`, argparse's own exits included."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------ plan

def test_default_plan_runs_01_then_use_cases_then_05(nb_dir, tmp_path, monkeypatch):
    # default folders: the project's results/ and figures/ (here redirected as the nbval run does)
    monkeypatch.setenv("MISTUDY_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MISTUDY_FIGURES", str(tmp_path / "figures"))
    steps = _plan(nb_dir)
    # three seeds of every use-case by default, so that the comparison has intervals
    assert [(s.key, s.parameters.get("seed")) for s in steps] == [
        ("01", None), *[(k, seed) for seed in (0, 1, 2) for k in ("02", "03", "04")], ("05", None)]
    results, figures = tmp_path / "results" / "quick", tmp_path / "figures" / "quick"  # each profile its own folders
    assert steps[1].output == results / "notebooks" / "synthetic" / "seed0" / "02_baseline.ipynb"
    assert steps[0].output == results / "notebooks" / "01_information_theory.ipynb"
    assert steps[0].parameters == {"figures_dir": str(tmp_path / "figures")}  # theory: the same for every profile
    assert steps[1].parameters == {"profile": "quick", "dataset": "synthetic", "data_root": None, "device": "auto",
                                   "seed": 0, "results_dir": str(results), "figures_dir": str(figures)}
    assert steps[-1].parameters == {"profile": "quick", "results_dir": str(results), "figures_dir": str(figures),
                                    "datasets": ["synthetic"]}
    assert _plan(nb_dir, "--profile", "standard")[1].parameters["results_dir"] == str(tmp_path / "results" / "standard")
    assert all(s.notebook.parent == nb_dir for s in steps)
    assert study.DEFAULT_NOTEBOOKS_DIR == Path(__file__).resolve().parent.parent / "notebooks"


def test_set_reaches_the_notebooks_as_config_and_is_checked_first(nb_dir):
    steps = _plan(nb_dir, "--notebooks", "03", "--seeds", "0", "--set", "rmi_pool=avg", "--set", "cache_dir=/tmp/c",
                  "--set", "compile=true", "--set", "eval_passes=none", "--epochs", "4")
    assert steps[0].parameters["config"] == {"rmi_pool": "avg", "cache_dir": "/tmp/c", "compile": True,
                                             "eval_passes": None, "epochs": 4}
    for argv, match in ((["--set", "rmi_pool=huge"], "rmi on synthetic: rmi_pool must be one of"),
                        (["--set", "no_such_option=1"], "unknown option 'no_such_option'"),
                        (["--set", "epochs"], "NAME=VALUE"), (["--set", "epochs=many"], "epochs='many': expected int"),
                        (["--set", "seed=3"], "set by the study itself")):
        with pytest.raises(UsageError, match=match):
            _plan(nb_dir, "--notebooks", "03", *argv)


def test_resume_continues_the_runs_that_exist_and_starts_the_others(nb_dir, tmp_path):
    """A study interrupted after some runs had started: --resume must continue those and start the rest, in 02-04
    and in every run of 06's grid (it once asked for a run in every directory and failed on the unstarted ones)."""
    started = tmp_path / "synthetic" / "baseline" / "seed0"
    started.mkdir(parents=True)
    (started / "config.json").write_text("{}")  # a run directory: the check looks no further
    argv = ["--notebooks", "02", "06", "--seeds", "0", "1", "--profile", "tiny", "--results-dir", str(tmp_path)]
    steps = _plan(nb_dir, *argv, "--resume")
    assert [s.parameters.get("resume") for s in steps if s.key == "02"] == [True, None]
    assert next(s for s in steps if s.key == "06").parameters["resume"] is True
    grid_run = ablations.configs(["rmi radius 2"], [0], "tiny", results_dir=str(tmp_path))[-1][1].resolved_run_dir()
    grid_run.mkdir(parents=True)
    (grid_run / "config.json").write_text("{}")
    args = build_parser().parse_args(["--notebooks-dir", str(nb_dir), *argv, "--resume"])
    trains = {t.label: t.config["resume"] for t in study.tasks(plan(args), args, expand_ablations=True)
              if t.key.startswith("train ")}
    assert trains["rmi radius 2 (synthetic, seed 0)"] is True and trains["rmi radius 2 (synthetic, seed 1)"] is False
    assert not any(v for k, v in trains.items() if not k.startswith("rmi radius 2 (synthetic, seed 0)"))
    assert not [s for s in _plan(nb_dir, *argv) if s.parameters.get("resume")]  # without --resume: none


def test_plan_seeds_profiles_and_subsets(nb_dir, tmp_path):
    steps = _plan(nb_dir, "--seeds", "0", "1", "--profile", "paper", "--notebooks", "4", "02_baseline", "05",
                  "--epochs", "7", "--device", "cpu", "--resume", "--results-dir", str(tmp_path))
    assert [(s.key, s.parameters.get("seed")) for s in steps] == [("02", 0), ("04", 0), ("02", 1), ("04", 1),
                                                                   ("05", None)]
    p = steps[3].parameters
    assert p["profile"] == "paper" and p["config"] == {"epochs": 7}
    assert "resume" not in p and p["device"] == "cpu"  # --resume, but no run there yet: it starts
    assert steps[3].output == tmp_path / "notebooks" / "synthetic" / "seed1" / "04_mutual_learning.ipynb"
    assert "config" not in _plan(nb_dir, "--notebooks", "02")[0].parameters  # nothing set: the profile alone
    assert _plan(nb_dir, "--notebooks", "03", "--eval-protocol", "random-crop")[0].parameters["config"] == \
        {"eval_protocol": "random-crop"}


def test_ablations_choose_the_settings_of_notebook_06_and_of_its_tasks(nb_dir, tmp_path):
    """A follow-up of a grid's leads on new seeds: only those settings (and the references) are trained."""
    argv = ["--notebooks-dir", str(nb_dir), "--notebooks", "06", "--seeds", "3", "4", "--profile", "tiny",
            "--results-dir", str(tmp_path), "--ablations", "rmi max-pool 2", "mutual two U-Nets"]
    args = build_parser().parse_args(argv)
    steps = plan(args)
    assert steps[0].parameters["ablation_names"] == ["rmi max-pool 2", "mutual two U-Nets"]
    assert steps[0].parameters["seeds"] == [3, 4]
    labels = [t.label for t in study.tasks(steps, args, expand_ablations=True) if t.key.startswith("train ")]
    settings = {label.rsplit(" (", 1)[0] for label in labels}
    assert settings == {ablations.BASELINE, *ablations.REFERENCES.values(), "rmi max-pool 2", "mutual two U-Nets"}
    assert len(labels) == 2 * len(settings) and all("seed 3)" in x or "seed 4)" in x for x in labels)
    assert "ablation_names" not in plan(build_parser().parse_args(argv[:-3]))[0].parameters  # default: the grid


def test_plan_data_roots(nb_dir, voc_root, cityscapes_root):
    steps = _plan(nb_dir, "--dataset", "voc", "--data-root", str(voc_root), "--notebooks", "03")
    assert steps[0].parameters["data_root"] == str(voc_root.resolve())
    # all: the synthetic benchmark and the paper's two (voc_aug is VOC with another training list: asked by name)
    steps = _plan(nb_dir, "--dataset", "all", "--data-root", f"voc={voc_root}", "--data-root",
                  f"cityscapes={cityscapes_root}", "--notebooks", "02", "--seeds", "0")
    assert [(s.parameters["dataset"], s.parameters["data_root"]) for s in steps] == [
        ("synthetic", None), ("voc", str(voc_root.resolve())), ("cityscapes", str(cityscapes_root.resolve()))]


def test_plan_without_a_profile_runs_the_paper_profile_on_real_data(nb_dir, voc_root, monkeypatch, tmp_path):
    monkeypatch.delenv("MISTUDY_PROFILE", raising=False)
    monkeypatch.setenv("MISTUDY_RESULTS", str(tmp_path / "results"))
    steps = _plan(nb_dir, "--dataset", "voc", "--root", str(voc_root), "--notebooks", "03", "--seeds", "0")
    assert steps[0].parameters["profile"] == "paper" and steps[0].parameters["data_root"] == str(voc_root.resolve())
    assert steps[0].parameters["results_dir"] == str(tmp_path / "results" / "paper")
    assert _plan(nb_dir, "--notebooks", "03", "--seeds", "0")[0].parameters["profile"] == "quick"
    assert _plan(nb_dir, "--dataset", "voc", "--data-root", str(voc_root), "--profile", "tiny", "--notebooks", "03",
                 "--seeds", "0")[0].parameters["profile"] == "tiny"


def test_study_honours_mistudy_profile_as_train_and_the_notebooks_do(nb_dir, monkeypatch, tmp_path):
    """No --profile: env MISTUDY_PROFILE (config.resolve_profile), for the profile, its folders and its seeds; an
    explicit --profile wins."""
    monkeypatch.setenv("MISTUDY_PROFILE", "tiny")
    monkeypatch.setenv("MISTUDY_RESULTS", str(tmp_path / "results"))
    steps = _plan(nb_dir, "--notebooks", "03", "05")
    assert [s.parameters["profile"] for s in steps] == ["tiny", "tiny", "tiny"]  # 03 on seeds 0 1, then 05
    assert [s.parameters.get("seed") for s in steps] == [0, 1, None]
    assert steps[0].parameters["results_dir"] == str(tmp_path / "results" / "tiny")
    assert steps[0].config.crop_size == PROFILES["tiny"]["crop_size"] and steps[0].config.seed == 0
    assert steps[0].config.resolved_run_dir() == tmp_path / "results" / "tiny" / "synthetic" / "rmi" / "seed0"
    assert _plan(nb_dir, "--profile", "quick", "--notebooks", "03", "--seeds", "0")[0].parameters["profile"] == "quick"


def test_study_download_fetches_into_a_new_root_and_tells_the_notebooks(nb_dir, voc_root, tmp_path, monkeypatch):
    from mistudy import data

    new = tmp_path / "fresh"
    steps = _plan(nb_dir, "--dataset", "voc", "--data-root", str(new), "--download", "--notebooks", "02",
                  "--seeds", "0", "--profile", "tiny")  # a root that does not exist yet: the download makes it
    assert steps[0].parameters["download"] is True and steps[0].parameters["data_root"] == str(new.resolve())
    fetched = []
    monkeypatch.setattr(data, "download", lambda name, root: fetched.append((name, root)))
    assert main(["--dataset", "voc", "--data-root", str(new), "--download", "--notebooks", "02", "--seeds", "0",
                 "--profile", "tiny", "--notebooks-dir", str(nb_dir)]) == 2  # nothing fetched here: the check fails
    assert fetched == [("voc", str(new.resolve()))]
    assert "download" not in _plan(nb_dir, "--notebooks", "02", "--seeds", "0")[0].parameters


def test_a_missing_named_weights_file_stops_the_study_before_it_runs(nb_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code, _, err = _run(capsys, "--profile", "paper", "--notebooks", "02", "04", "--seeds", "0", "--notebooks-dir",
                        str(nb_dir), "--results-dir", str(tmp_path / "res"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "deeplab_weights COCO_WITH_VOC_LABELS_V1" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert "--download" in err and not (tmp_path / "res").exists()
    # notebook 06 alone: its references' weights are checked (and fetched with --download) before it runs too
    code, _, err = _run(capsys, "--profile", "paper", "--notebooks", "06", "--seeds", "0", "--notebooks-dir",
                        str(nb_dir), "--results-dir", str(tmp_path / "res"))
    assert code == 2 and "deeplab_weights COCO_WITH_VOC_LABELS_V1" in err, err


@pytest.mark.parametrize("argv,match", [
    (["--dataset", "voc"], "needs --data-root"),
    (["--dataset", "all", "--data-root", "/tmp"], "NAME=DIR"),
    (["--dataset", "cityscapes", "--data-root", "/no/such/dir"], "/no/such/dir"),
    (["--notebooks", "07"], "unknown notebook"),
    (["--seeds", "1", "1"], "repeated"),
    (["--notebooks-dir", "/no/such/dir"], "not found"),
    (["--notebooks", "06", "--ablations", "rmi radius 9"], r"--ablations: unknown ablations \['rmi radius 9'\]"),
])
def test_plan_rejects_bad_options(nb_dir, argv, match):
    with pytest.raises(UsageError, match=match):
        _plan(nb_dir, *argv)


def test_plan_needs_no_root_without_use_case_notebooks(nb_dir):
    assert [s.key for s in _plan(nb_dir, "--dataset", "voc", "--notebooks", "01", "05")] == ["01", "05"]


# ------------------------------------------------------------------------------ command line

@pytest.mark.parametrize("argv,needle", [
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--profile", "huge"], "invalid choice: 'huge'"),
    (["--epochs", "0"], "positive integer"),
    (["--seeds", "-1"], "--seeds: must be >= 0"),
    (["--dataset", "voc"], "needs --data-root"),
    (["--dataset", "voc", "--data-root", "/no/such/dir"], "/no/such/dir"),
    (["--kernel", "no-such-kernel"], "make setup"),
    (["--device", "tpu"], "tpu"),
])
def test_bad_options_exit_2_with_one_line(nb_dir, capsys, argv, needle):
    code, _, err = _run(capsys, *argv, "--notebooks-dir", str(nb_dir))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_wrong_dataset_layout_fails_before_anything_runs(tmp_path, capsys):
    empty = tmp_path / "voc"
    empty.mkdir()
    nb = write_notebooks(tmp_path / "nb")
    code, _, err = _run(capsys, "--dataset", "voc", "--data-root", str(empty), "--notebooks-dir", str(nb),
                        "--results-dir", str(tmp_path / "res"))
    assert code == 2 and "voc at" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()


# ------------------------------------------------------------------- execution with papermill

@pytest.mark.slow
def test_runner_executes_notebooks_with_parameters_env_and_cwd(tmp_path, capfd, monkeypatch):
    nb = write_notebooks(tmp_path / "nb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MISTUDY_PROGRESS", raising=False)
    code, out, err = _run(capfd, "--workers", "1", "--notebooks", "01", "03", "05", "--notebooks-dir", str(nb),
                          "--seeds", "2", "--epochs", "5", "--results-dir", "res", "--figures-dir", "figs")
    assert code == 0, err
    res = tmp_path / "res"
    rec = json.loads((res / "03-synthetic-2.json").read_text())
    assert rec == {"dataset": "synthetic", "seed": 2, "profile": "quick", "config": {"epochs": 5}, "data_root": None,
                   "figures_dir": str(tmp_path / "figs"), "progress": "log", "cwd": str(nb)}
    assert json.loads((res / "05-none--1.json").read_text())["figures_dir"] == str(tmp_path / "figs")
    for path in ("notebooks/01_information_theory.ipynb", "notebooks/synthetic/seed2/03_rmi.ipynb",
                 "notebooks/05_comparison.ipynb"):
        executed = nbformat.read(res / path, as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells), path
    assert "study finished: 3 tasks" in out
    assert "MISTUDY_PROGRESS" not in os.environ  # restored after the study
    # the console: one line per notebook with the study's progress and the time left; the notebooks' own output
    # (and no papermill banners) in the log file
    lines = out.strip().splitlines()
    assert len(lines) == 5, out  # the header, three notebooks, the end
    assert lines[1].startswith("[1/3] 01_information_theory: done in ") and "33% of the study" in lines[1]
    assert lines[3].startswith("[3/3] 05_comparison: done in ") and "100% of the study" in lines[3]
    assert "estimating" in lines[2]  # 05 is the only notebook of its kind: not guessed from 01 and 03
    assert "Executing" not in out and "the output of" not in out
    assert "[IPKernelApp]" not in err and "Traceback" not in err  # the kernels' own stderr goes to the log
    log = (res / "study.log").read_text()
    assert "the output of 03" in log and "===== 03_rmi (synthetic, seed 2)" in log


@pytest.mark.slow
def test_failing_notebook_stops_the_study_and_names_the_cell(tmp_path, capsys):
    nb = write_notebooks(tmp_path / "nb", fail={"02": "raise ValueError('boom: 42 is not a shape')"})
    res = tmp_path / "res"
    code, out, err = _run(capsys, "--workers", "1", "--notebooks", "01", "02", "03", "--seeds", "0", "--notebooks-dir",
                          str(nb), "--results-dir", str(res), "--figures-dir", str(tmp_path / "figs"))
    assert code == 1
    first = err.strip().splitlines()[0]
    assert "02_baseline (synthetic, seed 0)" in first and "ValueError: boom: 42 is not a shape" in first
    assert "cell [" in first and str(res / "notebooks" / "synthetic" / "seed0" / "02_baseline.ipynb") in first
    assert (nb / "01-none--1.json").is_file()  # 01 (results_dir not injected) finished before the failure
    assert (res / "notebooks" / "01_information_theory.ipynb").is_file()
    assert not (res / "notebooks" / "synthetic" / "seed0" / "03_rmi.ipynb").exists()  # never started
    assert not list(res.glob("03-*.json"))


# ------------------------------------------------------------------------------ train_or_load

def test_train_or_load_reuses_a_finished_run_of_the_same_config(tmp_path, monkeypatch):
    def cfg(**kw):
        return TrainConfig(**{**dict(dataset="synthetic", train_samples=6, val_samples=4, resize_size=36,
                                     crop_size=32, unet_features=4, epochs=1, batch_size=3, device="cpu",
                                     progress="none", results_dir=str(tmp_path)), **kw})

    first = train_or_load(cfg())
    assert Path(first["run_dir"]) == tmp_path / "synthetic" / "baseline" / "seed0"

    def no_training(_cfg):
        raise AssertionError("trained again")

    monkeypatch.setattr(train_module, "train", no_training)
    again = train_or_load(cfg(progress="log", device="auto"))  # presentation and device do not matter
    assert again == {**first, "reused": True} and "reused" not in first
    with pytest.raises(FileExistsError, match="lr: saved None, now 0.5") as info:
        train_or_load(cfg(lr=0.5))
    assert "resume=True" not in str(info.value)  # lr cannot change on resume
    with pytest.raises(FileExistsError, match="resume=True"):
        train_or_load(cfg(epochs=3))  # more epochs: resuming extends the run


def test_notebook_defaults_resolve_to_the_project_folders(tmp_path, monkeypatch):
    for var in ("MISTUDY_RESULTS", "MISTUDY_FIGURES"):  # set for the nbval run by notebooks/conftest.py
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # papermill from anywhere: results/ and figures/ stay the project's
    repo = Path(__file__).resolve().parent.parent
    assert runs.project_path("results") == repo / "results"
    monkeypatch.setenv("MISTUDY_RESULTS", str(tmp_path / "elsewhere"))
    assert runs.project_path("results") == tmp_path / "elsewhere"
    monkeypatch.delenv("MISTUDY_RESULTS")
    monkeypatch.setattr(runs, "PROJECT_ROOT", tmp_path / "site-packages")  # no source checkout
    assert runs.project_path("figures") == tmp_path / "figures"


# ----------------------------------------------------------------------------------- executors

def test_tasks_know_what_they_need_and_never_share_a_run_directory(nb_dir, tmp_path):
    args = build_parser().parse_args(["--notebooks-dir", str(nb_dir), "--notebooks", "02", "03", "05", "06",
                                      "--seeds", "0", "1", "--profile", "tiny", "--results-dir", str(tmp_path)])
    tasks = study.tasks(plan(args), args, expand_ablations=True)
    keys = [t.key for t in tasks]
    assert len(keys) == len(set(keys))
    by_key = {t.key: t for t in tasks}
    assert set(by_key["05"].needs) == {"02 synthetic seed0", "03 synthetic seed0", "02 synthetic seed1",
                                       "03 synthetic seed1"}
    notebook_06 = by_key["06 synthetic ablations"]
    trains = [t for t in tasks if t.key.startswith("train ")]
    assert trains and set(t.key for t in trains) <= set(notebook_06.needs)
    assert "05" in notebook_06.needs  # both write RESULTS.md: 06's page, written last, has every table
    # the grid's references are the 02-03 notebooks' runs: never a second task on them
    run_dirs = [d for t in tasks for d in t.run_dirs]
    assert len(run_dirs) == len(set(run_dirs))
    assert str(tmp_path / "synthetic" / "baseline" / "seed0") in by_key["02 synthetic seed0"].run_dirs
    from mistudy.executors import TrainTask, check_one_writer

    twice = TrainTask("a", "a", {}, run_dirs=("/r/x",)), TrainTask("b", "b", {}, run_dirs=("/r/x",))
    with pytest.raises(ValueError, match="would both write /r/x"):
        check_one_writer(list(twice))


@pytest.mark.slow
def test_a_failing_task_on_ray_is_reported_while_the_others_finish(tmp_path, capsys):
    pytest.importorskip("ray")
    nb = write_notebooks(tmp_path / "nb", fail={"03": "raise ValueError('boom in 03')"})
    res = tmp_path / "res"
    code, out, err = _run(capsys, "--executor", "ray", "--workers", "2", "--notebooks", "02", "03", "05",
                          "--seeds", "0", "1", "--notebooks-dir", str(nb), "--results-dir", str(res),
                          "--figures-dir", str(tmp_path / "figs"))
    assert code == 1
    assert "03_rmi (synthetic, seed 0) failed in cell [" in err and "ValueError: boom in 03" in err
    assert "2 task(s) failed; the other tasks finished" in err
    assert (res / "02-synthetic-0.json").is_file() and (res / "02-synthetic-1.json").is_file()
    assert "[skip] 05_comparison: not run, because 03_rmi" in out
    assert "failed" in out and "done" in out
    # a finished task's line counts the task that took its place (it said "1 running" while two ran)
    assert any("done in" in line and "2 running" in line for line in out.splitlines())
    failed_line = next(i for i, line in enumerate(out.splitlines()) if "03_rmi (synthetic, seed 0): FAILED" in line)
    assert "ValueError: boom in 03" in out.splitlines()[failed_line + 1]  # the reason beside the FAILED line


@pytest.mark.slow
def test_a_tiny_study_on_a_two_worker_ray_cluster_equals_the_sequential_one(tmp_path, capsys, monkeypatch):
    """Bit-identical tables and per-image scores: the same runs, whichever executor trains them (one torch thread
    per run in both), the ablation runs as Ray tasks of their own.  The parallel study is the default executor's
    choice on a 2-core machine with memory to spare: two tasks at once, one thread each."""
    pytest.importorskip("ray")
    import numpy as np

    from mistudy import executors

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the sequential study's threads (the parallel one sets its own)
    monkeypatch.setattr(machine, "available_cores", lambda: 2)
    monkeypatch.setattr(machine, "available_memory", lambda: 24 * executors.GIB)
    common = ["--profile", "tiny", "--notebooks", "02", "03", "05", "06", "--seeds", "0", "1", "--device", "cpu"]
    for name, extra in (("sequential", ["--workers", "1"]), ("ray", [])):
        code, out, err = _run(capsys, *common, *extra, "--results-dir", str(tmp_path / name / "results"),
                              "--figures-dir", str(tmp_path / name / "figures"))
        assert code == 0, err
        assert out.startswith("mistudy study: ") and \
            ("2 at once, 1 thread(s) each" in out.splitlines()[0]) == (name == "ray"), out
    figures = {n: tmp_path / n / "figures" for n in ("sequential", "ray")}
    for table in ("comparison_table.csv", "comparison_table_beyond_miou.csv", "synthetic_06_ablations.csv"):
        assert (figures["ray"] / table).read_text() == (figures["sequential"] / table).read_text(), table
    seq = sorted((tmp_path / "sequential" / "results").rglob("per_image.npz"))
    assert len(seq) >= 8
    for path in seq:
        other = tmp_path / "ray" / "results" / path.relative_to(tmp_path / "sequential" / "results")
        with np.load(path) as a, np.load(other) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{path}: {key}")


def test_workers_follow_the_cores_the_memory_the_gpus_and_the_study():
    from mistudy.executors import GIB, choose_workers

    quick = int(2.5 * GIB)
    two_core = choose_workers(10, cores=2, memory=24 * GIB, task_memory=quick)  # this project's CPU machines
    assert (two_core.workers, two_core.threads) == (2, 1) and "bound by the cores" in two_core.why
    wide = choose_workers(10, cores=16, memory=64 * GIB, task_memory=quick)  # more cores than tasks at once
    assert (wide.workers, wide.threads) == (10, 1) and "bound by the tasks" in wide.why
    eight = choose_workers(10, cores=8, memory=64 * GIB, task_memory=quick)
    assert (eight.workers, eight.threads) == (8, 1)
    short = choose_workers(10, cores=16, memory=8 * GIB, task_memory=quick)  # (8 - 1 reserved) // 2.5: two tasks
    assert (short.workers, short.threads) == (2, 8) and "bound by the memory" in short.why
    little = choose_workers(10, cores=2, memory=3 * GIB, task_memory=quick)
    assert (little.workers, little.threads) == (1, 2)  # one at a time, every core its thread
    gpus = choose_workers(10, cores=32, memory=128 * GIB, task_memory=6 * GIB, gpus=4)
    assert (gpus.workers, gpus.threads) == (4, 8) and "bound by the GPUs" in gpus.why
    assert choose_workers(1, cores=16, memory=64 * GIB, task_memory=quick).workers == 1  # 05 alone


def test_the_default_executor_runs_tasks_at_once_and_workers_1_one_after_another(nb_dir, tmp_path, monkeypatch,
                                                                                  capsys):
    import torch

    from mistudy import executors

    monkeypatch.setattr(machine, "available_cores", lambda: 2)
    monkeypatch.setattr(machine, "available_memory", lambda: 24 * executors.GIB)
    started = []
    monkeypatch.setattr(executors, "start_ray", lambda *a: started.append(a))  # the local cluster, not started here

    def choose(*argv):
        args = build_parser().parse_args(["--notebooks-dir", str(nb_dir), "--results-dir", str(tmp_path), *argv])
        steps = plan(args)
        how = study._choose_executor(args, steps, torch.device("cpu"))
        return args, how

    args, how = choose()  # the quick study: 01 and nine 02-04 notebooks at once at most, then 05
    assert executors.widest(study.tasks(plan(args), args, expand_ablations=True)) == 10
    assert (args.executor, args.workers, args.cpus_per_task, args.gpus_per_task) == ("ray", 2, 1, 0.0)
    assert how.startswith("2 at once, 1 thread(s) each (2 cores, 24.0 GiB available") and "bound by the cores" in how
    assert started == [(None, 2, 1, 0.0)]
    args, how = choose("--workers", "1")
    assert (args.executor, how) == ("sequential", "one after another")
    args, how = choose("--executor", "sequential")
    assert (args.executor, how) == ("sequential", "one after another")
    args, how = choose("--notebooks", "05")  # one task: nothing to run beside it
    assert args.executor == "sequential" and how.startswith("one after another (")
    monkeypatch.setattr(machine, "available_cores", lambda: 8)
    args, how = choose("--workers", "2")  # the cores shared out
    assert (args.executor, args.workers, args.cpus_per_task) == ("ray", 2, 4) and how == "2 at once, 4 thread(s) each"
    monkeypatch.setattr(machine, "available_memory", lambda: 4 * executors.GIB)  # (4 - 1) // 2.5: one task
    args, how = choose()
    assert args.executor == "sequential" and "bound by the memory" in how
    with pytest.raises(UsageError, match="--executor sequential runs one task at a time; --workers 2"):
        choose("--executor", "sequential", "--workers", "2")
    if study._has_ray():  # a cluster: its resources decide; a task's share of a node is not known unless given
        args, how = choose("--executor", "ray", "--address", "10.0.0.1:6379")
        assert args.cpus_per_task is None and how == "on the Ray cluster at 10.0.0.1:6379, 1 thread(s) each"
        args, how = choose("--executor", "ray", "--address", "10.0.0.1:6379", "--cpus-per-task", "4")
        assert args.cpus_per_task == 4 and how.endswith("4 thread(s) each")
    capsys.readouterr()
    monkeypatch.setattr(machine, "available_memory", lambda: 24 * executors.GIB)
    monkeypatch.setattr(study, "_has_ray", lambda: False)  # a plain `pip install .`: no Ray
    args, how = choose()
    assert (args.executor, how) == ("sequential", "one after another")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Ray is not installed, so the tasks run one after another" in err
    with pytest.raises(UsageError, match="--executor ray needs Ray"):
        choose("--executor", "ray")
    monkeypatch.setattr(study, "_has_ray", lambda: True)

    def fails(*_):
        raise executors.RayStartError("Ray did not start: Exception: The current node timed out during startup.")

    monkeypatch.setattr(executors, "start_ray", fails)  # an overloaded machine: the raylet did not register in time
    args, how = choose()
    assert (args.executor, how) == ("sequential", "one after another")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Ray did not start: " in err and "so the tasks run one after another" in err


def test_notebook_01_has_a_cell_time_limit_and_the_training_notebooks_none(nb_dir, tmp_path):
    args = build_parser().parse_args(["--notebooks-dir", str(nb_dir), "--results-dir", str(tmp_path), "--seeds", "0"])
    by_key = {t.key: t for t in study.tasks(plan(args), args, expand_ablations=False)}
    assert by_key["01"].cell_timeout == study.CELL_TIMEOUT["01"] > 0
    assert by_key["04 synthetic seed0"].cell_timeout is None and by_key["05"].cell_timeout is None


@pytest.mark.slow
def test_a_hung_cell_fails_its_task_in_one_line_naming_the_notebook_and_the_cell(tmp_path):
    """A cell that never returns (as 01's widget cell once did under papermill) ends the task at the cell's time
    limit: one line with the notebook, the cell's number and source, and the partly executed notebook."""
    from mistudy.executors import NotebookTask, TaskError, execute

    cells = [new_code_cell("x = 1"), new_code_cell("import time\ntime.sleep(600)  # hangs"), new_code_cell("y = 2")]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "mistudy", "display_name": "Python (mistudy)",
                                                            "language": "python"}})
    nbformat.write(nb, tmp_path / "hang.ipynb")
    task = NotebookTask("01", "01_hang", tmp_path / "hang.ipynb", tmp_path / "out" / "hang.ipynb", {},
                        cell_timeout=3)
    with pytest.raises(TaskError) as info:
        execute(task, "mistudy", str(tmp_path), str(tmp_path / "log"))
    message = str(info.value)
    assert message.startswith("notebook 01_hang timed out in cell [2] ('import time | time.sleep(600)  # hangs'): "
                              "no reply after 3 s") and str(task.output) in message and "\n" not in message
    executed = nbformat.read(task.output, as_version=4)
    assert executed.cells[0].execution_count == 1 and executed.cells[2].execution_count is None


@pytest.mark.slow
def test_a_task_runs_its_kernel_with_its_share_of_threads_and_leaves_the_environment_as_it_was(tmp_path, monkeypatch):
    from mistudy.executors import NotebookTask, execute

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    code = ("import os, torch\nfrom pathlib import Path\nfrom mistudy.io import machine\n"
            "Path('threads.txt').write_text(f\"{os.environ['OMP_NUM_THREADS']} {torch.get_num_threads()} \"\n"
            "                               f\"{machine.available_cores()}\")")
    nb = new_notebook(cells=[new_code_cell(code)], metadata={"kernelspec": {"name": "mistudy", "language": "python",
                                                                            "display_name": "Python (mistudy)"}})
    nbformat.write(nb, tmp_path / "threads.ipynb")
    task = NotebookTask("02 x", "02_threads", tmp_path / "threads.ipynb", tmp_path / "out.ipynb", {})
    execute(task, "mistudy", str(tmp_path), None, threads=1, cores=1)  # (torch uses no more threads than cores)
    assert (tmp_path / "threads.txt").read_text() == "1 1 1"  # its loader workers count its one core
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ
    assert machine.TASK_CORES not in os.environ


@pytest.mark.skipif(os.name != "posix", reason="Unix sockets: POSIX only")
def test_kernel_sockets_fall_back_to_tcp_where_no_folder_gives_a_short_enough_path(tmp_path, monkeypatch):
    """A socket path longer than the kernel allows (a cluster's long $TMPDIR) would kill every kernel."""
    import tempfile

    from mistudy import executors

    long = tmp_path / ("x" * 90)
    long.mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(long))
    assert executors._socket_parent() == "/tmp"  # the short one
    with executors._kernel_sockets() as config:
        ip = config.KernelManager.ip
        assert ip.startswith("/tmp/mistudy-kernel-") and len(ip + "-99999") <= executors.SOCKET_PATH_MAX
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # no usable /tmp either
    assert executors._socket_parent() is None
    with executors._kernel_sockets() as config:
        assert "KernelManager" not in config  # Jupyter's default, TCP


def test_a_study_refuses_more_loader_workers_than_each_task_holds(nb_dir, tmp_path, capsys):
    code = main(["--notebooks-dir", str(nb_dir), "--notebooks", "02", "--seeds", "0", "--profile", "tiny",
                 "--executor", "ray", "--workers", "2", "--cpus-per-task", "1", "--set", "num_workers=2",
                 "--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert code == 2 and "--set num_workers=2: more loader workers than the 1 core(s) each task holds" in err
    assert not (tmp_path / "r").exists()  # refused before anything ran


def test_a_tasks_share_of_cores_bounds_its_loader_workers_on_a_gpu(monkeypatch):
    """Eight one-GPU tasks on a 16-core node would otherwise start min(8, 16) loader workers each: 64 processes."""
    import torch

    from mistudy.training.loaders import make_loader

    cores = machine.available_cores()
    cfg = TrainConfig(dataset="synthetic", device="cpu", batch_size=2)
    data = torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4, 8, 8, dtype=torch.long))
    monkeypatch.setenv(machine.TASK_CORES, "1")
    assert machine.available_cores() == 1
    assert make_loader(data, cfg, train=True, device=torch.device("cuda")).num_workers == 1
    monkeypatch.setenv(machine.TASK_CORES, str(cores + 5))  # a share larger than the machine: the machine
    assert machine.available_cores() == cores
    monkeypatch.setenv(machine.TASK_CORES, "lots")  # not a count: ignored
    assert machine.available_cores() == cores


@pytest.mark.skipif(os.name != "posix", reason="Unix sockets: POSIX only (elsewhere Jupyter's TCP default)")
def test_a_task_kernel_talks_over_private_unix_sockets_never_over_tcp_ports(tmp_path):
    """Jupyter's TCP default releases the ports it picked before the kernel binds them: two kernels started at once
    can draw one port and one dies (CI lost a task of a two-worker Ray study so).  Unix sockets in a folder of the
    task's own take no ports at all; the folder is removed after."""
    from mistudy.executors import NotebookTask, execute

    code = ("import json\nfrom pathlib import Path\nfrom ipykernel import get_connection_info\n"
            "Path('connection.json').write_text(get_connection_info())")
    nb = new_notebook(cells=[new_code_cell(code)], metadata={"kernelspec": {"name": "mistudy", "language": "python",
                                                                            "display_name": "Python (mistudy)"}})
    nbformat.write(nb, tmp_path / "connection.ipynb")
    task = NotebookTask("02 x", "02_connection", tmp_path / "connection.ipynb", tmp_path / "out.ipynb", {})
    execute(task, "mistudy", str(tmp_path), None, threads=1)
    info = json.loads((tmp_path / "connection.json").read_text())
    assert info["transport"] == "ipc"
    sockets = Path(info["ip"]).parent
    assert Path(info["ip"]).is_absolute() and sockets.name.startswith("mistudy-kernel-") and tmp_path not in sockets.parents
    assert not sockets.exists()  # removed with the kernel


@pytest.mark.slow
def test_a_training_task_continues_an_existing_run_when_the_study_resumes(tmp_path):
    """The Ray executor trains each ablation run as a task; under --resume an interrupted run continues and a
    finished one is extended to a longer profile (the long study extends the standard runs so), never refused."""
    from dataclasses import asdict

    from mistudy.executors import TrainTask, execute

    cfg = TrainConfig(dataset="synthetic", train_samples=8, val_samples=4, resize_size=36, crop_size=32,
                      unet_features=4, epochs=1, batch_size=4, device="cpu", progress="none", seed=0,
                      run_dir=str(tmp_path / "run"))
    train_or_load(cfg)
    longer = runs.resume_if_started(cfg.replace(epochs=2))  # what the study plans under --resume
    assert longer.resume
    execute(TrainTask("train x", "x", asdict(longer), run_dirs=(str(tmp_path / "run"),)), "mistudy", str(tmp_path),
            None, threads=1)
    assert [row["epoch"] for row in runs.load_history(tmp_path / "run")] == [1, 2]
    assert runs.load_metrics(tmp_path / "run")["epochs"] == 2


def test_the_time_left_is_estimated_per_kind_of_task_and_never_guessed_for_untimed_kinds():
    import io

    from mistudy.executors import NotebookTask, Progress

    def task(key):
        return NotebookTask(key, key, Path("nb.ipynb"), Path("out.ipynb"), {})

    tasks = [task("02 synthetic seed0"), task("02 synthetic seed1"), task("02 synthetic seed2"), task("04 synthetic seed0")]
    out = io.StringIO()
    progress = Progress(tasks, workers=1, out=out)
    progress.finished(tasks[0], 120.0)
    assert "at least 4 min left: 1 task(s) not yet timed" in out.getvalue()  # two more 02s at 2 min; 04 unknown
    progress.finished(tasks[3], 600.0)
    assert out.getvalue().splitlines()[-1].endswith("about 4 min left)")
    progress.finished(tasks[1], 120.0)
    progress.finished(tasks[2], 120.0)
    assert "100% of the study, nothing left" in out.getvalue().splitlines()[-1]


def test_a_task_that_found_its_runs_finished_says_so_and_does_not_shorten_the_time_left(tmp_path):
    """A resumed study's first tasks reuse finished runs in seconds; timed as training tasks they made a study of
    hours say "at least 1 min left"."""
    import io
    import os
    import time

    from mistudy.executors import NotebookTask, Progress

    def task(key, run_dir):
        return NotebookTask(key, key, Path("nb.ipynb"), Path("out.ipynb"), {}, run_dirs=(str(run_dir),))

    old, new = tmp_path / "old", tmp_path / "new"
    tasks = [task("02 synthetic seed0", old), task("02 synthetic seed1", new), task("02 synthetic seed2", new)]
    (old / "metrics.json").parent.mkdir()
    (old / "metrics.json").write_text("{}")
    past = time.time() - 3600
    os.utime(old / "metrics.json", (past, past))  # finished an hour before the study
    out = io.StringIO()
    progress = Progress(tasks, workers=1, out=out)
    for t in tasks:
        progress.start(t)
    progress.finished(tasks[0], 14.0)
    assert "done in 14 s (its runs were finished: reused)" in out.getvalue()
    assert "time left: estimating" in out.getvalue()  # 14 s is no training run's time
    new.mkdir()
    (new / "metrics.json").write_text("{}")  # written while the task ran: trained
    progress.finished(tasks[1], 600.0)
    last = out.getvalue().splitlines()[-1]
    assert "done in 600 s (" in last and "about 10 min left" in last


def test_each_profile_declares_its_seeds_and_the_tuning_grid_never_uses_them(nb_dir, tmp_path):
    from mistudy.report import tuning
    from mistudy.training.config import STUDY_SEEDS

    assert all(STUDY_SEEDS[p] >= 5 for p in ("standard", "long", "paper"))  # every headline budget: five seeds
    assert [s.parameters["seed"] for s in _plan(nb_dir, "--notebooks", "02", "--profile", "long")] == [0, 1, 2, 3, 4]
    assert [s.parameters["seed"] for s in _plan(nb_dir, "--notebooks", "02")] == [0, 1, 2]  # quick: the first look
    grid = _plan(nb_dir, "--notebooks", "06", "--grids", "tuning", "--profile", "long", "--results-dir", str(tmp_path))
    assert grid[0].parameters["seeds"] == list(tuning.TUNING_SEEDS) and grid[0].parameters["grid"] == "tuning"
    assert not set(tuning.TUNING_SEEDS) & set(range(max(STUDY_SEEDS.values())))
    with pytest.raises(UsageError, match=r"seeds \[1\] are the long study's own seeds"):
        _plan(nb_dir, "--notebooks", "06", "--grids", "tuning", "--profile", "long", "--seeds", "1", "100")
    with pytest.raises(UsageError, match="run the tuning grid on its own"):  # 02 would report the seeds it tunes on
        _plan(nb_dir, "--notebooks", "02", "06", "--grids", "tuning", "--seeds", "7", "8")


def test_the_tuned_recipe_trains_each_use_case_at_the_rate_its_tuning_table_chose(nb_dir, tmp_path):
    from mistudy.io.tables import write_table
    from mistudy.report import tuning

    figures = tmp_path / "figures"
    argv = ["--notebooks", "02", "03", "04", "--seeds", "0", "--profile", "tiny", "--recipe", "tuned",
            "--results-dir", str(tmp_path / "res")]
    with pytest.raises(UsageError, match="tuning table .*_06_tuning.csv.*--grids tuning"):
        _plan(nb_dir, *argv, "--figures-dir", str(figures))
    rows = [{"use_case": uc, "lr": lr, "chosen": lr == best} for uc, best in
            (("baseline", 1e-3), ("rmi", 3e-4), ("mutual", 1e-4)) for lr in tuning.LEARNING_RATES]
    write_table(rows, figures / tuning.table_stem("synthetic"))
    steps = _plan(nb_dir, *argv, "--figures-dir", str(figures))
    assert [s.parameters["config"]["lr"] for s in steps] == [1e-3, 3e-4, 1e-4]
    with pytest.raises(UsageError, match="notebook 06's grids vary the profile's shared recipe"):
        _plan(nb_dir, *argv, "--figures-dir", str(figures), "--notebooks", "06")
    write_table(rows[:4], figures / tuning.table_stem("synthetic"))  # the grid stopped after the baseline's rates
    with pytest.raises(UsageError, match=r"chose no rate for \['rmi', 'mutual'\]"):
        _plan(nb_dir, *argv, "--figures-dir", str(figures))


def test_a_results_page_command_names_seeds_other_than_the_grids_own():
    """The command beside a table must remake it: the long tuning check ran on one tuning seed (--seeds 100), which
    the tuning grid's default (seeds 100 and 101) would not; the default seeds of each grid are left out."""
    from mistudy.report import results_page

    def command(profile, seeds, stem):
        return results_page.study_command(profile, {"notebook": "06_ablations.ipynb", "seed": seeds}, None, stem)

    assert command("long", [100], "synthetic_06_tuning") == \
        "python -m mistudy study --profile long --seeds 100 --notebooks 06 --grids tuning"
    assert "--seeds" not in command("quick", [100, 101], "synthetic_06_tuning")
    assert "--seeds" not in command("long", [0, 1, 2, 3, 4], "synthetic_06_controls")
    assert "--seeds 0 1" in command("quick", [0, 1], "synthetic_06_ablations")
    assert results_page.study_command("long", {"seed": [0, 1, 2]}) == "python -m mistudy study --profile long --seeds 0 1 2"


def test_the_tuned_recipe_can_take_its_rates_from_another_profiles_tuning_table(nb_dir, tmp_path, monkeypatch):
    """--rates-from quick: a long study at the rates tuned at quick (the tuning grid does not fit the long budget).
    The rates come from figures/quick/, not the study's own table (which holds other choices); the tuned study's
    folder records the source, and its tables' command names it; --rates-from without --recipe tuned is refused."""
    from mistudy import study
    from mistudy.io.tables import write_table
    from mistudy.report import comparison, results_page, tuning

    monkeypatch.setenv("MISTUDY_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("MISTUDY_RESULTS", str(tmp_path / "results"))
    for profile, best in (("quick", (1e-3, 1e-3, 3e-4)), ("long", (3e-4, 3e-4, 1e-4))):
        rows = [{"use_case": uc, "lr": lr, "chosen": lr == b} for uc, b in zip(("baseline", "rmi", "mutual"), best)
                for lr in tuning.LEARNING_RATES]
        write_table(rows, tmp_path / "figures" / profile / tuning.table_stem("synthetic"))
    argv = ["--notebooks", "02", "03", "04", "--seeds", "0", "--profile", "long", "--recipe", "tuned"]
    assert [s.parameters["config"]["lr"] for s in _plan(nb_dir, *argv)] == [3e-4, 3e-4, 1e-4]  # its own table
    assert [s.parameters["config"]["lr"] for s in _plan(nb_dir, *argv, "--rates-from", "quick")] == [1e-3, 1e-3, 3e-4]
    with pytest.raises(UsageError, match="--rates-from .* add --recipe tuned"):
        _plan(nb_dir, "--notebooks", "02", "--profile", "long", "--rates-from", "quick")

    monkeypatch.setattr(study, "_run", lambda *a, **k: 0)  # the folder is locked and noted; nothing trained
    assert study.main(["--notebooks-dir", str(nb_dir), *argv, "--rates-from", "quick"]) == 0
    tuned = tmp_path / "results" / "long" / "tuned"
    prov = comparison.comparison_provenance(tuned, ["synthetic"], "best_miou")
    assert prov["rates_from"] == "quick"
    assert results_page.study_command("long", prov, "tuned").endswith("--recipe tuned --rates-from quick")
    assert results_page.study_command("long", {"rates_from": "long"}, "tuned").endswith("--recipe tuned")
    assert "rates_from" not in comparison.comparison_provenance(tmp_path / "results" / "long", ["synthetic"],
                                                                 "best_miou")  # the shared recipe's folder


def test_the_tuned_recipe_takes_the_shared_runs_of_a_use_case_whose_rate_did_not_change(nb_dir, tmp_path,
                                                                                         monkeypatch, capsys):
    """Tuning chose the shared rate for the baseline: its finished shared runs are the tuned recipe's too (linked,
    not trained again); RMI's tuned rate differs, so its run is trained anew."""
    from mistudy import study
    from mistudy.io.tables import write_table
    from mistudy.report import tuning
    from mistudy.training.config import PROFILES, study_config
    from mistudy.training.train import train

    monkeypatch.setenv("MISTUDY_RESULTS", str(tmp_path / "results"))
    figures = tmp_path / "figures"
    shared_lr = PROFILES["tiny"]["lr"]
    rows = [{"use_case": uc, "lr": lr, "chosen": lr == best} for uc, best in
            (("baseline", shared_lr), ("rmi", 3e-4), ("mutual", 1e-4)) for lr in tuning.LEARNING_RATES]
    write_table(rows, figures / tuning.table_stem("synthetic"))
    shared = tmp_path / "results" / "tiny"
    for uc in ("baseline", "rmi"):  # the shared recipe's runs, finished
        train(study_config(uc, "tiny", {"epochs": 1}, seed=0, device="cpu", progress="none", results_dir=str(shared)))
    args = build_parser().parse_args(["--notebooks-dir", str(nb_dir), "--notebooks", "02", "03", "--seeds", "0",
                                      "--profile", "tiny", "--recipe", "tuned", "--epochs", "1",
                                      "--figures-dir", str(figures)])
    steps = plan(args)
    study._link_shared_runs(args, steps)
    tuned = shared / "tuned" / "synthetic"
    assert (tuned / "baseline" / "seed0" / "metrics.json").is_file() and not (tuned / "rmi").exists()
    assert "1 run(s) at the shared rate taken from" in capsys.readouterr().out
    study._link_shared_runs(args, steps)  # again: nothing more to take, nothing said
    assert "taken from" not in capsys.readouterr().out


def test_every_task_runs_its_kernel_headless_wherever_it_runs_and_restores_the_environment(tmp_path, monkeypatch):
    """One progress line per epoch and no widgets (notebook 01's sliders stalled papermill for a whole cell time
    limit under load), set by the task itself: the default executor started its Ray workers before the study set
    anything, so its kernels drew progress bars, and the bars' extra loader iterator changed mutual learning's
    numbers.  The caller's environment is as it was afterwards."""
    from mistudy import executors
    from mistudy.executors import NotebookTask

    seen = {}

    def execute_notebook(task, kernel, cwd, log_path):
        seen.update({name: os.environ.get(name) for name in ("MISTUDY_PROGRESS", "MISTUDY_WIDGETS")})

    monkeypatch.setattr(executors, "_execute_notebook", execute_notebook)
    monkeypatch.delenv("MISTUDY_WIDGETS", raising=False)
    monkeypatch.setenv("MISTUDY_PROGRESS", "bar")
    task = NotebookTask("01", "01_information_theory", tmp_path / "nb.ipynb", tmp_path / "out.ipynb", {})
    executors.execute(task, "mistudy", str(tmp_path), None, threads=1)
    assert seen == {"MISTUDY_PROGRESS": "log", "MISTUDY_WIDGETS": "off"}
    assert os.environ["MISTUDY_PROGRESS"] == "bar" and "MISTUDY_WIDGETS" not in os.environ


