"""Figures: training curves, prediction panels with class legends, per-class bars, predictions of a run."""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from mistudy.data import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, dataset_info, display_image  # noqa: E402
from mistudy.report import viz  # noqa: E402
from mistudy.training import inference, loaders
from mistudy.training.config import TrainConfig  # noqa: E402
from mistudy.training.train import train  # noqa: E402


def _history(networks=("unet",), parts=("ce",)):
    rows = []
    for epoch in (1, 2, 3):
        row = {"epoch": epoch, "lr": 1e-3, "seconds": 1.0}
        for k, net in enumerate(networks):
            row[f"{net}/train_loss"] = 2.0 / epoch + k
            for p in parts:
                row[f"{net}/train_{p}"] = 1.0 / epoch + k
            if epoch != 2:  # validation every other epoch: gaps must not break the curves
                row[f"{net}/val_miou"] = 0.1 * epoch
                row[f"{net}/select_miou"] = 0.05 * epoch
                row[f"{net}/select_pixel_accuracy"] = 0.5
                row[f"{net}/val_iou_micro"] = 0.2 * epoch
                row[f"{net}/val_pixel_accuracy"] = 0.3 * epoch
        rows.append(row)
    return rows


def _lines(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}


def test_training_curves_plot_every_network_and_metric():
    fig = viz.plot_training_curves(_history(("deeplabv3", "unet"), ("ce", "kl")), title="t")
    loss, iou, acc = fig.axes
    assert set(_lines(loss)) == {f"{n} {p}" for n in ("deeplabv3", "unet") for p in ("loss", "ce", "kl")}
    assert _lines(iou)["unet mIoU (validation)"] == ([1, 3], [pytest.approx(0.1), pytest.approx(0.3)])
    assert _lines(iou)["unet mIoU (selection split)"] == ([1, 3], [pytest.approx(0.05), pytest.approx(0.15)])
    assert set(_lines(acc)) == {"deeplabv3", "unet"}  # the selection split's accuracy is not drawn
    assert _lines(iou)["deeplabv3 micro IoU"][1] == [pytest.approx(0.2), pytest.approx(0.6)]
    assert _lines(acc)["unet"] == ([1, 3], [pytest.approx(0.3), pytest.approx(0.9)])
    assert _lines(loss)["deeplabv3 loss"][1] == [2.0, 1.0, pytest.approx(2 / 3)]
    styles = {line.get_label(): line.get_linestyle() for line in loss.lines}
    assert len({styles["unet loss"], styles["unet ce"], styles["unet kl"]}) == 3  # parts tell apart


def test_training_curves_explain_a_negative_loss():
    history = [{"epoch": e, "unet/train_loss": 0.2 - 0.2 * e, "unet/train_bce": 0.3, "unet/train_rmi": -0.1 * e}
               for e in (1, 2)]
    label = viz.plot_training_curves(history).axes[0].get_xlabel()
    assert "below 0 (loss, rmi)" in label and "mutual information" in label
    assert viz.plot_training_curves(_history(("unet",), ("ce",))).axes[0].get_xlabel() == "epoch"


def test_training_curves_single_part_loss_drawn_once():
    fig = viz.plot_training_curves(_history(("unet",), ("ce",)))
    assert list(_lines(fig.axes[0])) == ["unet loss"]  # ce == loss for the baseline
    with pytest.raises(ValueError, match="empty"):
        viz.plot_training_curves([])


def test_display_image_inverts_imagenet_normalisation():
    x = torch.rand(3, 5, 4)
    shown = display_image(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(x), normalized=True)
    assert shown.shape == (5, 4, 3)
    np.testing.assert_allclose(shown, x.permute(1, 2, 0).numpy(), atol=1e-6)
    np.testing.assert_array_equal(display_image(x * 3 - 1, normalized=False).max(), 1.0)  # clipped
    with pytest.raises(ValueError, match="3, H, W"):
        display_image(torch.rand(4, 4), normalized=False)


def test_class_legend_handles_use_palette_and_names():
    info = dataset_info("voc")
    handles = viz.class_legend_handles("voc", [15, 0], include_ignore=True)
    assert [h.get_label() for h in handles] == ["background", "person", "ignored (255)"]
    np.testing.assert_allclose(handles[1].get_facecolor()[:3], info.palette[15] / 255.0)
    np.testing.assert_allclose(handles[2].get_facecolor()[:3], (1.0, 1.0, 1.0))
    assert len(viz.class_legend_handles("cityscapes")) == 19


