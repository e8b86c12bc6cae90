"""What this machine gives a process: its CPU cores and the memory available to new processes."""

from __future__ import annotations

import os


# The cores a study gives one of its tasks (set by `mistudy.executors` while the task runs, inherited by its kernel):
# several tasks share a machine, so each one's loader workers count its share, not every core.
TASK_CORES = "MISTUDY_TASK_CORES"


def available_cores() -> int:
    """The cores this process may run on: its affinity (`taskset` and container limits count), else all; within a
    study's task, at most the task's share (TASK_CORES)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        share = int(float(os.environ.get(TASK_CORES, "")))  # "2" (what the executor writes), "2.5" -> 2
    except ValueError:  # unset or not a number: the process's own cores
        return cores
    return max(1, min(cores, share)) if share > 0 else cores


def available_memory() -> int:
    """Bytes of memory available to new processes without swapping (psutil, else /proc/meminfo, else free pages)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or failing: the kernel's own estimate
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
