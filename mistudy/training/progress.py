"""What a training run shows while it runs: tqdm bars (JupyterLab, terminals), one line per epoch (headless,
`MISTUDY_PROGRESS=log`, which the study sets), or nothing.  Only rank 0 reports.  Unless nothing is shown, a run
says before its first step what it will do (`start_line`) and, after its first steps, how long the whole run will
take on this device."""

from __future__ import annotations

import os

from tqdm.auto import tqdm

PROGRESS_ENV = "MISTUDY_PROGRESS"  # the progress mode of runs whose option is "auto": "log" under `mistudy study`
PROJECT_AFTER = 5  # steps timed (after the first, which pays for warm-up) before the run's time is projected


def progress_mode(option: str) -> str:
    """The configured mode; "auto" means env MISTUDY_PROGRESS (PROGRESS_ENV), else bars."""
    return option if option != "auto" else os.environ.get(PROGRESS_ENV, "bar")


class TrainingProgress:
    """One training run's progress: a line per epoch (mode "log") or epoch and step bars ("bar"), with the time
    left projected from the epochs done.  (The study's progress over its tasks is `mistudy.executors.Progress`.)"""

    def __init__(self, label: str, total_epochs: int, option: str = "auto", enabled: bool = True):
        self.label, self.total = label, total_epochs
        self.mode = progress_mode(option) if enabled else "none"
        self._epoch_bar = self._step_bar = None
        self._steps = self._epochs_left = self._mark = None  # the projection, once `start` has been called

    def _say(self, line: str) -> None:
        if self.mode == "bar":
            tqdm.write(line)  # above the bars, not through them
        elif self.mode != "none":
            print(line, flush=True)

    def start(self, line: str, steps_per_epoch: int, first_epoch: int) -> None:
        """Say what the run will do (``line``, `start_line`) and project its time after its first steps."""
        self._say(f"[{self.label}] {line}")
        self._steps, self._epochs_left = steps_per_epoch, self.total - first_epoch + 1

    def _project(self, seconds_per_step: float, measured: str) -> None:
        total = seconds_per_step * self._steps * self._epochs_left
        self._say(f"[{self.label}] projected: {duration(total)} of training for the {self._epochs_left} epochs x "
                  f"{self._steps} steps left on this device ({seconds_per_step:.3g} s/step over {measured}; "
                  "validation adds its own time)")
        self._steps = None  # said once

    def epochs(self, first: int):
        """The epochs first..total, under a bar in "bar" mode."""
        epochs = range(first, self.total + 1)
        if self.mode != "bar":
            return epochs
        self._epoch_bar = tqdm(epochs, desc=f"{self.label} epochs", initial=first - 1, total=self.total,
                               dynamic_ncols=True)
        return self._epoch_bar

    def steps(self, loader, epoch: int):
        """The loader's batches, counted on a step bar in "bar" mode.  The bar is given the number of steps, never
        the loader: tqdm.auto's bar makes an iterator of what it wraps (for async use) besides the one the loop
        makes, and each DataLoader iterator draws a seed from torch's global generator, so wrapping the loader
        shifted the dropout masks drawn after it (DeepLabV3's): the display changed the training."""
        if self.mode != "bar":
            return loader
        self._step_bar = tqdm(total=len(loader), desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
        return self._counted(loader)

    def _counted(self, loader):
        for batch in loader:
            yield batch
            self._step_bar.update()

    def step_done(self, meter, seconds: float, world_size: int, step: int = 0) -> None:
        """After step ``step`` (``seconds`` into the epoch) whose losses were just checked: running mean losses and
        images/s on the step bar (this reads the device sums back, so it runs only at the loop's NaN checks, where
        the device has caught up: the times are true), and once the run's projected time."""
        if self._steps is not None and step:
            if self._mark is None:
                self._mark = (step, seconds)  # the first step(s) pay for warm-up: timed from here
            elif step - self._mark[0] >= PROJECT_AFTER or step == self._steps:
                self._project((seconds - self._mark[1]) / (step - self._mark[0]), f"steps {self._mark[0] + 1}-{step}")
        if self._step_bar is None or self.mode != "bar":
            return
        self._step_bar.set_postfix({f"{n}_loss": f"{(s['loss'] / meter.seen).item():.4f}" for n, s in meter.sums.items()}
                                   | {"img/s": f"{meter.seen * world_size / max(seconds, 1e-9):.1f}"})

    def epoch_done(self, row: dict) -> None:
        if self._steps is not None:  # an epoch too short to time steps apart: its own time
            self._project(row["seconds"] / self._steps, f"epoch {row['epoch']}")
        if self.mode == "log":
            parts = [f"{k.split('/')[0]} {k.split('/')[1]} {v:.4f}" for k, v in row.items()
                     if k.endswith(("train_loss", "select_miou", "val_miou", "val_pixel_accuracy"))]
            print(f"[{self.label}] epoch {row['epoch']}/{self.total}  " + "  ".join(parts)
                  + f"  {row['images_per_second']:.1f} img/s", flush=True)
        elif self.mode == "bar" and self._epoch_bar is not None:
            self._epoch_bar.set_postfix({k.replace("/train_", " ").replace("/val_", " val ").replace("/select_", " sel "):
                                         f"{v:.3f}" for k, v in row.items()
                                         if k.endswith(("train_loss", "val_miou", "select_miou"))})

    def close(self) -> None:
        """Close the bars.  A notebook widget bar is also recorded as one text line: a saved notebook (papermill's
        output, GitHub, nbconvert) keeps only the widget's text form from when it was created ("0%")."""
        if self._epoch_bar is not None:
            final = str(self._epoch_bar)
            self._epoch_bar.close()
            # tqdm.auto's bar in a kernel is a class of tqdm.auto deriving from tqdm.notebook's
            if any(cls.__module__ == "tqdm.notebook" for cls in type(self._epoch_bar).__mro__):
                print(final, flush=True)


def duration(seconds: float) -> str:
    """A duration in the unit that reads best: "42 s", "7.5 min", "3.2 h", "2.1 days"."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * (2 if unit == "days" else 1):
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def weights_text(cfg) -> list[str]:
    """The weights a run's networks start from, e.g. "deeplab_weights COCO_WITH_VOC_LABELS_V1 (deeplab_head
    replace)"."""
    return [f"{name} {value}" + (f" (deeplab_head {cfg.deeplab_head})" if name == "deeplab_weights" else "")
            for name, value in cfg.weights_options().items()]


def start_line(profile: str, sizes: dict, cfg, steps: int, first_epoch: int, device: str, run_dir) -> str:
    """What a run will do, before its first step: profile, split sizes, image sizes, epochs, steps, device, folder."""
    splits = ", ".join(f"{split} {n}" for split, n in sizes.items())
    resumed = f" from epoch {first_epoch}" if first_epoch > 1 else ""
    weights = "".join(f"; {part}" for part in weights_text(cfg))
    return (f"profile {profile}: {cfg.dataset} images ({splits}), crop {cfg.crop_size} after resize "
            f"{cfg.resize_size}; {cfg.epochs} epochs{resumed} x {steps} steps of batch {cfg.resolved_batch_size}"
            f"{weights}; device {device}; writing {run_dir}")