def test_prediction_panels_show_colourised_masks_and_a_legend():
    info = dataset_info("synthetic")
    target = np.zeros((6, 6), dtype=np.int64)
    target[:3] = 2
    target[0, 0] = IGNORE_INDEX
    pred = np.full((6, 6), 4, dtype=np.int64)
    images = [np.full((6, 6, 3), 0.5)] * 2
    fig = viz.plot_predictions(images, [target, target], {"A": [pred, pred], "B": [target, pred]}, "synthetic")
    axes = np.array(fig.axes).reshape(2, 4)
    assert [ax.get_title() for ax in axes[0]] == ["image", "ground truth", "A", "B"]
    gt_panel = axes[0, 1].images[0].get_array()
    np.testing.assert_array_equal(gt_panel[5, 5], info.palette[0])
    np.testing.assert_array_equal(gt_panel[1, 1], info.palette[2])
    np.testing.assert_array_equal(gt_panel[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(axes[1, 2].images[0].get_array()[3, 3], info.palette[4])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["background", "square", "ring", "ignored (255)"]  # only the classes shown
    with pytest.raises(ValueError, match="same number"):
        viz.plot_predictions(images, [target], {"A": [pred, pred]}, "synthetic")


def test_per_class_iou_bars():
    fig = viz.plot_per_class_iou({"a": [0.5, None, 0.25], "b": [0.1, 0.2, 0.3]}, ["x", "y", "z"])
    filled = [p.get_height() for p in fig.axes[0].patches if p.get_fill()]
    assert filled == [0.5, 0.0, 0.25, 0.1, 0.2, 0.3]  # an absent class draws no bar of its own
    # several seeds: the mean over the seeds where the class is present, each seed a dot
    fig = viz.plot_per_class_iou({"a": [[0.4, 0.6], [0.0, 0.0], [None, 0.3]]}, ["x", "y", "z"])
    assert [p.get_height() for p in fig.axes[0].patches if p.get_fill()] == [pytest.approx(0.5), 0.0,
                                                                            pytest.approx(0.3)]
    dots = [line for line in fig.axes[0].lines if line.get_marker() == "o"]
    assert sorted(float(v) for d in dots for v in d.get_ydata()) == [0.0, 0.0, 0.4, 0.6]
    with pytest.raises(ValueError, match="3 classes"):
        viz.plot_per_class_iou({"a": [0.5]}, ["x", "y", "z"])


def test_learning_curves_mean_and_range_over_seeds():
    def history(values):
        return [{"epoch": e + 1, "unet/val_miou": v} for e, v in enumerate(values)]

    fig = viz.plot_learning_curves({"easy": [history([0.2, 0.6]), history([0.4, 0.8])], "hard": [history([0.1, 0.1])]})
    lines = _lines(fig.axes[0])
    assert lines["easy (n=2)"] == ([1, 2], [pytest.approx(0.3), pytest.approx(0.7)])
    band = fig.axes[0].collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.2) and band[:, 1].max() == pytest.approx(0.8)


def test_predict_samples_are_the_runs_predictions(tmp_path):
    cfg = TrainConfig(dataset="synthetic", train_samples=6, val_samples=4, resize_size=36, crop_size=32,
                      unet_features=4, epochs=1, batch_size=3, device="cpu", progress="none",
                      run_dir=str(tmp_path / "run"))
    train(cfg)
    out = inference.predict_samples(tmp_path / "run", [3, 1], "best_miou")
    val_set = loaders.build_datasets(cfg)["val"]
    net = inference.load_network(tmp_path / "run", "unet", "best_miou")
    for k, i in enumerate((3, 1)):
        image, mask = val_set[i]
        np.testing.assert_array_equal(out["targets"][k], mask.numpy())
        with torch.no_grad():
            expected = net(image[None]).argmax(1)[0].numpy()
        np.testing.assert_array_equal(out["predictions"]["unet"][k], expected)
        assert out["images"][k].shape == (32, 32, 3) and 0 <= out["images"][k].min() <= out["images"][k].max() <= 1
    with pytest.raises(ValueError, match="out of range"):
        inference.predict_samples(tmp_path / "run", [4])


def test_save_figure_writes_png_and_provenance(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = viz.save_figure(fig, tmp_path / "f" / "curve.png", {"dataset": "synthetic", "epochs": 3})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prov = json.loads((tmp_path / "f" / "curve.png.provenance.json").read_text())
    assert prov["epochs"] == 3 and {"package", "torch", "date"} <= set(prov)
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["curve.png", "curve.png.provenance.json"]
    with pytest.raises(ValueError, match="PNG"):
        viz.save_figure(fig, tmp_path / "curve.pdf")


def test_a_one_colour_prediction_is_named_under_its_panel():
    targets = [np.array([[0, 1], [2, 255]])]
    images = [np.zeros((2, 2, 3))]
    fig = viz.plot_predictions(images, targets, {"rmi": [np.zeros((2, 2), int)], "baseline": [targets[0]]},
                               "synthetic")
    axes = fig.axes
    assert axes[2].get_xlabel() == "background everywhere"
    assert axes[3].get_xlabel() == ""  # a prediction with several classes gets no note
    plt.close(fig)


def test_absent_classes_are_marked_not_drawn_as_zero_bars():
    fig = viz.plot_per_class_iou({"a": [0.5, None, 0.0], "b": [0.4, None, None]}, ["x", "y", "z"],
                                 absent_label="class absent from this level")
    hatched = [p for p in fig.axes[0].patches if p.get_hatch()]
    assert len(hatched) == 3 and all(p.get_height() == 1.0 and not p.get_fill() for p in hatched)
    zero = [line for line in fig.axes[0].lines if line.get_marker() == "_"]  # a present class scored 0: a tick
    assert sum(len(m.get_xdata()) for m in zero) == 1
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "class absent from this level" in legend and "IoU 0 (present, never found)" in legend
    plt.close(fig)


def test_the_forest_plot_says_what_its_colours_mean_and_long_titles_wrap():
    from mistudy.methods.stats import Interval

    rows = [{"setting": "up", "d": Interval(0.2, 0.1, 0.3, 3)}, {"setting": "none", "d": Interval(0.0, -0.1, 0.1, 3)}]
    title = "a long title " * 12
    fig = viz.plot_effects(rows, {"d": "Δ mIoU"}, title=title)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "better, the interval on its own", "worse, the interval on its own",
        "no detectable difference, the interval on its own"]
    assert fig._suptitle.get_text().count("\n") >= 2
    # coloured by the table's (Holm) verdict, hollow where the interval alone excludes 0; each row's reference
    # written; one x-scale for every panel; the legend beside the panels
    rows[1]["e"] = Interval(-0.3, -0.5, -0.1, 3)
    fig = viz.plot_effects(rows, {"d": "a", "e": "b"}, verdicts={"d": ["no detectable difference", None],
                                                                 "e": [None, "worse"]},
                           references={"d": ["baseline (CE)", None], "e": [None, "the paper's setting"]})
    points = {ax.get_title(): [line for line in ax.lines if line.get_marker() == "o"] for ax in fig.axes}
    assert points["a"][0].get_markerfacecolor() == "white" and points["a"][0].get_color() == "0.5"
    assert points["b"][0].get_color() == "tab:red"
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim()
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["vs baseline (CE)", "vs the paper's setting"]
    assert fig.legends[0].get_bbox_to_anchor().x0 == pytest.approx(fig.bbox.width)  # at the figure's right edge
    assert viz.wrap_title("short") == "short"
    plt.close(fig)
    # a row that others are compared with, and has no bar of its own in a panel, says "reference" there (not a
    # blank row); a row with no bar that nothing is compared with stays blank; the x-axis says what Δ is of
    rows = [{"setting": "baseline (CE)", "d": None, "e": Interval(0.1, 0.0, 0.2, 3)},
            {"setting": "rmi", "d": Interval(-0.2, -0.3, -0.1, 3), "e": None}]
    fig = viz.plot_effects(rows, {"d": "a", "e": "b"}, references={"d": [None, "baseline (CE)"], "e": ["x", None]},
                           xlabel="Δ mIoU (95% interval)")
    texts = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.axes}
    assert texts == {"a": ["reference", "vs baseline (CE)"], "b": ["vs x"]}
    assert [ax.get_xlabel() for ax in fig.axes] == ["Δ mIoU (95% interval)"] * 2
    plt.close(fig)


def test_the_drawn_masks_are_the_scored_ones_under_bf16_and_channels_last(tmp_path):
    """predict_samples runs the networks with the run's precision and memory format: the confusion matrix of the
    drawn masks (scikit-learn) equals the per-image one the run was scored by (issue 20)."""
    from sklearn.metrics import confusion_matrix

    from mistudy.training import runs

    cfg = TrainConfig(dataset="synthetic", train_samples=6, val_samples=4, resize_size=36, crop_size=32,
                      unet_features=4, epochs=1, batch_size=3, eval_batch_size=1, device="cpu", progress="none",
                      amp="bf16", channels_last=True, run_dir=str(tmp_path / "run"))
    train(cfg)
    out = inference.predict_samples(tmp_path / "run", range(4), "best_miou")
    scored = runs.load_per_image(tmp_path / "run", "unet", "best_miou")["confmat"]
    classes = dataset_info("synthetic").num_classes
    for k in range(4):
        drawn = confusion_matrix(out["targets"][k].ravel(), out["predictions"]["unet"][k].ravel(),
                                 labels=range(classes))
        np.testing.assert_array_equal(drawn, scored[k])
