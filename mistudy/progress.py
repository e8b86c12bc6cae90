"""What a training run shows while it runs: tqdm bars (JupyterLab, terminals), one line per epoch (headless,
`MISTUDY_PROGRESS=log`, which the study sets), or nothing.  Only rank 0 reports."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_mode(option: str) -> str:
    """The configured mode; "auto" means env MISTUDY_PROGRESS, else bars."""
    return option if option != "auto" else os.environ.get("MISTUDY_PROGRESS", "bar")


class Progress:
    def __init__(self, label: str, total_epochs: int, option: str = "auto", enabled: bool = True):
        self.label, self.total = label, total_epochs
        self.mode = progress_mode(option) if enabled else "none"
        self._epoch_bar = self._step_bar = None

    def epochs(self, first: int):
        """The epochs first..total, under a bar in "bar" mode."""
        epochs = range(first, self.total + 1)
        if self.mode != "bar":
            return epochs
        self._epoch_bar = tqdm(epochs, desc=f"{self.label} epochs", initial=first - 1, total=self.total,
                               dynamic_ncols=True)
        return self._epoch_bar

    def steps(self, loader, epoch: int):
        if self.mode != "bar":
            return loader
        self._step_bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
        return self._step_bar

    def step_done(self, meter, seconds: float, world_size: int) -> None:
        """After a step whose losses were just checked: running mean losses and images/s on the step bar (this
        reads the device sums back, so it runs only at the loop's NaN checks)."""
        if self._step_bar is None or self.mode != "bar":
            return
        self._step_bar.set_postfix({f"{n}_loss": f"{(s['loss'] / meter.seen).item():.4f}" for n, s in meter.sums.items()}
                                   | {"img/s": f"{meter.seen * world_size / max(seconds, 1e-9):.1f}"})

    def epoch_done(self, row: dict) -> None:
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
            if type(self._epoch_bar).__module__.startswith("tqdm.notebook"):
                print(final, flush=True)
