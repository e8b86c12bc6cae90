"""The GPU check (issue 17): one command that proves the CUDA path and measures it.  Run by benchmarks/gpu_check.sh.

    python benchmarks/gpu_check.py                          # on a GPU: ~6 minutes
    python benchmarks/gpu_check.py --device cpu --dry-run   # the same steps at tiny sizes on a CPU

Steps, each with its own time limit; one that fails is reported and the others still run:
1. tests/test_cuda.py on the device (bf16 + channels-last against float32, compile and CUDA graphs against eager,
   fused Adam, RMI on the device against the CPU reference, a one-process NCCL group, no host sync per batch);
2. benchmarks/bench_train.py for each use-case at the paper's settings (224x224, the paper's batch sizes), eager
   and compiled: images/s, model FLOP utilisation, peak memory, the projected paper-scale study;
3. a short paper-scale synthetic run per use-case (VOC-sized: 1,464 training and 1,449 validation images at the
   paper's resize 234 / crop 224, a few epochs) whose last epoch's time projects the 200-epoch study;
4. notebook 02 through papermill on the device (tiny profile), where papermill is installed.
Writes <out>/gpu_check.md (the table) and <out>/gpu_check.json, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from mistudy.training import runs  # noqa: E402
from mistudy.training.config import USE_CASE_NOTEBOOKS  # noqa: E402
from bench_train import PAPER_EPOCHS, PAPER_TRAIN_IMAGES, PAPER_VAL_IMAGES  # noqa: E402

USE_CASES = ("baseline", "rmi", "mutual")
STEPS = ("tests", "bench", "runs", "notebook")


def step(name: str, cmd: list[str], out: Path, timeout: int, env: dict | None = None) -> dict:
    """Run one step, its output to <out>/<name>.log; {"name", "ok", "seconds", "tail"}."""
    t0 = time.perf_counter()
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        text, ok = proc.stdout + proc.stderr, proc.returncode == 0
    except subprocess.TimeoutExpired as e:
        text, ok = f"{(e.stdout or b'').decode(errors='replace')}\n\nTIMEOUT after {timeout} s\n", False
    (out / f"{name}.log").write_text(text)
    seconds = time.perf_counter() - t0
    tail = "\n".join(text.strip().splitlines()[-3:])
    print(f"   {'ok' if ok else 'FAILED'} in {seconds:.0f} s\n   {tail}", flush=True)
    return {"name": name, "ok": ok, "seconds": seconds, "tail": tail}


def run_projection(run_dir: Path, train_images: int, eval_images: int) -> dict | None:
    """Hours of the 200-epoch paper-scale study of one use-case (one seed, both datasets) from the run's last epoch:
    its training throughput for the training images, its evaluation seconds per image (selection + validation
    split) for the paper's validation images and a selection split of a tenth of its training images."""
    history = runs.load_history(run_dir)
    if not history:
        return None
    last = history[-1]
    eval_per_image = last.get("eval_seconds", 0.0) / eval_images
    epoch = PAPER_TRAIN_IMAGES / last["images_per_second"] + eval_per_image * (PAPER_VAL_IMAGES + PAPER_TRAIN_IMAGES / 10)
    return {"epoch_seconds": last["seconds"] + last.get("eval_seconds", 0.0), "train_img_s": last["images_per_second"],
            "eval_img_s": eval_images / last["eval_seconds"] if last.get("eval_seconds") else None,
            "projected_hours": PAPER_EPOCHS * epoch / 3600}


