"""How a study's tasks are executed: one after another in this process tree (`run_sequential`), or as tasks of a Ray
cluster (`run_ray`: every core or GPU of this machine, or every node of a cluster).  `choose_workers` decides how many
tasks run at once on this machine by default (its cores, available memory and GPUs) and how many threads each gets.

A task is data, so that Ray can ship it: a notebook to execute with papermill (`NotebookTask`) or one training run
(`TrainTask`, an ablation of notebook 06), with the tasks it needs finished first.  Each task writes where it writes
in the sequential study; no two tasks write one run directory (checked when the tasks are made, and enforced by the
run directories' lock).  Both executors print one line per finished task with the study's progress and an estimate
of the time left; the notebooks' own output goes to the study's log file.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mistudy.io import machine


@dataclass(frozen=True)
class NotebookTask:
    """Execute ``notebook`` with ``parameters`` into ``output`` (papermill); ``label`` names it in messages."""

    key: str  # unique in the study, e.g. "03 synthetic seed1"
    label: str
    notebook: Path
    output: Path
    parameters: dict
    needs: tuple[str, ...] = ()
    run_dirs: tuple[str, ...] = ()  # the run directories it writes (none for 01 and 05)
    cell_timeout: float | None = None  # seconds a cell may run before the task fails (None: no limit)


@dataclass(frozen=True)
class TrainTask:
    """Train (or reuse) one run of ``config`` (a TrainConfig as a dict)."""

    key: str
    label: str
    config: dict
    needs: tuple[str, ...] = ()
    run_dirs: tuple[str, ...] = field(default=())


class TaskError(RuntimeError):
    """A task failed; the message names it (the notebook and its cell, or the run) and the error."""


class RayStartError(RuntimeError):
    """Ray did not start (or the cluster was not found); the message says why in one line."""


def headless() -> dict[str, str]:
    """What every task's kernel runs under, set by `execute` itself wherever it runs (a Ray worker started before the
    study set anything inherits nothing): one line per epoch in the log, no bars; no widgets (notebook 01's sliders
    stalled papermill for a whole cell time limit under load)."""
    from mistudy.report.theory_plots import WIDGETS_ENV
    from mistudy.training.progress import PROGRESS_ENV

    return {PROGRESS_ENV: "log", WIDGETS_ENV: "off"}


def execute(task, kernel: str, cwd: str, log_path: str | None, threads: int | None = None,
            cores: int | None = None) -> float:
    """Run one task here, headless (`headless`); returns its seconds.  A failure raises TaskError with a one-line
    message.  ``threads``: the task's torch threads (OMP_NUM_THREADS of its kernel; None: as inherited);
    ``cores``: the cores the study gives it (`machine.TASK_CORES`; None: not known, the machine's)."""
    t0 = time.perf_counter()
    share = {} if cores is None else {machine.TASK_CORES: str(cores)}
    with environment(headless()), _threads(threads), environment(share):
        if isinstance(task, NotebookTask):
            _execute_notebook(task, kernel, cwd, log_path)
        else:
            _execute_training(task, threads)
    return time.perf_counter() - t0


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """``values`` set in os.environ for the kernels started meanwhile (they inherit it); restored after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _threads(threads: int | None):
    """OMP_NUM_THREADS (and MKL's) ``threads`` for the kernels started meanwhile; restored after.  A Ray worker runs
    one task at a time, so setting its environment is safe; None: unchanged (the sequential study)."""
    return environment({} if threads is None else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})


def _execute_notebook(task: NotebookTask, kernel: str, cwd: str, log_path: str | None) -> None:
    import papermill
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    task.output.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a") if log_path else None
    started: list = []  # the code cells in the order they started: the last is the one running

    def cell_timeout(cell) -> float | None:  # nbclient asks once per code cell, as it starts it
        started.append(cell)
        return task.cell_timeout

    try:
        if log:
            log.write(f"\n===== {task.label}: {task.notebook.name} -> {task.output}\n")
            log.flush()
        with _stderr_to(log), _kernel_sockets() as config:
            papermill.execute_notebook(str(task.notebook), str(task.output), parameters=task.parameters,
                                       kernel_name=kernel, cwd=cwd, log_output=False, progress_bar=False,
                                       stdout_file=log, stderr_file=log, timeout_func=cell_timeout, config=config)
    except PapermillExecutionError as e:
        evalue = " ".join(str(e.evalue).split())
        raise TaskError(f"notebook {task.label} failed in cell [{e.exec_count}]: {e.ename}: {evalue} (executed "
                        f"notebook with the traceback: {task.output})") from None
    except CellTimeoutError:
        # In [N] of a fresh kernel: the N-th code cell started (papermill's parameters cell included)
        source = " | ".join(line.strip() for line in started[-1].source.strip().splitlines()) if started else "?"
        source = source if len(source) <= 80 else source[:77] + "..."
        raise TaskError(f"notebook {task.label} timed out in cell [{len(started)}] ({source!r}): no reply after "
                        f"{task.cell_timeout:g} s (executed notebook so far: {task.output})") from None
    except Exception as e:  # dead kernel, timeout, unreadable notebook: still one clear line
        raise TaskError(f"notebook {task.label} could not run: {type(e).__name__}: {e}") from None
    finally:
        if log:
            log.close()


SOCKET_PATH_MAX = 100  # bytes of a Unix socket's path: 107 on Linux, 103 on macOS, with a margin


def _socket_parent() -> str | None:
    """A folder for a task's kernel sockets whose paths fit SOCKET_PATH_MAX (the temporary folder, else /tmp), or None
    (a long $TMPDIR on a cluster's scratch space, and no /tmp)."""
    import tempfile

    longest = len(os.path.join("mistudy-kernel-xxxxxxxx", "kernel-99999"))  # mkdtemp's name, the socket's
    for parent in (tempfile.gettempdir(), "/tmp"):
        if len(os.path.join(parent, "")) + longest <= SOCKET_PATH_MAX and os.access(parent, os.W_OK | os.X_OK):
            return parent
    return None


@contextlib.contextmanager
def _kernel_sockets():
    """The kernel manager's configuration for one task: on POSIX its kernel talks over Unix sockets in a private
    folder (removed after).  Jupyter's default, TCP on localhost, picks free ports and releases them before the
    kernel binds them, so two kernels started at once can draw the same port and one dies ("Address already in use",
    "Kernel died before replying to kernel_info"): a task of a parallel study lost.  Elsewhere, or where no folder
    gives a short enough socket path: the default."""
    import tempfile

    from traitlets.config import Config

    parent = _socket_parent() if os.name == "posix" else None
    if parent is None:
        yield Config()
        return
    with tempfile.TemporaryDirectory(prefix="mistudy-kernel-", dir=parent) as folder:
        yield Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(folder, "kernel")}})


