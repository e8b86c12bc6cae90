"""The CUDA path (issue 17): bf16 autocast and channels-last against float32, torch.compile and CUDA graphs against
eager, fused Adam, the RMI loss on the device against the CPU reference, a one-process NCCL group, and evaluation
without a host synchronisation per batch.

They run on ``$MISTUDY_CHECK_DEVICE`` (default cuda) and skip where it is absent, so the normal suite skips them on a
CPU machine; `benchmarks/gpu_check.sh --device cpu` runs them on the CPU (a dry run of the GPU check): the tests
that only mean something on a GPU (NCCL, host synchronisation) skip there with their reason.
"""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
from rmi_reference import rmi_loss_reference

from mistudy.methods.losses import RMILoss
from mistudy.training import runs
from mistudy.training.config import TrainConfig
from mistudy.training.networks import build_optimizers
from mistudy.training.train import train

DEVICE = os.environ.get("MISTUDY_CHECK_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(),
    reason="no CUDA device (run benchmarks/gpu_check.sh on a GPU; MISTUDY_CHECK_DEVICE=cpu runs these on the CPU)")]
ON_GPU = DEVICE.startswith("cuda")
gpu_only = pytest.mark.skipif(not ON_GPU, reason="means something on a GPU only")

RUN = dict(dataset="synthetic", train_samples=16, val_samples=8, resize_size=72, crop_size=64, unet_features=8,
           epochs=2, batch_size=4, progress="none", seed=0)


def run(tmp_path, name, **kw) -> list[dict]:
    train(TrainConfig(**{**RUN, "device": DEVICE, "run_dir": str(tmp_path / name), **kw}))
    return runs.load_history(tmp_path / name)


@pytest.mark.parametrize("use_case", ["baseline", "rmi", "mutual"])
def test_bf16_and_channels_last_train_like_float32(tmp_path, use_case):
    fast = run(tmp_path, "bf16", use_case=use_case, amp="bf16", channels_last=True)
    exact = run(tmp_path, "fp32", use_case=use_case, amp="off", channels_last=False)
    for a, b in zip(fast, exact):
        assert a["unet/train_loss"] == pytest.approx(b["unet/train_loss"], rel=0.05)
    assert fast[-1]["unet/val_pixel_accuracy"] == pytest.approx(exact[-1]["unet/val_pixel_accuracy"], abs=0.1)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])  # reduce-overhead: CUDA graphs on a GPU
def test_compiled_training_matches_eager(tmp_path, mode):
    eager = run(tmp_path, "eager", use_case="baseline", amp="off")
    compiled = run(tmp_path, "compiled", use_case="baseline", amp="off", compile=True, compile_mode=mode)
    for a, b in zip(eager, compiled):
        assert b["unet/train_loss"] == pytest.approx(a["unet/train_loss"], rel=2e-3)


def test_fused_adam_is_used_and_steps_like_plain_adam():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 3).to(DEVICE)
    twin = torch.nn.Conv2d(3, 4, 3).to(DEVICE)
    twin.load_state_dict(net.state_dict())
    fused = build_optimizers(TrainConfig(**RUN, device=DEVICE, use_case="baseline"), {"unet": net},
                             torch.device(DEVICE))["unet"]
    assert fused.defaults["fused"] is True
    plain = torch.optim.Adam(twin.parameters(), lr=fused.defaults["lr"], foreach=False)
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    for _ in range(3):
        for model, opt in ((net, fused), (twin, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool", ["none", "avg"])
def test_rmi_loss_on_the_device_matches_the_cpu_reference(pool):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 24, 24, generator=gen)  # float32, as training feeds it (the algebra is float64)
    target = torch.randint(0, 5, (2, 24, 24), generator=gen)
    target[:, :3] = 255
    ours_in = logits.to(DEVICE, copy=True).requires_grad_()  # a leaf of its own on the CPU too
    ours = RMILoss(5, radius=3, pool=pool)(ours_in, target.to(DEVICE))
    ours.backward()
    ref_in = logits.clone().requires_grad_()
    ref = rmi_loss_reference(ref_in, target, 5, radius=3, pool=pool)
    ref.backward()
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(ours_in.grad.cpu(), ref_in.grad, rtol=1e-5, atol=1e-7)


@gpu_only
def test_a_one_process_nccl_group_sums_metric_counts():
    import torch.distributed as dist

    from mistudy.methods.metrics import SegmentationMetrics

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        m = SegmentationMetrics(3, num_images=2)
        pred = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 0]]], device=DEVICE)
        m.update(pred, pred, index=torch.arange(2, device=DEVICE))
        m.all_reduce()
        assert m.compute()["pixel_accuracy"] == 1.0
    finally:
        dist.destroy_process_group()


@gpu_only
def test_evaluation_reads_nothing_back_per_batch(tmp_path):
    """The number of host synchronisations of a validation does not grow with its batches."""
    from mistudy.methods.models import build_model
    from mistudy.training import inference, loaders
    from mistudy.training.distributed import Context

    def syncs(images: int) -> int:
        cfg = TrainConfig(**{**RUN, "val_samples": images, "device": DEVICE})
        loader = loaders.make_loader(loaders.build_datasets(cfg)["val"], cfg, train=False, device=torch.device(DEVICE))
        net = build_model("unet", 7, init_features=8).to(DEVICE)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                inference.evaluate({"unet": net}, loader, 7, Context(0, 1, torch.device(DEVICE)))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(4 * RUN["batch_size"]) == syncs(RUN["batch_size"])
