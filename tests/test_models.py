import pytest
import torch

from mistudy.methods.models import DeepLabV3, UNet, build_model, count_parameters


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model tried to download weights")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_unet_parameter_count_matches_buda():
    assert count_parameters(UNet(3, 1)) == 7_763_041


def test_unet_structure():
    m = UNet(3, 4, init_features=8)
    assert not any(isinstance(mod, torch.nn.Sigmoid) for mod in m.modules())
    assert sum(isinstance(mod, torch.nn.MaxPool2d) for mod in m.modules()) >= 1
    assert sum(isinstance(mod, torch.nn.ConvTranspose2d) for mod in m.modules()) == 4
    assert m.head.kernel_size == (1, 1)


@pytest.mark.parametrize("h,w", [(32, 32), (37, 50), (15, 17), (1, 1)])
def test_unet_any_size(h, w):
    m = UNet(3, 5, init_features=4).eval()
    assert m(torch.randn(2, 3, h, w)).shape == (2, 5, h, w)


def test_unet_pads_to_multiple_of_16_and_crops_back():
    torch.manual_seed(0)
    m = UNet(3, 2, init_features=4).eval()
    x = torch.randn(1, 3, 30, 21)
    padded = torch.nn.functional.pad(x, (0, 11, 0, 2))  # zero-pad bottom/right to 32x32
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(padded)[..., :30, :21])


def test_deeplab_shapes_and_build():
    m = build_model("deeplabv3_resnet50", 19).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 65, 48))
    assert out.shape == (1, 19, 65, 48)
    assert isinstance(build_model("DeepLabV3", 3), DeepLabV3)
    assert 39_000_000 < count_parameters(m) < 40_000_000


def test_build_model_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="deeplabv3_resnet50.*unet|unet"):
        build_model("segformer", 3)


def test_deeplab_local_weights_keep_head_round_trip(tmp_path):
    torch.manual_seed(0)
    a = DeepLabV3(4).eval()
    path = tmp_path / "dl.pt"
    torch.save(a.net.state_dict(), path)
    b = DeepLabV3(4, weights_path=path, head="keep").eval()
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    # a checkpoint with another number of classes keeps everything but the last layer
    c = DeepLabV3(7, weights_path=path, head="keep")
    assert torch.equal(c.net.backbone.conv1.weight, a.net.backbone.conv1.weight)
    assert torch.equal(c.net.classifier[0].convs[0][0].weight, a.net.classifier[0].convs[0][0].weight)
    assert c.net.classifier[4].out_channels == 7


def test_deeplab_local_weights_replace_the_whole_head_as_the_authors(tmp_path):
    # The authors: deeplabv3_resnet50(pretrained=True), then classifier = DeepLabHead(2048, num_classes): the
    # backbone comes from the checkpoint, every layer of the head (ASPP, 3x3 conv, BatchNorm, 1x1) is new.
    torch.manual_seed(0)
    coco = DeepLabV3(21)
    state = {**coco.net.state_dict(), **{f"aux_classifier.{k}": v for k, v in {"0.weight": torch.ones(1)}.items()}}
    path = tmp_path / "coco.pt"
    torch.save(state, path)
    torch.manual_seed(1)
    ours = DeepLabV3(21, weights_path=path)  # head="replace" is the default, even for the same class count
    for k, v in ours.net.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(v, coco.net.state_dict()[k]), k
    head = [k for k, v in ours.net.state_dict().items() if k.startswith("classifier.") and v.dim() > 1]  # convs
    assert len(head) >= 7 and all(not torch.equal(ours.net.state_dict()[k], coco.net.state_dict()[k]) for k in head)
    torch.manual_seed(1)
    again = DeepLabV3(21)  # the new head is the ordinary random initialisation, seeded like the rest
    assert all(torch.equal(ours.net.state_dict()[k], again.net.state_dict()[k]) for k in head)
    with pytest.raises(ValueError, match="head must be"):
        DeepLabV3(3, head="partial")


def test_deeplab_backbone_weights(tmp_path):
    from torchvision.models import resnet50

    r = resnet50(weights=None)
    path = tmp_path / "r50.pt"
    torch.save(r.state_dict(), path)
    m = DeepLabV3(3, backbone_weights_path=path)
    assert torch.equal(m.net.backbone.layer1[0].conv1.weight, r.layer1[0].conv1.weight)