def table(report: dict) -> str:
    lines = [f"GPU check: {report['device']}, torch {report['torch']}, {report['date']}",
             "", "| step | result | seconds |", "|---|---|---|"]
    lines += [f"| {s['name']} | {'ok' if s['ok'] else 'FAILED'} | {s['seconds']:.0f} |" for s in report["steps"]]
    lines += ["", "| use-case | batch | images/s eager | images/s compiled | MFU eager | MFU compiled | peak MiB "
              "(compiled) | projected study h (bench) | epoch s (run) | projected study h (run) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "-" if v is None or v != v else format(v, f)  # noqa: E731  (None or NaN: not measured)
    for uc in USE_CASES:
        e, c = report["bench"].get("eager", {}).get(uc, {}), report["bench"].get("compiled", {}).get(uc, {})
        r = report["runs"].get(uc) or {}
        hours = (report["bench"].get("compiled_hours") or report["bench"].get("eager_hours") or {}).get(uc)
        lines.append(f"| {uc} | {e.get('batch', c.get('batch', '-'))} | {fmt(e.get('img_s'), '.1f')} | "
                     f"{fmt(c.get('img_s'), '.1f')} | {fmt(e.get('mfu'), '.1%')} | {fmt(c.get('mfu'), '.1%')} | "
                     f"{fmt(c.get('peak_mib', e.get('peak_mib')), '.0f')} | {fmt(hours, '.2f')} | "
                     f"{fmt(r.get('epoch_seconds'), '.1f')} | {fmt(r.get('projected_hours'), '.2f')} |")
    total = sum((report["runs"].get(uc) or {}).get("projected_hours", 0.0) for uc in USE_CASES)
    lines += ["", f"Projected paper-scale study (VOC + Cityscapes sizes, 200 epochs, 3 use-cases, one seed) from the "
              f"runs: {total:.2f} h on this device."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes: checks that every step runs (on a CPU)")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check"), help="folder for the table, JSON and logs")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each paper-scale run (the last one is timed)")
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS,
                   help="which steps (a GPU session's 10-minute commands: e.g. tests bench, then runs notebook)")
    args = p.parse_args()
    out = Path(args.out).resolve()
    slower = 5 if args.dry_run else 1  # a CPU runs the same steps (compilation included) several times slower
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    if args.dry_run:
        size, steps, train_n, val_n, resize = 64, 2, 16, 8, 72
    else:
        size, steps, train_n, val_n, resize = 224, 20, 1464, 1449, 234
    import torch

    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available() \
        else f"cpu ({torch.get_num_threads()} threads)"
    report = {"device": device_name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
              "dry_run": args.dry_run, "steps": [], "bench": {}, "runs": {}}

    wanted = set(args.steps)

    def save() -> None:  # after every step: a check cut short still leaves its table
        (out / "gpu_check.md").write_text(table(report))
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))

    if "tests" in wanted:
        report["steps"].append(step("tests", [py, "-m", "pytest", "-q", "-o", "addopts=-ra", "-p", "no:cacheprovider",
                                              "tests/test_cuda.py"], out, 240 * slower,
                                    {"MISTUDY_CHECK_DEVICE": args.device}))
        save()
    for label, extra in (("eager", []), ("compiled", ["--compile"])) if "bench" in wanted else ():
        path = out / f"bench_{label}.json"
        report["steps"].append(step(f"bench_{label}", [py, "benchmarks/bench_train.py", "--device", args.device,
                                                      "--size", str(size), "--steps", str(steps), "--project",
                                                      "--json", str(path), *extra], out, 150 * slower))
        if path.is_file():
            bench = json.loads(path.read_text())
            report["bench"][label] = {r["use_case"]: r for r in bench["rows"]}
            report["bench"][f"{label}_hours"] = bench["projected_hours"]
        save()
    for uc in USE_CASES if "runs" in wanted else ():
        run_dir = out / "runs" / uc
        report["steps"].append(step(f"run_{uc}", [
            py, "-m", "mistudy", "train", "--use-case", uc, "--dataset", "synthetic", "--device", args.device,
            "--train-samples", str(train_n), "--val-samples", str(val_n), "--resize-size", str(resize),
            "--crop-size", str(size), "--epochs", str(args.epochs), "--run-dir", str(run_dir), "--progress", "log",
            "--select-fraction", "0.1"], out, 150 * slower))
        report["runs"][uc] = run_projection(run_dir, train_n, round(0.1 * train_n) + val_n)
        save()
    if "notebook" in wanted:
        try:
            import papermill  # noqa: F401

            notebook = f"{USE_CASE_NOTEBOOKS['baseline']}.ipynb"
            report["steps"].append(step("notebook_02", [py, "-m", "papermill", f"notebooks/{notebook}",
                                                        str(out / notebook), "-p", "profile", "tiny",
                                                        "-p", "device", args.device, "-p", "results_dir",
                                                        str(out / "nb_results")], out, 120 * slower,
                                        {"MISTUDY_FIGURES": str(out / "nb_figures")}))
        except ImportError:
            print("== notebook_02: skipped (papermill is not installed; gpu_check.sh installs it from .gpu-wheels/)")
        save()
    print("\n" + table(report))
    return 0 if all(s["ok"] for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
