import pytest
import torch

from mistudy.models import DeepLabV3, UNet, build_model, count_parameters


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
