"""`python -m mistudy study`: run the numbered notebooks headless with papermill, in order.

    01 information theory                       once
    02 baseline, 03 rmi, 04 mutual learning     for each dataset and seed
    05 comparison                               once, over every finished run in the results directory
    06 ablations                                opt-in (--notebooks 06)

Executed notebooks go to <results-dir>/notebooks/ (per dataset and seed for 02-04), runs to
<results-dir>/<dataset>/<use-case>/seed<k>/, figures and tables to <figures-dir>/; by default <results-dir> is the
project's results/<profile>/ and <figures-dir> figures/<profile>/ (01's theory figures: figures/).  The notebooks run in
notebooks/ (so their relative paths work) with the project's kernel "mistudy" and MISTUDY_PROGRESS=log (one line
per epoch instead of progress bars).  02-04 get the profile's name and a ``config`` dict of TrainConfig fields
(--set NAME=VALUE, any field; --epochs and --eval-protocol are shortcuts).

The console shows one line per finished notebook (or run) with the study's progress and the time left; the
notebooks' own output goes to <results-dir>/study.log (one file per task in <results-dir>/study-logs/ when tasks run
at once).  Executors (`mistudy.executors`): auto (default) -- as many tasks at once as this machine's cores, memory and
GPUs allow (`executors.choose_workers`), on a local Ray cluster, each with its share of the cores as threads; one
after another where that is one task, or where Ray is not installed (one line says so); sequential (--workers 1 or
--executor sequential) -- one after another, here: a failing notebook stops the study with the notebook's name and
the failing cell's error, what finished before stays; ray (--executor ray) -- every notebook and ablation run a task
of a Ray cluster (this machine's, or --address), a failing task reported while the others finish.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mistudy import data
from mistudy.io import machine
from mistudy.io.cli import OneLineParser, error_line, non_negative_float, non_negative_int, positive_int
from mistudy.methods.models import fetch_weights
from mistudy.report import tuning
from mistudy.training import runs
from mistudy.training.config import (
    DATASETS,
    DEFAULT_PROFILE_TEXT,
    PROFILE_HELP,
    PROFILES,
    USE_CASE_NOTEBOOKS,
    USE_CASES,
    TrainConfig,
    parse_assignments,
    resolve_profile,
    study_config,
    study_seeds,
)
from mistudy.training.runs import PROJECT_ROOT, default_figures_dir, default_results_dir

PER_RUN = {name[:2]: use_case for use_case, name in USE_CASE_NOTEBOOKS.items()}  # run once per dataset and seed
NOTEBOOKS = dict(sorted({
    "01": "01_information_theory.ipynb",
    **{key: f"{USE_CASE_NOTEBOOKS[use_case]}.ipynb" for key, use_case in PER_RUN.items()},
    "05": "05_comparison.ipynb",
    "06": "06_ablations.ipynb",
}.items()))
DEFAULT_NOTEBOOKS = ("01", *PER_RUN, "05")
# Seconds a cell of these notebooks may run before the study calls it hung (01: its slowest cell takes seconds; an
# ipywidgets cell was once seen never to return under papermill on a loaded machine, a known race in nbclient's
# wait for the reply of widget cells, jupyter/nbclient#312).  The training notebooks have no limit: a cell trains.
CELL_TIMEOUT = {"01": 600}
REAL_DATASETS = tuple(d for d in DATASETS if d != "synthetic")
# --dataset all: the paper's two benchmarks and the synthetic one (voc_aug is VOC with the larger training list)
ALL_DATASETS = tuple(d for d in DATASETS if d != "voc_aug")


def _default_notebooks_dir() -> Path:
    """The checkout's notebooks/, or, for a plain `pip install .`, the copies it installs in <prefix>/share."""
    checkout = PROJECT_ROOT / "notebooks"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "mistudy" / "notebooks"


DEFAULT_NOTEBOOKS_DIR = _default_notebooks_dir()
KERNEL = "mistudy"
PROG = "mistudy study"


# ------------------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Step:
    """One notebook execution: input notebook, executed copy, injected parameters, label for messages."""

    key: str  # "01".."05"
    notebook: Path
    output: Path
    parameters: dict
    label: str
    config: TrainConfig | None = None  # 02-04: the run's configuration, built once (`_run_config`)