@contextlib.contextmanager
def _stderr_to(file):
    """This process's file descriptor 2 into ``file`` meanwhile (None: unchanged).  The kernel inherits it, so its
    own start-up warnings go to the log, not to the console."""
    if file is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _execute_training(task: TrainTask, threads: int | None = None) -> None:
    import torch

    from mistudy.io.cli import error_line
    from mistudy.training.config import TrainConfig
    from mistudy.training.train import RUN_ERRORS, train_or_load

    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        # the task's config as the study planned it, resume included (not `runs.config_from_json`, which reads a
        # saved run's config and drops resume: an interrupted or extended ablation run would be refused)
        train_or_load(TrainConfig.from_dict({**task.config, "progress": "none"}))
    except RUN_ERRORS as e:
        raise TaskError(f"run {task.label} failed: {type(e).__name__}: {error_line(e)}") from None
    finally:
        torch.set_num_threads(saved)


def check_one_writer(tasks: list) -> None:
    """No two tasks may write one run directory (the lock would refuse the second at run time; this says so first)."""
    owner: dict[str, str] = {}
    for task in tasks:
        for run_dir in task.run_dirs:
            if run_dir in owner:
                raise ValueError(f"tasks {owner[run_dir]!r} and {task.label!r} would both write {run_dir}")
            owner[run_dir] = task.label


