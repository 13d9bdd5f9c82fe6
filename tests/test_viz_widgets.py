"""Overlays, class statistics, figures and the MaskInspector's logic, on a tiny in-memory dataset (no display)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from synthseg.core import ParameterError
from synthseg.labels import LabelSpace, get_space
from synthseg.viz import class_stats, dataset_stats, legend_html, overlay, plot_class_shares, show_samples
from synthseg.widgets import MaskInspector, inspect_masks

SPACE = LabelSpace(name="toy", classes=("road", "building", "car", "sky"),
                   colors=((128, 64, 128), (70, 70, 70), (0, 0, 142), (70, 130, 180)),
                   ignore_index=255, ignore_color=(0, 0, 0))


class Toy:
    """Random images with random labels over 0..3 and 255; sample i has classes 0..i+1 only."""
    space = SPACE

    def __init__(self, n=3):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        label = rng.integers(0, min(i + 2, 4), (20, 30)).astype(np.uint8)
        label[rng.random((20, 30)) < 0.1] = 255
        return {"image": rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "label": label, "name": f"s{i}"}


@pytest.fixture
def sample():
    item = Toy()[2]
    return item["image"], item["label"]


def test_overlay_alpha_extremes(sample):
    img, lbl = sample
    assert (overlay(img, lbl, SPACE, alpha=0) == img).all()
    out = overlay(img, lbl, SPACE, alpha=1)
    labelled = lbl != 255
    assert (out[labelled] == np.asarray(SPACE.colors, np.uint8)[lbl[labelled]]).all()
    assert (out[~labelled] == img[~labelled]).all()


def test_overlay_blend_and_ignore(sample):
    img, lbl = sample
    out = overlay(img, lbl, SPACE, alpha=0.3)
    labelled = lbl != 255
    expect = np.rint(0.7 * img[labelled] + 0.3 * np.asarray(SPACE.colors, np.float64)[lbl[labelled]])
    assert np.abs(out[labelled].astype(int) - expect).max() <= 1
    assert (out[lbl == 255] == img[lbl == 255]).all()
    assert out.dtype == np.uint8 and out.shape == img.shape


def test_overlay_hidden_by_id_and_name(sample):
    img, lbl = sample
    by_name = overlay(img, lbl, SPACE, alpha=1, hidden=["car", "road"])
    by_id = overlay(img, lbl, SPACE, alpha=1, hidden=[2, 0])
    assert (by_name == by_id).all()
    for c in (0, 2):
        assert (by_name[lbl == c] == img[lbl == c]).all()
    assert (by_name[lbl == 1] == SPACE.colors[1]).all()


@pytest.mark.parametrize("alpha", [-0.1, 1.01, float("nan"), "0.5"])
def test_overlay_bad_alpha(sample, alpha):
    with pytest.raises(ParameterError, match="alpha"):
        overlay(*sample, SPACE, alpha=alpha)


def test_overlay_size_mismatch(sample):
    img, lbl = sample
    with pytest.raises(ParameterError, match=r"\(20, 30, 3\).*\(20, 29\)"):
        overlay(img, lbl[:, :29], SPACE)


def test_overlay_unknown_hidden_class(sample):
    with pytest.raises(ParameterError, match="tree"):
        overlay(*sample, SPACE, hidden=["tree"])


def test_class_stats_matches_bincount(sample):
    _, lbl = sample
    counts = np.bincount(lbl.ravel(), minlength=256)
    st = class_stats(lbl, SPACE)
    assert list(st.columns) == ["id", "name", "color", "pixels", "share"]
    assert np.isclose(st.share.sum(), 1)
    assert dict(zip(st.id, st.pixels)) == {i: counts[i] for i in range(4) if counts[i]}
    assert np.allclose(st.share, st.pixels / counts[:4].sum())
    assert st.share.is_monotonic_decreasing
    assert st.set_index("name").color["road"] == "#804080"


def test_class_stats_with_ignore_row(sample):
    _, lbl = sample
    st = class_stats(lbl, SPACE, ignore=False)
    assert np.isclose(st.share.sum(), 1) and st.pixels.sum() == lbl.size
    assert st.set_index("name").pixels["ignore"] == (lbl == 255).sum()


def test_class_stats_only_present_classes():
    lbl = np.full((4, 4), 255, np.uint8)
    lbl[0] = 3
    st = class_stats(lbl, SPACE)
    assert st.name.tolist() == ["sky"] and st.share.tolist() == [1.0]
    assert len(class_stats(np.full((4, 4), 255, np.uint8), SPACE)) == 0


def test_dataset_stats_sums_items():
    ds = Toy()
    st = dataset_stats(ds)
    total = sum(np.bincount(ds[i]["label"].ravel(), minlength=256) for i in range(len(ds)))
    assert dict(zip(st.id, st.pixels)) == {i: total[i] for i in range(4) if total[i]}
    assert np.isclose(st.share.sum(), 1)
    images = st.set_index("id").images
    assert images[0] == 3 and images[2] == 2 and images[3] == 1  # sample i holds classes 0..i+1
    assert dataset_stats(ds, max_items=1).pixels.sum() == class_stats(ds[0]["label"], SPACE).pixels.sum()
    with pytest.raises(ParameterError, match="max_items"):
        dataset_stats(ds, max_items=0)


def test_legend_html(sample):
    st = class_stats(sample[1], SPACE)
    html = legend_html(st)
    assert html.count("<tr>") == len(st) and all(n in html for n in st.name) and "#4682b4" in html


def test_figures(sample):
    ds = Toy()
    fig = show_samples([ds[i] for i in range(3)], SPACE, ncols=2)
    assert len(fig.axes) == 12 and fig.axes[0].get_title() == "s0"
    fig2 = plot_class_shares(dataset_stats(ds))
    assert len(fig2.axes[0].patches) == 4
    plt.close(fig)
    plt.close(fig2)


def test_inspector_logic():
    ds = Toy()
    insp = MaskInspector(ds)
    first = insp.render()
    assert insp.index == 0 and first.shape == (20, 30, 3)
    insp.select(2)
    img, lbl = ds[2]["image"], ds[2]["label"]
    assert not np.array_equal(insp.render(), first) and insp.picker.value == 2
    assert insp.stats().equals(class_stats(lbl, SPACE))
    insp.hide("car")
    out = insp.render()
    assert (out[lbl == 2] == img[lbl == 2]).all() and not (out[lbl == 0] == img[lbl == 0]).all()
    assert insp.toggle.value == (2,)
    insp.set_alpha(0)
    assert (insp.render() == img).all()
    insp.set_alpha(1).show_all()
    assert (insp.render()[lbl == 2] == SPACE.colors[2]).all() and insp.hidden == frozenset()


def test_inspector_hidden_class_survives_samples_without_it():
    ds = Toy()
    insp = inspect_masks(ds).select(2).hide(["sky"])
    insp.select(0)  # sample 0 has no sky: the toggle lists only classes present
    assert 3 not in [i for _, i in insp.toggle.options] and insp.hidden == {3}
    insp.toggle.value = (0,)  # a click in the toggle on sample 0
    assert insp.hidden == {0, 3}
    insp.select(2)
    assert set(insp.toggle.value) == {0, 3}


def test_inspector_widget_callbacks():
    ds = Toy()
    insp = MaskInspector(ds)
    insp.picker.value = 1
    assert insp.index == 1
    insp.opacity.value = 0.0
    assert insp.alpha == 0 and (insp.render() == ds[1]["image"]).all()
    assert bytes(insp.image.value[:4]) == b"\x89PNG"
    assert "application/vnd.jupyter.widget-view+json" in insp._repr_mimebundle_()


def test_inspector_bad_input():
    insp = MaskInspector(Toy())
    with pytest.raises(ParameterError, match="index"):
        insp.select(3)
    with pytest.raises(ParameterError, match="alpha"):
        insp.set_alpha(2)
    with pytest.raises(ParameterError, match="dataset"):
        MaskInspector(Toy(0))


# --- results: IoU bars, confusion heatmap, formatted tables, IoUExplorer ---

NAMES = ["road", "building", "vegetation", "sky", "car"]


def fake_confusion(acc, seed):
    """(5, 5) counts whose row c has about acc[c] of its pixels on the diagonal."""
    rng = np.random.default_rng(seed)
    area = np.array([4000, 2500, 1800, 1500, 600])
    off = rng.dirichlet(np.ones(5), size=5)
    off[np.diag_indices(5)] = 0
    p = (1 - np.asarray(acc))[:, None] * off / off.sum(1, keepdims=True)
    p[np.diag_indices(5)] = acc
    return np.stack([rng.multinomial(n, row) for n, row in zip(area, p)])


@pytest.fixture
def results():
    from synthseg.metrics import ConfusionMatrix, confusion_matrix
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (2, 16, 16)).astype(np.uint8)
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 5, target.shape)).astype(np.uint8)
    cm = ConfusionMatrix(5, NAMES)
    cm.update(pred, target)
    assert (cm.matrix.numpy() == confusion_matrix(pred, target, 5)).all()
    return {"source": cm,
            "synthetic": sum(fake_confusion([0.9, 0.8, 0.7, 0.9, 0.5], s) for s in range(3)),
            "oracle": fake_confusion([0.97, 0.9, 0.9, 0.95, 0.85], 7)}


def test_plot_iou_bars_methods_and_gaps():
    from matplotlib.colors import to_hex
    from synthseg.labels import get_space
    from synthseg.metrics import iou_table
    from synthseg.viz import plot_iou_bars
    tabs = {m: iou_table(fake_confusion(a, 0), NAMES) for m, a in
            (("a", [0.9] * 5), ("b", [0.6] * 5), ("c", [0.3] * 5))}
    tabs["b"].loc["car", "IoU"] = np.nan
    tabs["c"] = tabs["c"].drop(index="sky").assign(IoU_std=0.05)  # missing class and error bars
    fig = plot_iou_bars(tabs, title="t")
    ax = fig.axes[0]
    w = np.array([b.get_width() for b in ax.patches]).reshape(3, 5)
    assert np.allclose(w[0], 100 * tabs["a"]["IoU"]) and np.isnan(w[1, 4]) and np.isnan(w[2, 3])
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES and ax.get_title() == "t"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[1] == f"b (mIoU {100 * tabs['b']['IoU'].iloc[:4].mean():.1f})"
    assert len({b.get_facecolor() for b in ax.patches}) == 3
    cs = get_space("cityscapes")
    one = plot_iou_bars(tabs["a"], space=cs)
    assert [to_hex(b.get_facecolor()) for b in one.axes[0].patches] == \
        ["#{:02x}{:02x}{:02x}".format(*cs.colors[cs.index(n)]) for n in NAMES]
    fig.canvas.draw()  # NaN bars and error bars render under Agg
    plt.close("all")
    with pytest.raises(ParameterError, match="IoU"):
        plot_iou_bars({"x": tabs["a"].drop(columns="IoU")})
    with pytest.raises(ParameterError, match="tables"):
        plot_iou_bars({})


@pytest.mark.parametrize("normalize,axis", [("true", 1), ("pred", 0)])
def test_confusion_normalised(normalize, axis):
    import torch
    from synthseg.viz import normalize_confusion, plot_confusion
    cm = fake_confusion([0.8] * 5, 1)
    cm[:, 2] = 0  # an empty column
    cm[3] = 0  # an empty row
    norm = normalize_confusion(torch.from_numpy(cm), normalize)
    sums = norm.sum(axis)
    nonempty = cm.sum(axis) > 0
    assert np.allclose(sums[nonempty], 1) and (sums[~nonempty] == 0).all()
    fig = plot_confusion(cm, NAMES, normalize=normalize)
    ax = fig.axes[0]
    assert np.allclose(ax.images[0].get_array(), norm) and len(ax.texts) == 25
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES == [t.get_text() for t in ax.get_yticklabels()]
    plt.close(fig)


def test_confusion_counts_and_errors():
    from synthseg.viz import plot_confusion
    cm = fake_confusion([0.8] * 5, 2)
    fig = plot_confusion(cm, NAMES, normalize=None)
    assert (fig.axes[0].images[0].get_array() == cm).all()
    big = plot_confusion(np.eye(21, dtype=np.int64), [str(i) for i in range(21)])
    assert len(big.axes[0].texts) == 0  # no cell values above 20 classes
    plt.close("all")
    with pytest.raises(ParameterError, match="normalize.*true, pred, None"):
        plot_confusion(cm, NAMES, normalize="rows")
    with pytest.raises(ParameterError, match="class_names"):
        plot_confusion(cm, NAMES[:3])
    with pytest.raises(ParameterError, match="square"):
        plot_confusion(cm[:, :4], NAMES)


def test_format_results():
    import pandas as pd
    from synthseg.viz import format_results
    df = pd.DataFrame({"method": ["a", "b", "c"], "mIoU": [0.6234, 0.5, np.nan], "mIoU_std": [0.0123, np.nan, 0.01],
                       "aAcc": [0.9, 0.85, 0.8], "seeds": [3, 1, 3]}, index=[10, 11, 12])
    out = format_results(df)
    assert list(out.columns) == ["method", "mIoU", "aAcc", "seeds"] and list(out.index) == [10, 11, 12]
    assert out["seeds"].tolist() == [3, 1, 3]  # integer counts are not scores
    assert out["mIoU"].tolist() == ["62.3 ± 1.2", "50.0", "n/a"]
    assert out["aAcc"].tolist() == ["90.0", "85.0", "80.0"] and out["method"].tolist() == ["a", "b", "c"]
    with pytest.raises(ParameterError, match="table"):
        format_results({"mIoU": [0.5]})


def test_iou_explorer_logic(results):
    from synthseg.labels import get_space
    from synthseg.metrics import iou_table
    from synthseg.widgets import IoUExplorer
    ex = IoUExplorer(results, NAMES, space=get_space("cityscapes"))
    assert ex.method == "source" and ex.table().equals(results["source"].table())
    png = ex.confusion.value
    ex.select("synthetic")
    assert ex.table().equals(iou_table(results["synthetic"], NAMES)) and ex.picker.value == "synthetic"
    assert ex.confusion.value != png and "synthetic" in ex.report.value
    ex.compare(True)
    tab = ex.table()
    assert list(tab.columns) == ["source", "synthetic", "oracle"] and list(tab.index) == NAMES
    assert np.allclose(tab["oracle"], iou_table(results["oracle"], NAMES)["IoU"]) and ex.all_box.value
    assert ex.bars_png()[:8] == b"\x89PNG\r\n\x1a\n" and ex.confusion_png()[:4] == b"\x89PNG"
    assert plt.get_fignums() == []  # rendered figures are closed
    ex.compare(False)
    assert list(ex.table().columns) == ["IoU", "Acc", "pixels"]


def test_iou_explorer_widget_and_errors(results):
    from synthseg.widgets import IoUExplorer
    ex = IoUExplorer(results, NAMES)
    ex.picker.value = "oracle"
    ex.all_box.value = True
    assert ex.method == "oracle" and ex.compare_all
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()
    with pytest.raises(ParameterError, match="method 'nope'.*source, synthetic, oracle"):
        ex.select("nope")
    with pytest.raises(ParameterError, match="results"):
        IoUExplorer({"a": np.eye(3)}, NAMES)
    with pytest.raises(ParameterError, match="results"):
        IoUExplorer({}, NAMES)


# --- mask edits and the GenerationBrowser ---


def test_relabel_region_changes_exactly_the_connected_region():
    from synthseg.viz import relabel_region
    lbl = np.zeros((6, 8), np.uint8)
    lbl[1:3, 1:3] = 2  # region A
    lbl[3, 3] = 2  # touches A only diagonally
    lbl[1:3, 5:7] = 2  # region B, apart
    before = lbl.copy()
    out = relabel_region(lbl, (1, 1), 5)
    changed = np.zeros_like(lbl, bool)
    changed[1:3, 1:3] = changed[3, 3] = True
    assert ((out != lbl) == changed).all() and (out[changed] == 5).all() and (lbl == before).all()
    four = relabel_region(lbl, (1, 1), 5, connectivity=4)
    assert four[3, 3] == 2 and (four[1:3, 1:3] == 5).all() and (four[1:3, 5:7] == 2).all()
    background = relabel_region(lbl.astype(np.int64), (5, 0), 255)  # the one background region becomes ignore
    assert background.dtype == np.uint8 and ((background == 255) == (lbl == 0)).all()


def test_relabel_class_and_errors():
    from synthseg.viz import relabel_class, relabel_region
    lbl = np.array([[0, 1, 1], [2, 1, 0]], np.uint8)
    assert (relabel_class(lbl, 1, 7) == np.array([[0, 7, 7], [2, 7, 0]])).all() and lbl[0, 1] == 1
    assert (relabel_class(lbl, 3, 0) == lbl).all()
    for bad, match in ((lambda: relabel_region(lbl, (2, 0), 1), "point"), (lambda: relabel_region(lbl, (0, -1), 1), "point"),
                       (lambda: relabel_region(lbl, (0.0, 1), 1), "point"), (lambda: relabel_region(lbl, (0, 0), 300), "new_class"),
                       (lambda: relabel_region(lbl, (0, 0), 1, connectivity=6), "connectivity"),
                       (lambda: relabel_region(lbl[None], (0, 0), 1), "label"), (lambda: relabel_class(lbl, 1, -1), "new")):
        with pytest.raises(ParameterError, match=match):
            bad()


class Scenes(list):
    """Scene dicts (label, name, optionally image) in the Cityscapes label space."""
    space = get_space("cityscapes")


@pytest.fixture(scope="module")
def browser_parts():
    import torch
    from synthseg.diffusion import MaskDiffusionConfig, MaskDiffusionModel, MaskToImagePipeline
    from synthseg.scenes import make_scene
    torch.manual_seed(0)
    model = MaskDiffusionModel(MaskDiffusionConfig(num_classes=19, sample_size=(32, 32), block_out_channels=(16, 32),
                                                   layers_per_block=1))
    return MaskToImagePipeline(model, "ddim"), Scenes(make_scene(s, 32, 32, style="target") for s in range(2))


def test_browser_relabel_and_reset(browser_parts):
    from scipy import ndimage
    from synthseg.widgets import GenerationBrowser
    pipe, scenes = browser_parts
    br = GenerationBrowser(pipe, scenes, num_inference_steps=2)
    mask = br.edited_mask()
    assert (mask == scenes[0]["label"]).all()
    regions, n = ndimage.label(mask == 11, np.ones((3, 3)))  # the people: several regions
    y, x = np.argwhere(regions == 2)[0]
    edited = br.relabel((y, x), "sidewalk").edited_mask()
    assert n >= 2 and ((edited != mask) == (regions == 2)).all() and (edited[regions == 2] == 1).all()
    assert (br.relabel((0, 0), "ignore").edited_mask()[0, 0] == 255) and br.panels()[0][0] == "mask (edited)"
    br.reset()
    assert (br.edited_mask() == mask).all() and br.panels()[0][0] == "mask"
    br.edited_mask()[:] = 0  # a copy: the browser's mask is unchanged
    assert (br.edited_mask() == mask).all()
    br.select(1).relabel((0, 0), 0).select(1)  # selecting drops the edits
    assert (br.edited_mask() == scenes[1]["label"]).all() and br.index == 1


def test_browser_sample_shape_and_seed_determinism(browser_parts):
    from synthseg.widgets import GenerationBrowser
    pipe, scenes = browser_parts
    br = GenerationBrowser(pipe, scenes, seeds=(0, 1, 2), num_inference_steps=2)
    first = br.sample()
    assert first.shape == (3, 32, 32, 3) and first.dtype == np.uint8
    assert (br.sample() == first).all() and not (first[0] == first[2]).all()
    alone = GenerationBrowser(pipe, scenes, seeds="2", num_inference_steps=2).sample()
    assert alone.shape == (1, 32, 32, 3) and np.abs(alone[0].astype(int) - first[2]).max() <= 1
    y, x = np.argwhere(br.edited_mask() == 13)[0]
    br.relabel((y, x), "road")
    assert br.images is None
    assert not (br.sample() == first).all()
    assert (br.reset().sample() == first).all()


def test_browser_strip_png_and_widget(browser_parts):
    import io
    from PIL import Image
    from synthseg.widgets import GenerationBrowser
    pipe, scenes = browser_parts
    br = GenerationBrowser(pipe, scenes, seeds=(3, 4), num_inference_steps=2)
    assert br.strip().shape == (32, 2 * 32 + 4, 3)  # mask and real image before sampling
    images = br.sample()
    strip = br.strip()
    assert strip.shape == (32, 4 * 32 + 3 * 4, 3) and (strip[:, -32:] == images[1]).all()
    assert (strip[:, :32] == Scenes.space.colorize(scenes[0]["label"])).all() and (strip[:, 32:36] == 255).all()
    png = br.strip_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (np.asarray(Image.open(io.BytesIO(png))) == strip).all()
    assert len(br.row.children) == 4 and "application/vnd.jupyter.widget-view+json" in br._repr_mimebundle_()
    br.y.value, br.x.value = 31, 31
    br.new_class.value = 10  # sky
    br.relabel_button.click()
    assert br.edited_mask()[31, 31] == 10 and br.images is None
    br.reset_button.click()
    br.seeds_text.value = "7"
    br.sample_button.click()
    assert br.seeds == (7,) and br.images.shape == (1, 32, 32, 3)
    masks_only = Scenes({"label": s["label"], "name": s["name"]} for s in scenes)
    assert GenerationBrowser(pipe, masks_only).strip().shape == (32, 32, 3)


def test_browser_bad_input(browser_parts):
    from synthseg.widgets import GenerationBrowser
    pipe, scenes = browser_parts
    br = GenerationBrowser(pipe, scenes, num_inference_steps=2)
    with pytest.raises(ParameterError, match="point"):
        br.relabel((32, 0), "road")
    with pytest.raises(ParameterError, match="tree"):
        br.relabel((0, 0), "tree")
    with pytest.raises(ParameterError, match="class 19"):
        br.relabel((0, 0), 19)
    with pytest.raises(ParameterError, match="index"):
        br.select(2)
    for kw in ({"seeds": "a, b"}, {"seeds": ()}, {"seeds": [1.5]}, {"num_inference_steps": 0}, {"guidance_scale": -1}):
        with pytest.raises(ParameterError, match=next(iter(kw))):
            br.configure(**kw)
    br.seeds_text.value = "x"  # a refused control value is reported, the state is kept
    assert br.seeds == (0, 1, 2) and "seeds" in br.status.value
    with pytest.raises(ParameterError, match="space"):
        GenerationBrowser(pipe, scenes, space="voc")
    with pytest.raises(ParameterError, match="masks"):
        GenerationBrowser(pipe, Scenes())
    with pytest.raises(ParameterError, match="space"):
        GenerationBrowser(pipe, [scenes[0]])
    bad = Scenes([{"label": np.full((32, 32), 40, np.uint8), "name": "bad"}])
    with pytest.raises(ParameterError, match="40"):
        GenerationBrowser(pipe, bad)