class UsageError(ValueError):
    """A bad command-line option, found before anything runs (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Run the study's notebooks headless with papermill: 01, then 02-04 for "
                      "each dataset and seed, then 05.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="synthetic", choices=[*DATASETS, "all"], help="dataset(s) of 02-04")
    p.add_argument("--data-root", "--root", action="append", default=[], metavar="[NAME=]DIR",
                   help="root of a real dataset (VOC: the folder holding VOCdevkit/, voc_aug: and SBD/; Cityscapes: "
                        "the folder holding leftImg8bit/ and gtFine/); with --dataset all give NAME=DIR for each of "
                        f"{', '.join(REAL_DATASETS)} (--root: an alias, the old name of `mistudy train`)")
    p.add_argument("--download", action="store_true", help="fetch what the runs need and lack: PASCAL VOC 2012 (and "
                   "SBD for voc_aug) into its --data-root (torchvision), named weights (the paper profile's COCO DeepLabV3) into torch's "
                   "hub cache; without it nothing is downloaded")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=None, help="seeds of 02-04 and 06 (one run "
                   "each; the comparison's intervals need at least 2); default: the profile's declared number, 0..n-1 "
                   "(mistudy.training.config.STUDY_SEEDS), and for 06's tuning grid its own seeds (mistudy.report.tuning.TUNING_SEEDS)")
    p.add_argument("--recipe", default="shared", choices=list(tuning.RECIPES), help="02-04's learning rates: shared "
                   "(the profile's, one for every use-case) or tuned (each use-case its own, chosen by 06's tuning "
                   "grid on the selection split and read from its committed table; runs and figures then go to "
                   "results/<profile>/tuned/ and figures/<profile>/tuned/)")
    p.add_argument("--rates-from", default=None, choices=list(PROFILES), metavar="PROFILE",
                   help="--recipe tuned: the profile whose tuning table gives the rates (figures/<PROFILE>/; default: "
                        "the study's own), e.g. quick for a long study whose budget the tuning grid does not fit")
    p.add_argument("--profile", default=None, choices=list(PROFILES),
                   help="; ".join(f"{k}: {v}" for k, v in PROFILE_HELP.items()) + f" (default: {DEFAULT_PROFILE_TEXT}; "
                        "with --dataset all: paper)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="any TrainConfig field for 02-04, e.g. --set rmi_pool=avg --set cache_dir=/data/cache "
                        "(`python -m mistudy train --help` lists them); applied after the profile")
    p.add_argument("--epochs", type=positive_int, default=None, help="shortcut for --set epochs=N")
    p.add_argument("--eval-protocol", default=None, choices=list(data.PROTOCOLS),
                   help="shortcut for --set eval_protocol=P (random-crop: the authors' random crops, 5 passes)")
    p.add_argument("--results-dir", default=None, help="runs and executed notebooks (default: the project's "
                   "results/<profile>/)")
    p.add_argument("--figures-dir", default=None, help="figures and tables (default: the project's figures/<profile>/; "
                   "01's theory figures: figures/)")
    p.add_argument("--notebooks", nargs="+", default=list(DEFAULT_NOTEBOOKS), metavar="NN",
                   help=f"which notebooks to run, by number ({' '.join(NOTEBOOKS)})")
    p.add_argument("--resume", action="store_true",
                   help="continue interrupted runs (and extend finished ones to more epochs); runs not started yet "
                        "start")
    p.add_argument("--grids", nargs="+", default=["ablations"], choices=["ablations", "pretrained", "tuning", "controls"],
                   help="notebook 06's grids: ablations (the open questions and controls), pretrained (fine-tuned "
                        "networks; needs `mistudy pretrain` first), tuning (every use-case at every learning rate, "
                        "on the tuning seeds), controls (RMI's parts alone: BCE alone, RMI on softmax CE)")
    p.add_argument("--ablations", nargs="+", default=None, metavar="NAME",
                   help="notebook 06: these settings (names of mistudy.report.ablations.ABLATIONS, e.g. a grid's leads "
                        "again on new --seeds) instead of each grid's; default: the grid's settings")
    p.add_argument("--notebooks-dir", default=str(DEFAULT_NOTEBOOKS_DIR), help="where the numbered notebooks are")
    p.add_argument("--executor", default="auto", choices=["auto", "sequential", "ray"],
                   help="auto: as many tasks at once as this machine's cores, memory and GPUs allow (a local Ray "
                        "cluster; one after another where that is one, or without Ray); sequential: one notebook "
                        "after another, here (as --workers 1); ray: every run a task of a Ray cluster, spread over its "
                        "GPUs (or CPU cores); see docs/running.md, 'Many runs on many GPUs and machines'")
    p.add_argument("--address", default=None, help="with --executor ray: the cluster to join (e.g. auto, or "
                   "HOST:6379); default: start a local one on this machine")
    p.add_argument("--workers", type=positive_int, default=None, help="tasks at once on this machine (default: one "
                   "per core or GPU, as many as the available memory holds); 1: one after another, here")
    p.add_argument("--cpus-per-task", type=positive_int, default=None, help="with several workers: CPU cores each "
                   "task holds, its torch threads and the bound on its loader workers (default: the cores shared out "
                   "evenly; with --address 1 CPU and 1 thread, loader workers bounded by the node's cores)")
    p.add_argument("--gpus-per-task", type=non_negative_float, default=None, help="with --executor ray: GPUs each "
                   "task holds (default: 1 where CUDA is present, else 0)")
    p.add_argument("--kernel", default=KERNEL, help="Jupyter kernel to execute the notebooks with")
    return p


def _notebook_key(text: str) -> str:
    head = text.split("_")[0].removesuffix(".ipynb")
    key = head.zfill(2) if head.isdigit() else head
    if key not in NOTEBOOKS:
        raise UsageError(f"unknown notebook {text!r}; choose from {' '.join(NOTEBOOKS)}")
    return key


def _data_roots(datasets: list[str], values: list[str], download: bool = False) -> dict[str, Path]:
    """--data-root values ("DIR" or "NAME=DIR") -> {real dataset: existing directory (with --download: to be made)}."""
    real = [d for d in datasets if d in REAL_DATASETS]
    roots: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in DATASETS:
            roots[name] = Path(path)
        elif len(real) == 1:
            roots[real[0]] = Path(value)
        else:
            raise UsageError(f"--data-root {value!r}: with {'no real dataset' if not real else 'several datasets'} "
                             f"selected give NAME=DIR, NAME one of {', '.join(REAL_DATASETS)}")
    for name in real:
        if name not in roots:
            raise UsageError(f"dataset {name!r} needs --data-root{'' if len(real) == 1 else f' {name}=DIR'} "
                             f"(with --download, the folder to fetch it into)")
        if not roots[name].is_dir() and not download:
            raise UsageError(f"data root {roots[name]} of {name} is not a directory")
    return {name: roots[name].resolve() for name in real}


def _check_dataset(cfg) -> None:
    """Open the real dataset's splits as the study's runs will (sizes, selection split, every file's header), so a
    wrong layout, a bad file or too few images fail before hours of notebooks."""
    from mistudy.training import loaders

    try:
        loaders.build_datasets(cfg, check=True)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"{cfg.dataset} at {cfg.data_root}: {e}") from None


def plan(args: argparse.Namespace) -> list[Step]:
    """The notebook executions of a study, in order; raises UsageError for bad options before anything runs.
    No --profile: the datasets' default (`config.resolve_profile`), set in ``args``."""
    datasets = list(ALL_DATASETS) if args.dataset == "all" else [args.dataset]
    args.profile = resolve_profile(args.profile, "synthetic" if datasets == ["synthetic"] else REAL_DATASETS[0])
    keys = sorted({_notebook_key(k) for k in args.notebooks})
    seeds = args.seeds if args.seeds is not None else study_seeds(args.profile)
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds has repeated values: {seeds}")
    tuning_seeds = args.seeds if args.seeds is not None else list(tuning.TUNING_SEEDS)
    if "06" in keys and args.recipe == "tuned":
        raise UsageError("--recipe tuned trains 02-04 at each use-case's tuned rate; notebook 06's grids vary the "
                         "profile's shared recipe: run them without --recipe tuned")
    if "06" in keys and "tuning" in args.grids:
        if set(keys) & set(PER_RUN):
            raise UsageError("--grids tuning: run the tuning grid on its own (--notebooks 06 --grids tuning), not with "
                             "02-04, whose seeds it must never share")
        reported = sorted(set(tuning_seeds) & set(study_seeds(args.profile)))
        if reported:
            raise UsageError(f"--grids tuning: seeds {reported} are the {args.profile} study's own seeds; tune on "
                             f"seeds no comparison table reports (default: {list(tuning.TUNING_SEEDS)})")
    if args.rates_from and args.recipe != "tuned":
        raise UsageError("--rates-from names where the tuned recipe's rates come from: add --recipe tuned")
    rates = {}
    if args.recipe == "tuned" and set(keys) & set(PER_RUN):
        figures = _rates_table_dir(args)
        try:
            rates = {dataset: tuning.chosen_rates(figures, dataset) for dataset in datasets}
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--recipe tuned: {e}") from None
    roots = _data_roots(datasets, args.data_root, args.download) if set(keys) & {*PER_RUN, "06"} else {}
    nb_dir = Path(args.notebooks_dir).resolve()
    missing = [NOTEBOOKS[k] for k in keys if not (nb_dir / NOTEBOOKS[k]).is_file()]
    if missing:
        raise UsageError(f"notebooks {missing} not found in {nb_dir}; pass --notebooks-dir DIR (the checkout's "
                         "notebooks/ folder, or <environment>/share/mistudy/notebooks after `pip install .`)")
    # Each profile has its own runs and figures (results/<profile>/, figures/<profile>/), so that runs of another
    # size never meet; the theory figures of 01 do not depend on the profile (figures/).
    results, figures = _folders(args)
    theory_figures = Path(args.figures_dir or default_figures_dir(None)).resolve()
    executed = results / "notebooks"

    def step(key: str, parameters: dict, subdir: str = "", label: str = "", config: TrainConfig | None = None) -> Step:
        notebook = nb_dir / NOTEBOOKS[key]
        return Step(key, notebook, executed / subdir / notebook.name, parameters, notebook.stem + label, config)

    overrides = _overrides(args)
    if args.ablations is not None:
        from mistudy.report import ablations

        try:
            ablations.settings(args.ablations)
        except ValueError as e:
            raise UsageError(f"--ablations: {e}") from None
    steps = []
    if "01" in keys:
        steps.append(step("01", {"figures_dir": str(theory_figures)}))
    for dataset in datasets:  # every use-case of one dataset and seed before the next seed
        root = str(roots[dataset]) if dataset in roots else None
        per_use_case = {uc: {**overrides, **({"lr": rates[dataset][uc]} if rates else {})} for uc in USE_CASES}
        for seed in seeds:
            for key in (k for k in PER_RUN if k in keys):
                config = per_use_case[PER_RUN[key]]
                try:  # every option checked now (the first seed's), not hours later in a notebook
                    cfg = _run_config(args, PER_RUN[key], dataset, root, config, seed=seed, results_dir=str(results))
                except (ValueError, FileNotFoundError) as e:
                    raise UsageError(f"{PER_RUN[key]} on {dataset}: {e}") from None
                params = {"profile": args.profile, "dataset": dataset, "data_root": root, "device": args.device,
                          "seed": seed, "results_dir": str(results), "figures_dir": str(figures)}
                if config:
                    params["config"] = config
                if args.download:
                    params["download"] = True
                if args.resume and runs.resume_if_started(cfg).resume:
                    params["resume"] = True  # the runs not started yet start: --resume is not a typo check here
                steps.append(step(key, params, f"{dataset}/seed{seed}", f" ({dataset}, seed {seed})", cfg))
    if "05" in keys:
        steps.append(step("05", {"profile": args.profile, "results_dir": str(results), "figures_dir": str(figures),
                                 "datasets": datasets}))
    if "06" in keys:  # after 02-04, whose runs are its references
        for dataset in datasets:
            root = str(roots[dataset]) if dataset in roots else None
            for grid in args.grids:
                grid_seeds = tuning_seeds if grid == "tuning" else seeds
                params = {"profile": args.profile, "dataset": dataset, "data_root": root, "device": args.device,
                          "seeds": list(grid_seeds), "results_dir": str(results), "figures_dir": str(figures),
                          "grid": grid}
                if args.ablations is not None:
                    params["ablation_names"] = list(args.ablations)
                if overrides:
                    params["config"] = overrides
                if args.resume:
                    params["resume"] = True  # each of its runs: continued where it exists (ablations.configs)
                label = f" ({dataset})" if grid == "ablations" else f" ({dataset}, {grid} grid)"
                steps.append(step("06", params, dataset if grid == "ablations" else f"{dataset}/{grid}", label))
    return steps


def _run_config(args: argparse.Namespace, use_case: str, dataset: str, root: str | None, config: dict | None,
                **where) -> TrainConfig:
    """The TrainConfig of one of the study's runs (the study's one place that builds one): the profile's settings,
    the dataset, its root and the device, then ``config`` (--set values, a tuned rate), then ``where`` (seed,
    results_dir)."""
    return study_config(use_case, args.profile, config, dataset=dataset, data_root=root, device=args.device, **where)


def _folders(args: argparse.Namespace, tuned_from: bool = False) -> tuple[Path, Path]:
    """(results, figures): the study's folders, by default the profile's (`runs.default_results_dir`), in tuned/
    under --recipe tuned; ``tuned_from``: where the tuning table the tuned recipe reads is (the profile's own)."""
    sub = "" if tuned_from else tuning.recipe_folder(args.recipe)
    return (Path(args.results_dir or default_results_dir(args.profile) / sub).resolve(),
            Path(args.figures_dir or default_figures_dir(args.profile) / sub).resolve())


def _rates_table_dir(args: argparse.Namespace) -> Path:
    """Where the tuned recipe reads its tuning table: figures/<--rates-from>/, else the study's own folder."""
    return default_figures_dir(args.rates_from).resolve() if args.rates_from else _folders(args, tuned_from=True)[1]


def _overrides(args: argparse.Namespace) -> dict:
    """--set NAME=VALUE values (and the --epochs / --eval-protocol shortcuts) as TrainConfig fields."""
    try:
        overrides = parse_assignments(args.overrides)
    except ValueError as e:
        raise UsageError(str(e)) from None
    reserved = {"use_case", "dataset", "data_root", "seed", "device", "results_dir", "run_dir", "resume",
                "download"} & set(overrides)
    if reserved:
        raise UsageError(f"--set {', '.join(sorted(reserved))}: set by the study itself (use --dataset, --data-root, "
                         "--seeds, --device, --results-dir, --resume, --download)")
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.eval_protocol is not None:
        overrides["eval_protocol"] = args.eval_protocol
    return overrides


def _check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise UsageError(f"Jupyter kernel {name!r} is not installed in this environment: `pip install .` (or `make "
                         f"setup`) installs it; `python -m ipykernel install --sys-prefix --name {name}` adds it to an "
                         "existing environment; or pass --kernel NAME") from None


def _task_key(step: Step) -> str:
    p = step.parameters
    return " ".join(str(x) for x in (step.key, p.get("dataset", ""), f"seed{p['seed']}" if "seed" in p else "",
                                     p.get("grid", "")) if x)


def tasks(steps: list[Step], args: argparse.Namespace, expand_ablations: bool) -> list:
    """The executor's tasks of a plan: each notebook, needing what it reads (05: every 02-04 of its datasets; 06: the
    02-04 of its dataset, and 05 where the study has it: both write RESULTS.md).  With ``expand_ablations`` (the Ray
    executor) every run of 06's grids is a task of its own (notebook 06 then only gathers them); a reference run that
    a 02-04 notebook trains stays that notebook's."""
    from mistudy.executors import NotebookTask, TrainTask, check_one_writer
    from mistudy.report import ablations
    from mistudy.report.ablations import DIRECTORY

    out, use_case_tasks = [], {}
    for step in steps:
        p = step.parameters
        key, needs, run_dirs = _task_key(step), (), ()
        if step.key in PER_RUN:
            run_dirs = (str(step.config.resolved_run_dir()),)
            use_case_tasks.setdefault(p["dataset"], []).append(key)
        elif step.key == "05":
            needs = tuple(k for d in p["datasets"] for k in use_case_tasks.get(d, []))
        elif step.key == "06":
            # and after 05: both write the profile's RESULTS.md, so 06's page, written last, has both notebooks' tables
            needs = tuple(use_case_tasks.get(p["dataset"], [])) + (("05",) if "05" in {t.key for t in out} else ())
            if expand_ablations:
                names, seeds = ablations.default_grid(p["profile"], p.get("ablation_names"), p["seeds"], p["grid"])
                made = {d for t in out for d in t.run_dirs}
                trains = []
                for name, cfg in ablations.configs(names, seeds, p["profile"], p.get("config"), p["results_dir"],
                                                   resume=p.get("resume", False), dataset=p["dataset"],
                                                   data_root=p["data_root"], device=p["device"]):
                    run_dir = str(cfg.resolved_run_dir())
                    if run_dir in made:
                        continue  # a 02-04 run (a reference), or an ablation another grid trains too
                    made.add(run_dir)
                    # a reference 05 would find: trained after 05, as in the sequential study, so that 05 reads
                    # the same runs whichever executor runs the study
                    after = ("05",) if "05" in {t.key for t in out} and DIRECTORY not in Path(run_dir).parts else ()
                    trains.append(TrainTask(f"train {p['dataset']} {name} seed{cfg.seed}",
                                            f"{name} ({p['dataset']}, seed {cfg.seed})", asdict(cfg), after,
                                            run_dirs=(run_dir,)))
                out += trains
                needs += tuple(t.key for t in trains)
        out.append(NotebookTask(key, step.label, step.notebook, step.output, step.parameters, needs, run_dirs,
                                CELL_TIMEOUT.get(step.key)))
    check_one_writer(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m mistudy study`; returns the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from mistudy.training.distributed import resolve_device

        try:
            device = resolve_device(args.device)
        except RuntimeError as e:  # torch.device's message for an unknown device type
            raise UsageError(f"--device {args.device!r}: {e}") from None
        steps = plan(args)
        checked = set()
        # data and weights there (or fetched) before hours of runs: 02-04's, and 06's (its references' use-cases)
        needed = [s.config for s in steps if s.key in PER_RUN] + \
            [_run_config(args, uc, s.parameters["dataset"], s.parameters["data_root"], s.parameters.get("config"))
             for s in steps if s.key == "06" for uc in USE_CASES]
        for cfg in needed:
            if cfg.data_root and cfg.dataset not in checked:
                checked.add(cfg.dataset)
                if args.download:
                    data.download(cfg.dataset, cfg.data_root)
                _check_dataset(cfg)
            for name, value in cfg.weights_options().items():
                fetch_weights(name, value, args.download)
        _check_kernel(args.kernel)
        how = _choose_executor(args, steps, device)
        _check_loader_workers(args, needed)
        work = tasks(steps, args, expand_ablations=args.executor == "ray")
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2

    results, _ = _folders(args)
    with contextlib.ExitStack() as stack:
        try:  # one study at a time writes a results directory (its log, its notebooks)
            stack.enter_context(runs.RunLock(results, "results directory", "give this study another --results-dir"))
        except (runs.RunLockedError, OSError) as e:
            print(f"{PROG}: error: {error_line(e)}", file=sys.stderr)
            return 1
        if args.recipe == "tuned":
            tuning.record_source(results, args.rates_from or args.profile)
            _link_shared_runs(args, steps)
        return _run(args, work, device, how)


def _link_shared_runs(args: argparse.Namespace, steps: list[Step]) -> None:
    """--recipe tuned: a use-case whose tuned rate is the shared one has, seed by seed, the shared recipe's runs:
    each finished one is linked into the tuned folder (`train.link_finished_run`) rather than trained again."""
    from mistudy.training.train import link_finished_run

    shared, _ = _folders(args, tuned_from=True)
    linked = []
    for step in (s for s in steps if s.key in PER_RUN):
        source = step.config.replace(results_dir=str(shared)).resolved_run_dir()
        try:
            if link_finished_run(step.config, source):
                linked.append(step.label)
        except OSError as e:  # a full disk, a folder not ours: this run is trained instead, and the line says why
            print(f"{PROG}: {step.label}: the shared run in {source} not taken ({error_line(e)}); trained instead",
                  flush=True)
    if linked:
        print(f"{PROG}: --recipe tuned: {len(linked)} run(s) at the shared rate taken from {shared} (same "
              f"configuration, nothing retrained): {', '.join(linked)}", flush=True)


def _run(args: argparse.Namespace, work: list, device, how: str = "one after another") -> int:
    """Execute the study's tasks (the results directory locked); returns the exit status."""
    from mistudy import executors

    results, figures = _folders(args)
    log = results / ("study-logs" if args.executor == "ray" else "study.log")  # ray: one file per task
    log.parent.mkdir(parents=True, exist_ok=True)
    cwd = Path(args.notebooks_dir).resolve()
    print(f"{PROG}: {len(work)} tasks, {how}; executed notebooks in {results / 'notebooks'}, their output in "
          f"{log}", flush=True)
    start = time.perf_counter()
    if args.executor == "ray":
        gpus = args.gpus_per_task if args.gpus_per_task is not None else (1.0 if device.type == "cuda" else 0.0)
        try:
            errors = executors.run_ray(work, args.kernel, cwd, log, args.address, args.workers,
                                       args.cpus_per_task, gpus)
        except executors.RayStartError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 1
    else:
        errors = executors.run_sequential(work, args.kernel, cwd, log)
    for error in errors:
        print(f"{PROG}: error: {error}", file=sys.stderr)
    if errors:
        kept = "what finished before is kept" if args.executor == "sequential" else "the other tasks finished"
        print(f"{PROG}: {len(errors)} task(s) failed; {kept} (full output in {log}).", file=sys.stderr)
        return 1
    print(f"study finished: {len(work)} tasks in {time.perf_counter() - start:.0f} s; figures and tables in "
          f"{figures}, executed notebooks in {results / 'notebooks'}")
    return 0


def _check_loader_workers(args: argparse.Namespace, configs: list) -> None:
    """A task counts only its share of cores (`machine.TASK_CORES`), so loader workers beyond it would fail every
    run once the study is under way: refused now, naming the two options."""
    share = args.cpus_per_task if args.executor == "ray" else None
    asked = max((c.num_workers for c in configs if c.num_workers is not None), default=None)
    if share and asked is not None and asked > share:
        raise UsageError(f"--set num_workers={asked}: more loader workers than the {share} core(s) each task holds "
                         f"(--cpus-per-task); raise --cpus-per-task or lower num_workers")


def _check_ray() -> None:
    if not _has_ray():
        raise UsageError("--executor ray needs Ray: pip install 'ray>=2.9' (the README's set-up installs it)") from None


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _choose_executor(args: argparse.Namespace, steps: list[Step], device) -> str:
    """Resolve --executor auto, --workers, --cpus-per-task and --gpus-per-task in ``args`` for this machine
    (`executors.choose_workers`); returns the words that say how the tasks run.  --workers 1 (or --executor
    sequential): one after another, here, exactly as the sequential executor always did."""
    from mistudy import executors

    if args.executor == "sequential" and args.workers not in (None, 1):
        raise UsageError(f"--executor sequential runs one task at a time; --workers {args.workers} needs the default "
                         "executor (or --executor ray)")
    if args.executor == "sequential" or (args.executor == "auto" and args.workers == 1):
        args.executor = "sequential"
        return "one after another"
    if args.executor == "ray":
        _check_ray()
        if args.address:  # the cluster's own resources decide (--cpus-per-task None: 1 CPU and 1 thread a task)
            return f"on the Ray cluster at {args.address}, {args.cpus_per_task or 1} thread(s) each"
    gpus_per_task = args.gpus_per_task if args.gpus_per_task is not None else (1.0 if device.type == "cuda" else 0.0)
    gpu_slots = 0
    if gpus_per_task > 0:
        import torch

        gpu_slots = max(1, int(torch.cuda.device_count() // gpus_per_task)) if torch.cuda.is_available() else 1
    cores = machine.available_cores()
    choice = executors.choose_workers(
        executors.widest(tasks(steps, args, expand_ablations=True)), cores, machine.available_memory(),
        int(executors.TASK_MEMORY_GIB.get(args.profile, executors.TASK_MEMORY_GIB["quick"]) * executors.GIB),
        gpu_slots)
    workers = args.workers or choice.workers
    threads = args.cpus_per_task or max(1, cores // workers)
    why = "" if args.workers else f" ({choice.why})"
    if args.executor == "auto" and workers == 1:
        args.executor = "sequential"
        return f"one after another{why}"
    if args.executor == "auto" and not _has_ray():
        print(f"{PROG}: Ray is not installed, so the tasks run one after another (pip install 'ray>=2.9' runs "
              f"{workers} at once on this machine; --workers 1 runs them one after another without this line)",
              file=sys.stderr, flush=True)
        args.executor = "sequential"
        return "one after another"
    if args.executor == "auto":  # started now, so that a Ray that cannot start here costs the study nothing
        try:
            executors.start_ray(None, workers, threads, gpus_per_task)
        except executors.RayStartError as e:
            print(f"{PROG}: {e}; so the tasks run one after another (--workers 1 runs them so without trying Ray)",
                  file=sys.stderr, flush=True)
            args.executor = "sequential"
            return "one after another"
    args.executor, args.workers, args.cpus_per_task, args.gpus_per_task = "ray", workers, threads, gpus_per_task
    return f"{workers} at once, {threads} thread(s) each{why}"