def test_deeplab_bad_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        DeepLabV3(3, weights_path=tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        DeepLabV3(3, weights_path=bad)


def test_bad_sizes():
    with pytest.raises(ValueError, match="out_channels"):
        UNet(3, 0)


def test_unet_weights_load_and_a_new_head_replaces_another_class_count(tmp_path):
    from mistudy.methods.models import load_unet_weights

    torch.manual_seed(0)
    source = build_model("unet", 7, init_features=8)
    path = tmp_path / "unet.pt"
    torch.save(source.state_dict(), path)
    same = build_model("unet", 7, init_features=8)
    load_unet_weights(same, path)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), source.state_dict().values()))
    torch.manual_seed(1)
    other = build_model("unet", 21, init_features=8)
    head_before = other.head.weight.clone()
    load_unet_weights(other, path)
    for k, v in other.state_dict().items():
        if k.startswith("head."):
            continue
        assert torch.equal(v, source.state_dict()[k]), k
    assert torch.equal(other.head.weight, head_before) and other.head.weight.shape[0] == 21
    replaced = build_model("unet", 7, init_features=8)
    fresh_head = replaced.head.weight.clone()
    load_unet_weights(replaced, path, head="replace")
    assert torch.equal(replaced.head.weight, fresh_head)
    # a checkpoint of a run (best_*.pt) holds the state dict under "model"
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "best.pt")
    load_unet_weights(build_model("unet", 7, init_features=8), tmp_path / "best.pt")


def test_weights_of_another_architecture_name_the_mismatched_keys(tmp_path):
    from mistudy.methods.models import load_unet_weights

    torch.save(build_model("unet", 7, init_features=16).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"wide.pt does not fit a U-Net of width 8: mismatched shapes "
                                         r"\['encoder1.conv1.weight \(file \(16, 3, 3, 3\), model \(8, 3, 3, 3\)\)"):
        load_unet_weights(build_model("unet", 7, init_features=8), tmp_path / "wide.pt")
    torch.save(build_model("deeplabv3", 7).state_dict(), tmp_path / "deeplab.pt")
    with pytest.raises(ValueError, match="deeplab.pt does not fit a U-Net of width 8: missing keys .*unexpected keys"):
        load_unet_weights(build_model("unet", 7, init_features=8), tmp_path / "deeplab.pt")
    torch.save(build_model("unet", 7, init_features=8).state_dict(), tmp_path / "unet.pt")
    with pytest.raises(ValueError, match="unet.pt does not fit a DeepLabV3-ResNet50"):
        build_model("deeplabv3", 7, weights_path=tmp_path / "unet.pt")


@pytest.mark.parametrize("size", [64, 40, 160])
def test_deeplab_skipping_padding_taps_equals_torchvisions_network(size):
    """At 64x64 the ASPP rates see only zero padding outside their centre tap (and at 40x40 layer 4's dilation 4
    does on 5x5 maps); at 160x160 nothing is skipped.  Outputs and gradients equal torchvision's DeepLabV3."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    ours = build_model("deeplabv3", 5).train()
    reference = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=False).train()
    reference.load_state_dict(ours.net.state_dict())
    x = torch.randn(2, 3, size, size)
    torch.manual_seed(1)  # the head's dropout draws the same mask in both
    a = ours(x)
    torch.manual_seed(1)
    b = reference(x)["out"]
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    a.square().mean().backward()
    b.square().mean().backward()
    grads = dict(ours.net.named_parameters())
    for name, p in reference.named_parameters():
        assert (grads[name].grad - p.grad).abs().max() <= 1e-4 * p.grad.abs().max() + 1e-12, name


# ------------------------------------------------------------------ weights by name (torchvision's weights API)

REAL_DOWNLOAD = torch.hub.download_url_to_file  # before the autouse fixture refuses it

def _cache_file(torch_home, name: str, enum: str = "DeepLabV3_ResNet50_Weights"):
    """Where torchvision keeps the file of weights ``name``: <TORCH_HOME>/hub/checkpoints/<the URL's file name>."""
    from torchvision.models import get_weight

    return torch_home / "hub" / "checkpoints" / get_weight(f"{enum}.{name}").url.rsplit("/", 1)[-1]