class Progress:
    """One line per finished task: the study's progress, its outcome, and the time left, estimated from the mean
    time of finished tasks of the same kind (the notebook's number; a training run) divided by the workers."""

    def __init__(self, tasks: list, workers: int = 1, out=None):
        import sys

        self.total, self.workers, self.out = len(tasks), max(1, workers), out or sys.stdout
        self.kind = {t.key: t.key.split()[0] for t in tasks}
        self.seconds: dict[str, list[float]] = {}
        self.left = {t.key for t in tasks}
        self.done = self.failed = self.skipped = 0
        self.t0 = time.perf_counter()
        self.started: dict[str, float] = {}  # task key -> when it started (wall clock, as files' times are)

    def start(self, task) -> None:
        self.started[task.key] = time.time()

    def reused(self, task) -> bool:
        """Whether ``task`` only found its runs finished (every run directory's metrics.json older than the task's
        start): its few seconds say nothing of a training task's time, so the estimate leaves them out."""
        from mistudy.training.runs import METRICS_FILE

        t0 = self.started.get(task.key)
        if t0 is None or not task.run_dirs:
            return False
        paths = [Path(d) / METRICS_FILE for d in task.run_dirs]
        return all(p.is_file() and p.stat().st_mtime < t0 for p in paths)

    def _estimate(self) -> str:
        """The time left from the mean time of each kind of task; tasks of kinds not timed yet (a notebook 04 while
        only 01 has run) are not guessed: the estimate then says "at least"."""
        if not self.left:
            return "nothing left"
        known = [s for k in self.left if (s := self.seconds.get(self.kind[k]))]
        if not known:
            return "time left: estimating"
        minutes = sum(sum(s) / len(s) for s in known) / self.workers / 60
        text = f"about {minutes:.0f} min left" if minutes >= 1 else "under a minute left"
        untimed = len(self.left) - len(known)
        return text if not untimed else f"at least {max(minutes, 0):.0f} min left: {untimed} task(s) not yet timed"

    def finished(self, task, seconds: float | None, error: str | None = None, running: int = 0) -> None:
        self.left.discard(task.key)
        if error is None:
            self.done += 1
            if self.reused(task):
                what = f"done in {seconds:.0f} s (its runs were finished: reused)"
            else:
                self.seconds.setdefault(self.kind[task.key], []).append(seconds)
                what = f"done in {seconds:.0f} s"
        else:
            self.failed += 1
            what = "FAILED"
        counted = self.done + self.failed + self.skipped
        status = f"{self.done} done" + (f", {running} running" if running else "") + \
            (f", {self.failed} failed" if self.failed else "") + (f", {self.skipped} skipped" if self.skipped else "")
        print(f"[{counted:{len(str(self.total))}d}/{self.total}] {task.label}: {what} ({status}; "
              f"{100 * counted // self.total}% of the study, {self._estimate()})", file=self.out, flush=True)
        if error is not None:  # the reason now, not only at the end of a study that may run for hours
            print(f"    {error}", file=self.out, flush=True)

    def skip(self, task, because: str) -> None:
        self.left.discard(task.key)
        self.skipped += 1
        print(f"[skip] {task.label}: not run, because {because} failed", file=self.out, flush=True)


def run_sequential(tasks: list, kernel: str, cwd: Path, log_path: Path | None) -> list[str]:
    """Every task in order, here; the first failure stops the study (what finished stays).  Returns the errors."""
    progress = Progress(tasks)
    for task in tasks:
        progress.start(task)
        try:
            seconds = execute(task, kernel, str(cwd), str(log_path) if log_path else None)
        except TaskError as e:
            progress.finished(task, None, str(e))
            return [str(e)]
        progress.finished(task, seconds)
    return []


