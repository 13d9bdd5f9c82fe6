"""Curation against independent references: CBST-style thresholds, boundary erosion, per-object consistency,
rectification, and pseudo-labels written for real CamVid images."""
import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import label as cc_label

from synthseg.core import DataError, ParameterError
from synthseg.curate import (BINS, ErodedLabels, HideClasses, apply_thresholds, class_thresholds, confidence_histograms,
                             erode_boundaries, object_consistency, pseudo_label, read_records, rectify_labels, select,
                             unseen_report)
from synthseg.datasets import load_dataset, take
from synthseg.labels import get_space


def random_probs(rng, b=2, k=5, h=12, w=16):
    logits = torch.from_numpy(rng.normal(size=(b, k, h, w)).astype(np.float32) * 3)
    return logits.softmax(1)


def test_thresholds_are_per_class_quantiles():
    rng = np.random.default_rng(0)
    probs = random_probs(rng, b=4, k=4, h=32, w=32)
    conf, pred = probs.max(1)
    thr = class_thresholds(confidence_histograms(probs), keep=0.3, cap=1.0)
    for c in range(4):
        ref = np.quantile(conf[pred == c].numpy(), 0.7)
        assert abs(thr[c] - ref) <= 1.5 / BINS, (c, thr[c], ref)
    labels = apply_thresholds(probs, thr)
    for c in range(4):  # each class keeps about 30 % of its predicted pixels
        assert 0.25 < (labels == c).sum() / (pred == c).sum().item() < 0.35


def test_threshold_cap_and_absent_class():
    probs = torch.zeros(1, 3, 2, 2)
    probs[0, 0] = 0.99
    probs[0, 1] = 0.01
    thr = class_thresholds(confidence_histograms(probs), keep=0.5, cap=0.9)
    assert thr[0] == pytest.approx(0.9) and thr[2] == pytest.approx(0.9)  # capped; class 2 never predicted
    with pytest.raises(ParameterError, match="keep"):
        class_thresholds(confidence_histograms(probs), keep=0)
    with pytest.raises(ParameterError, match="one per class"):
        apply_thresholds(probs, [0.5, 0.5])


def test_erosion_matches_grey_morphology():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (3, 20, 24)).astype(np.uint8)
    labels = np.repeat(np.repeat(labels[:, ::4, ::4], 4, 1), 4, 2)[:, :20, :24]
    labels[0, :3, :3] = 255
    for width in (1, 2):
        size = (1, 2 * width + 1, 2 * width + 1)
        hi = ndimage.grey_dilation(labels, size=size, mode="nearest")
        lo = ndimage.grey_erosion(labels, size=size, mode="nearest")
        expected = np.where(hi != lo, 255, labels)
        assert np.array_equal(erode_boundaries(labels, width), expected)
        assert torch.equal(erode_boundaries(torch.from_numpy(labels), width), torch.from_numpy(expected))


def reference_consistency(pred, cond, k, min_pixels):
    "Per object with skimage's 8-connected labelling, then per class, then per image."
    per_class = {}
    for c in range(k):
        objects = cc_label(cond == c, connectivity=2)
        scores = [(pred[objects == o] == c).mean() for o in range(1, objects.max() + 1)
                  if (objects == o).sum() >= min_pixels]
        if scores: per_class[c] = float(np.mean(scores))
    return float(np.mean(list(per_class.values()))), per_class