def _mutual(**kw):
    from mistudy.training.config import TrainConfig

    return TrainConfig(use_case="mutual", train_samples=8, val_samples=4, resize_size=36, crop_size=32, batch_size=4,
                       unet_features=4, device="cpu", progress="none", deeplab_weights="COCO_WITH_VOC_LABELS_V1", **kw)


def test_a_weights_name_loads_torchvisions_file_from_the_hub_cache(tmp_path, monkeypatch):
    from torchvision.models.segmentation import deeplabv3_resnet50

    from mistudy.training import networks, runs
    from mistudy.training.progress import start_line

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    coco = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True).state_dict()
    path = _cache_file(tmp_path, "COCO_WITH_VOC_LABELS_V1")
    assert path.name == "deeplabv3_resnet50_coco-cd0a2569.pth"
    path.parent.mkdir(parents=True)
    torch.save(coco, path)
    cfg = _mutual()
    cfg.check_paths()  # in the cache: nothing to fetch (the fixture refuses any download)
    assert cfg.weights_files() == {"deeplab_weights": path}
    assert runs.weights_record(cfg)["deeplab_weights"]["path"] == str(path)
    assert "; deeplab_weights COCO_WITH_VOC_LABELS_V1 (deeplab_head replace); device cpu" in \
        start_line("paper", {"train": 8}, cfg, 2, 1, "cpu", "run")  # what the run says before its first step
    net = networks.build_networks(cfg)["deeplabv3"]
    assert torch.equal(net.net.backbone.layer4[2].conv3.weight, coco["backbone.layer4.2.conv3.weight"])
    assert not torch.equal(net.net.classifier[0].convs[0][0].weight, coco["classifier.0.convs.0.0.weight"])  # new head
    full = cfg.replace(deeplab_weights="DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1")  # the enum's full name
    assert full.weights_files() == {"deeplab_weights": path}
    torch.save(UNet(3, 21, 4).state_dict(), path)  # a file of another architecture under the name
    with pytest.raises(ValueError, match=r"deeplabv3_resnet50_coco-cd0a2569.pth does not fit a DeepLabV3-ResNet50: "
                                         r"missing keys \['backbone.conv1.weight'"):
        networks.build_networks(cfg)


def test_weights_names_are_checked_and_only_the_built_networks_need_theirs(tmp_path, monkeypatch):
    from mistudy.training.config import TrainConfig

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown deeplab_backbone_weights weights name 'IMAGENET1K_V3'; valid: "
                                         r"IMAGENET1K_V1, IMAGENET1K_V2"):
        TrainConfig(use_case="mutual", deeplab_backbone_weights="IMAGENET1K_V3")
    cfg = TrainConfig(use_case="mutual", deeplab_backbone_weights="IMAGENET1K_V2", device="cpu")
    assert cfg.weights_files()["deeplab_backbone_weights"] == _cache_file(tmp_path, "IMAGENET1K_V2", "ResNet50_Weights")
    baseline = TrainConfig(use_case="baseline", deeplab_weights="COCO_WITH_VOC_LABELS_V1", device="cpu")
    assert baseline.weights_files() == {}  # no DeepLabV3 trained: its weights are neither needed nor fetched
    baseline.check_paths()


def test_a_missing_named_file_is_fetched_only_with_download(tmp_path, monkeypatch):
    from urllib.error import URLError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = _cache_file(tmp_path, "COCO_WITH_VOC_LABELS_V1")
    url = "https://download.pytorch.org/models/deeplabv3_resnet50_coco-cd0a2569.pth"
    with pytest.raises(FileNotFoundError) as e:
        _mutual().check_paths()  # the fixture fails the test if anything is fetched
    message = str(e.value)
    assert "\n" not in message and str(path) in message and url in message
    assert "--download" in message and "--deeplab-weights none" in message

    def refused(*args, **kwargs):
        raise URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", REAL_DOWNLOAD)  # the real one, with no network:
    monkeypatch.setattr(torch.hub, "urlopen", refused)
    with pytest.raises(FileNotFoundError) as e:
        _mutual(download=True).check_paths()
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"cannot download deeplab_weights COCO_WITH_VOC_LABELS_V1 "
                                                      f"from {url} (")
    assert "Connection refused" in message and f"put the file at {path}" in message and not path.exists()

    def fetched(url_, dst, hash_prefix=None, progress=True):  # a download that succeeds, into torch's cache
        torch.save(DeepLabV3(21).net.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fetched)
    _mutual(download=True).check_paths()
    assert path.is_file()
