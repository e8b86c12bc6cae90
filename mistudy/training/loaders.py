"""Data loaders of a run: the datasets of a configuration, samplers whose order and crops depend only on (seed,
epoch, sample), and the move of a batch to the device.

`EpochSampler` and `SeededItems` make the three use-cases with the same seed see exactly the same training data,
whatever their batch sizes, worker counts or resume points: that is what makes the paired comparison paired.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mistudy import data
from mistudy.io import machine
from mistudy.training.config import TrainConfig


class EpochSampler(Sampler):
    """Shuffled order fixed by (seed, epoch), sharded over ranks, indices tagged with the epoch.

    The yielded index is `epoch * n + i`, so `SeededItems` can seed each item's augmentation from (seed, epoch, i):
    the same crops whatever the use-case, batch size, worker count or resume point.  A last per-rank batch that
    would hold a single sample is dropped in training (BatchNorm needs >= 2 samples).  Evaluation passes use the
    epoch number as the pass number (new random crops per pass, the same ones every time).
    """

    def __init__(self, n: int, seed: int, shuffle: bool, batch_size: int, rank: int = 0, world_size: int = 1,
                 drop_single: bool = True):
        self.n, self.seed, self.shuffle, self.batch_size = n, seed, shuffle, batch_size
        self.rank, self.world_size, self.drop_single = rank, world_size, drop_single
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
            order += order[: (-self.n) % self.world_size]  # equal shards so DDP ranks step together
        else:
            order = list(range(self.n))  # evaluation: no padding, every sample exactly once
        mine = order[self.rank :: self.world_size]
        if self.drop_single and len(mine) % self.batch_size == 1 and len(mine) > 1:
            mine = mine[:-1]
        return mine

    def __iter__(self):
        return iter([self.epoch * self.n + i for i in self._indices()])

    def __len__(self) -> int:
        return len(self._indices())


class SeededItems(Dataset):
    """Item i of epoch (or evaluation pass) e, with its random transform seeded by (seed, e, i): (image, mask, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, tagged_index: int):
        epoch, i = divmod(int(tagged_index), len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF)
            image, mask = self.dataset[i]
        return image, mask, i


def build_datasets(cfg: TrainConfig, check: bool = False) -> dict[str, Dataset]:
    """{"train", "select" (only if select_fraction > 0), "val"} with the configured transforms.

    check: VOC/Cityscapes files are checked now (`data.check_files`: every file complete and of matching size; the
    masks of the scored splits decoded unless a cache holds them), so that a bad file stops the run before it
    trains, not an epoch later.
    """
    common = dict(root=cfg.data_root, resize_size=cfg.resize_size, crop_size=cfg.crop_size,
                  square_resize=cfg.square_resize, normalize=cfg.normalize, cache_dir=cfg.cache_dir, seed=cfg.data_seed,
                  synthetic_level=cfg.synthetic_level, select_fraction=cfg.select_fraction)
    evaluation = dict(train=False, protocol=cfg.eval_protocol)
    sizes = {"train": cfg.train_samples, "val": cfg.val_samples, "select": None}
    if cfg.dataset == "synthetic":  # generated at resize_size x resize_size; the selection split is its own
        n_train = cfg.train_samples or data.SYNTHETIC_DEFAULT_SIZES["train"]
        sizes = {"train": n_train, "val": cfg.val_samples, "select": max(2, round(cfg.select_fraction * n_train))}
    splits = ["train", "val"] + (["select"] if cfg.select_fraction > 0 else [])
    sets = {}
    for split in splits:
        try:
            sets[split] = data.build_dataset(cfg.dataset, split, num_samples=sizes[split],
                                             **(dict(train=True) if split == "train" else evaluation), **common)
        except ValueError as e:  # "num_samples=N but ...": named by the option that set it
            if not str(e).startswith("num_samples="):
                raise
            raise ValueError(f"{split}_samples{str(e)[len('num_samples'):]}") from None
    if check and cfg.dataset != "synthetic":
        _check_held_out(sets, cfg.dataset)
        for split, dataset in sets.items():  # a built cache has decoded (and checked) its masks already
            cached = isinstance(dataset, data.ResizedCache)
            data.check_files(dataset.source if cached else dataset, decode_masks=split != "train" and not cached)
    return sets


def _check_held_out(sets: dict[str, Dataset], dataset: str) -> None:
    """No image of the training or selection split is also a validation image (the same file name)."""
    val = {image.stem for image, _ in sets["val"].samples}
    for split in ("train", "select"):
        shared = sorted(image for image, _ in sets[split].samples if image.stem in val) if split in sets else []
        if shared:
            raise ValueError(f"{len(shared)} image(s) of {dataset}'s {split} split are also validation images, e.g. "
                             f"{shared[0]}: validation scores would not be held out; check the split lists")


def evaluation_batch_size(cfg: TrainConfig) -> int:
    if cfg.eval_batch_size:
        return cfg.eval_batch_size
    if cfg.eval_protocol == "full" and cfg.dataset != "synthetic":
        return 1  # whole images of different sizes cannot be stacked
    return cfg.resolved_batch_size


def check_workers(cfg: TrainConfig) -> None:
    """Refuse more loader workers than cores (each is a process with its own copy of the dataset object)."""
    cores = machine.available_cores()
    if cfg.num_workers is not None and cfg.num_workers > cores:
        what = "this study task's share of cores, --cpus-per-task" if os.environ.get(machine.TASK_CORES) else \
            "the CPU cores this process may use"
        raise ValueError(f"num_workers must be at most {cores} ({what}), got {cfg.num_workers}")


def _die_with_parent(parent: int, worker_id: int) -> None:
    """In each loader worker: the kernel kills it when the process that started it dies, however it dies (kill -9,
    the out-of-memory killer), instead of it finishing its batch first (Linux; elsewhere PyTorch's own check,
    made while a worker waits for work, remains)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the line above
        os._exit(1)


def make_loader(dataset: Dataset, cfg: TrainConfig, *, train: bool, device: torch.device, rank: int = 0,
                world_size: int = 1) -> DataLoader:
    batch_size = cfg.resolved_batch_size if train else evaluation_batch_size(cfg)
    sampler = EpochSampler(len(dataset), cfg.seed, shuffle=train, batch_size=batch_size, rank=rank,
                           world_size=world_size, drop_single=train)
    workers = cfg.num_workers
    if workers is None:  # on CPU workers compete with training for the same cores (measured: slower)
        workers = min(8, machine.available_cores() // world_size) if device.type == "cuda" else 0
    workers = min(workers, machine.available_cores())  # a saved run's setting on a smaller machine
    return DataLoader(SeededItems(dataset, cfg.seed), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      worker_init_fn=functools.partial(_die_with_parent, os.getpid()) if workers else None)




def to_device(images: torch.Tensor, target: torch.Tensor, device: torch.device, channels_last: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on the device: images [N, 3, H, W] (channels-last if asked), masks [N, H, W]."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(device, non_blocking=True)