def start_ray(address: str | None = None, workers: int | None = None, cpus_per_task: float = 1,
              gpus_per_task: float = 0) -> None:
    """Join the Ray cluster at ``address``, or start a local one of ``workers`` x ``cpus_per_task`` CPUs (None: every
    core), unless this process is connected already.  Raises RayStartError in one line when Ray does not start (on an
    overloaded machine its raylet may not register within Ray's 30 s)."""
    import ray

    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            cpus = (workers or max(1, int(machine.available_cores() // cpus_per_task))) * cpus_per_task
            ray.init(num_cpus=cpus, num_gpus=None if gpus_per_task else 0, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
    except Exception as e:  # Ray raises bare Exceptions (a raylet timing out, a cluster not found)
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise RayStartError(f"Ray did not start: {type(e).__name__}: {' '.join(str(e).split())}") from None


def run_ray(tasks: list, kernel: str, cwd: Path, log_path: Path | None, address: str | None = None,
            workers: int | None = None, cpus_per_task: float | None = 1, gpus_per_task: float = 0) -> list[str]:
    """The tasks on a Ray cluster (``address``; None: a local one of ``workers`` x ``cpus_per_task`` CPUs), each
    holding ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs and running ``cpus_per_task`` torch threads, started
    as soon as the tasks it needs have finished; ``log_path``: a folder, one log file per task.  ``cpus_per_task``
    None (a cluster's default): each holds 1 CPU and runs 1 thread, and its loader workers count the node's cores,
    since its share of the node is not known here.
    A failing task is reported with its error while the others go on; tasks that need it are skipped.  Returns the
    errors."""
    import ray

    share, cpus_per_task = (int(cpus_per_task) if cpus_per_task else None), (cpus_per_task or 1)
    start_ray(address, workers, cpus_per_task, gpus_per_task)
    resources = ray.cluster_resources()
    slots = int(resources.get("GPU", 0) // gpus_per_task) if gpus_per_task else \
        int(resources.get("CPU", 1) // cpus_per_task)
    remote = ray.remote(execute).options(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=0)
    progress = Progress(tasks, workers=max(1, slots))
    by_key = {t.key: t for t in tasks}
    waiting, running, finished, failed, errors = list(tasks), {}, set(), set(), []
    if log_path:
        Path(log_path).mkdir(parents=True, exist_ok=True)

    def log(task) -> str | None:  # one log file per task: tasks run at once
        return str(Path(log_path) / ("".join(c if c.isalnum() or c in "=._-" else "_" for c in task.key) + ".log")) \
            if log_path else None

    def submit_ready() -> None:
        for task in list(waiting):
            blocked = [k for k in task.needs if k in failed]
            if blocked:
                waiting.remove(task)
                failed.add(task.key)
                progress.skip(task, by_key[blocked[0]].label)
            elif all(k in finished for k in task.needs) and len(running) < max(1, slots):
                # no more in flight than the cluster runs at once: "running" means running, and a task that
                # becomes ready later is not queued behind tasks submitted early
                waiting.remove(task)
                progress.start(task)
                running[remote.remote(task, kernel, str(cwd), log(task), max(1, int(cpus_per_task)), share)] = task

    while waiting or running:
        submit_ready()
        if not running:
            continue
        ready, _ = ray.wait(list(running), num_returns=1)
        task = running.pop(ready[0])
        try:
            seconds = ray.get(ready[0])
        except Exception as e:  # TaskError arrives wrapped in RayTaskError; keep its one line
            cause = getattr(e, "cause", None)
            message = str(cause) if isinstance(cause, TaskError) else f"{task.label}: {type(e).__name__}: {e}"
            errors.append(message)
            failed.add(task.key)
            progress.finished(task, None, message, running=len(running))  # before the skips it causes
            continue
        finished.add(task.key)
        submit_ready()  # the tasks that take its place first, so that the line counts them as running
        progress.finished(task, seconds, running=len(running))
    return errors


# ------------------------------------------------------------------------------------------ how many at once

GIB = 2 ** 30
# Peak resident memory of one task (its Jupyter kernel, and papermill in a Ray worker), by profile: the largest
# task, mutual learning (a U-Net and a DeepLabV3-ResNet50 with Adam), trained by `mistudy train --profile quick
# --use-case mutual` at one thread peaked at 1.84 GiB (/usr/bin/time -v); the notebook's kernel and the worker add
# about half a GiB.  The paper profile (224 px, larger batches, loader workers): an estimate, unmeasured.
TASK_MEMORY_GIB = {"tiny": 1.5, "quick": 2.5, "standard": 2.5, "long": 2.5, "paper": 6.0}
RESERVED_GIB = 1.0  # the study's own process and Ray's (raylet, GCS), beside the tasks


def widest(tasks: list) -> int:
    """How many of ``tasks`` can run at once at most, counted by depth (a task one step after the deepest task it
    needs): the most tasks of one depth.  The quick study: 01 and the nine 02-04 notebooks, then 05."""
    by_key = {t.key: t for t in tasks}
    depth: dict[str, int] = {}

    def depth_of(key: str) -> int:
        if key not in depth:
            depth[key] = 1 + max((depth_of(k) for k in by_key[key].needs if k in by_key), default=-1)
        return depth[key]

    counts: dict[int, int] = {}
    for t in tasks:
        counts[depth_of(t.key)] = counts.get(depth_of(t.key), 0) + 1
    return max(counts.values(), default=1)


@dataclass(frozen=True)
class Workers:
    """How a study runs on this machine: ``workers`` tasks at once, each with ``threads`` torch threads; ``why``: what
    bounded it, for the study's first line."""

    workers: int
    threads: int
    why: str


def choose_workers(width: int, cores: int, memory: int, task_memory: int, gpus: int = 0) -> Workers:
    """As many tasks at once as the machine allows: one per core (one per GPU slot where there are ``gpus``), no
    more than the memory holds (``memory`` bytes available, less `RESERVED_GIB`, over ``task_memory`` bytes a task)
    nor than the study has tasks to run at once (``width``); the cores shared out evenly as each task's threads."""
    by_memory = max(1, int((memory - RESERVED_GIB * GIB) // max(1, task_memory)))
    limits = {"GPUs" if gpus else "cores": gpus or max(1, cores), "memory": by_memory, "tasks": max(1, width)}
    bound = min(limits, key=lambda k: limits[k])
    workers = limits[bound]
    threads = max(1, cores // workers)
    why = (f"{cores} cores{f', {gpus} GPUs' if gpus else ''}, {memory / GIB:.1f} GiB available at "
           f"~{task_memory / GIB:.1f} GiB a task, {width} tasks at most at once: bound by the {bound}")
    return Workers(workers, threads, why)