def test_object_consistency_matches_reference():
    rng = np.random.default_rng(2)
    for _ in range(5):
        cond = rng.integers(0, 3, (6, 8)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
        cond[rng.random(cond.shape) < 0.05] = 255
        pred = np.where(rng.random(cond.shape) < 0.8, cond, rng.integers(0, 3, cond.shape)).astype(np.uint8)
        score, per = object_consistency(pred, cond, 3, min_pixels=3)
        ref_score, ref_per = reference_consistency(pred, cond, 3, 3)
        assert score == pytest.approx(ref_score) and per.keys() == ref_per.keys()
        assert all(per[c] == pytest.approx(ref_per[c]) for c in per)


def test_rectification_matches_pixel_rule():
    rng = np.random.default_rng(3)
    probs = random_probs(rng, b=2, k=4, h=10, w=10)
    labels = rng.integers(0, 4, (2, 10, 10)).astype(np.uint8)
    labels[0, 0] = 255
    conf, pred = (v.numpy() for v in probs.max(1))
    fixed, counts = rectify_labels(labels, probs, confidence=0.6)
    for b, y, x in np.ndindex(labels.shape):
        disputed = labels[b, y, x] != 255 and pred[b, y, x] != labels[b, y, x] and conf[b, y, x] >= 0.6
        assert fixed[b, y, x] == (255 if disputed else labels[b, y, x])
    assert counts[:, 1].sum() == ((fixed == 255) & (labels != 255)).sum() and counts[:, 2].sum() == 0
    relabelled, _ = rectify_labels(labels, probs, confidence=0.6, rule="relabel")
    assert np.array_equal(relabelled[fixed == 255], np.where(labels == 255, 255, pred)[fixed == 255])
    with pytest.raises(ParameterError, match="rule"):
        rectify_labels(labels, probs, rule="guess")
    with pytest.raises(DataError, match=r"\[7\]"):
        rectify_labels(np.full((2, 10, 10), 7, np.uint8), probs)


def test_select_threshold_and_top():
    import pandas as pd
    s = pd.Series([0.2, 0.9, np.nan, 0.9, 0.5], index=list("abcde"), name="consistency")
    assert list(select(s, threshold=0.5)) == ["b", "d", "e"]
    assert list(select(s, top=0.5)) == ["b", "d"]  # ceil(0.5 · 4 scored) = 2, ties by name
    with pytest.raises(ParameterError):
        select(s, threshold=0.5, top=0.5)


def test_unseen_classes_hidden():
    space = get_space("cityscapes")
    counts = np.zeros(19, np.int64)
    counts[[0, 13, 16]] = [100, 50, 5]
    rep = unseen_report(counts, seen=[0, 13], space=space)
    assert list(rep.index) == ["train"] and rep.loc["train", "pixels"] == 5

    class One(torch.utils.data.Dataset):
        space = get_space("cityscapes")
        def __len__(self): return 1
        def __getitem__(self, i): return {"image": np.zeros((2, 2, 3), np.uint8), "label": np.array([[0, 16], [13, 255]], np.uint8)}
    assert HideClasses(One(), [16])[0]["label"].tolist() == [[0, 255], [13, 255]]
    assert ErodedLabels(One(), 1)[0]["label"].tolist() == [[255, 255], [255, 255]]


class CamVidColours(torch.nn.Module):
    "A segmenter that labels every pixel by the nearest of a few fixed colours of CamVid's classes."
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.05), requires_grad=False)
    def forward(self, x):
        grey = x.mean(1, keepdim=True)
        centres = torch.linspace(0, 1, 11, device=x.device)[None, :, None, None]
        return -(grey - centres) ** 2 / self.scale


def test_pseudo_labels_on_real_camvid(realdata, tmp_path):
    cam = take(load_dataset("camvid", realdata / "camvid", "val"), 4)
    root = pseudo_label(CamVidColours(), cam, tmp_path / "pl", "camvid", keep=0.4, progress=False, size=(90, 120))
    pl = load_dataset("synthseg", root, "train")
    info = json.loads((root / "dataset.json").read_text())["splits"]["train"]
    assert len(pl) == 4 and len(info["thresholds"]) == 11
    rec = read_records(root)
    assert rec["kept"].between(0.2, 0.7).all()  # about 40 % per class, fewer where a class's threshold hits the cap
    item, original = pl[0], cam[0]
    assert item["label"].shape == original["label"].shape and np.array_equal(item["image"], original["image"])
    mtime = (root / "labels" / "train" / f"{rec['name'][0]}.png").stat().st_mtime_ns
    pseudo_label(CamVidColours(), cam, root, "camvid", keep=0.4, progress=False, size=(90, 120))
    assert (root / "labels" / "train" / f"{rec['name'][0]}.png").stat().st_mtime_ns == mtime  # resumed: nothing redone
    assert len(read_records(root)) == 4
