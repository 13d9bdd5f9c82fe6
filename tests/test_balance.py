"""Class balance: per-image class presence, the Table 4 balance metrics against their formulas, Algorithm 1 on
hand-worked presence matrices, and the plan -> generate_dataset -> D_final loop with its provenance records."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from synthseg.balance import (FinalDataset, PlannedMasks, balance_plan, balance_report, balance_scores,
                              class_entropy, class_imbalance_ratio, class_pixel_counts, class_pixels, class_presence,
                              write_final_manifest)
from synthseg.core import DataError, ParameterError
from synthseg.datasets import load_dataset
from synthseg.generate import GenerationJob, generate_dataset, read_manifest
from synthseg.labels import get_space

VOC = get_space("voc")
PERSON, DOG, BIRD, COW = (VOC.index(c) for c in ("person", "dog", "bird", "cow"))
H, W = 12, 40


class ToyVOC(torch.utils.data.Dataset):
    """In-memory VOC items: background, one block per listed class, the top row ignored."""
    space = VOC

    def __init__(self, layouts):
        self.layouts = dict(layouts)

    @property
    def names(self):
        return list(self.layouts)

    def __len__(self):
        return len(self.layouts)

    def __getitem__(self, i):
        label = np.zeros((H, W), np.uint8)
        for k, c in enumerate(self.layouts[self.names[i]]):
            label[2:10, 1 + 10 * k:9 + 10 * k] = c
        label[0] = 255
        return {"image": np.full((H, W, 3), 100, np.uint8), "label": label, "name": self.names[i]}


def fake_pipeline(masks, num_inference_steps, guidance_scale, generator, output_type="np"):
    palette = torch.from_numpy(VOC.palette.astype(np.int16))
    noise = torch.stack([torch.randint(-20, 21, (*masks.shape[1:], 3), generator=g, dtype=torch.int16)
                         for g in generator])
    return (palette[masks] + noise).clamp(0, 255).to(torch.uint8).numpy()


# person everywhere; dog in b, c; bird in c, e
LAYOUTS = {"a": [PERSON], "b": [PERSON, DOG], "c": [PERSON, DOG, BIRD], "d": [PERSON], "e": [PERSON, BIRD]}
JOB = GenerationJob("balance:toy", "fake", "voc", height=H, width=W, seed=7)


# --- presence and pixel counts ---------------------------------------------------------------------------------

def test_class_pixels_counts_each_image_and_skips_ignore():
    maps = np.array([[[0, 1, 1], [255, 2, 2]], [[2, 2, 2], [2, 255, 255]]], np.uint8)
    expected = [[1, 2, 2], [0, 0, 4]]
    assert class_pixels(maps, 3).tolist() == expected and class_pixels(maps, 3).dtype == np.int64
    assert class_pixels(torch.from_numpy(maps), 3).tolist() == expected
    assert class_pixels([m.astype(np.int32) for m in maps], 3).tolist() == expected
    assert class_presence(maps, 3).tolist() == [[True, True, True], [False, False, True]]
    assert class_pixel_counts(maps, 3).tolist() == [1, 2, 6]
    assert class_pixels(maps, 5).tolist() == [[1, 2, 2, 0, 0], [0, 0, 4, 0, 0]]  # absent classes are zero columns
    assert class_pixels(np.zeros((0, 2, 2), np.uint8), 3).shape == (0, 3)


def test_class_pixels_takes_k_from_the_space_and_reads_dataset_items():
    ds = ToyVOC(LAYOUTS)
    pres = class_presence(ds)
    assert pres.shape == (5, 21)
    assert [np.flatnonzero(r).tolist() for r in pres] == [sorted([0, *c]) for c in LAYOUTS.values()]
    assert class_pixels(ds)[1, DOG] == 8 * 8 and class_pixels(ds)[:, 0].tolist() == [H * W - W - 64 * len(c)
                                                                                     for c in LAYOUTS.values()]


@pytest.mark.parametrize("args, match", [
    ((np.array([[[0, 3]]], np.uint8), 3), r"ids \[3\] outside the classes 0-2"),
    ((np.array([[[0, -1]]], np.int16), 3), "negative"),
    ((np.zeros((1, 2, 2)), 3), "float64"),
    ((np.zeros((1, 2, 2, 3), np.uint8), 3), "expected H×W"),
    ((np.zeros((1, 2, 2), np.uint8), 3, 2), "ignore_index"),
    ((np.zeros((1, 2, 2), np.uint8), 0), "num_classes"),
    ((np.zeros((1, 2, 2), np.uint8),), "num_classes: required"),
])
def test_class_pixels_refuses_bad_labels(args, match):
    with pytest.raises(ParameterError, match=match):
        class_pixels(*args)


# --- balance metrics -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 5, 20])
def test_uniform_counts_have_entropy_log_k_and_cir_1(k):
    counts = np.full(k, 13)
    assert class_entropy(counts) == pytest.approx(math.log(k))
    assert class_entropy(counts, normalized=True) == pytest.approx(1.0)
    assert class_imbalance_ratio(counts) == 1.0


def test_skewed_counts_match_the_formulas():
    counts = [10, 30, 60]
    p = np.array(counts) / 100
    h = -(p * np.log(p)).sum()
    assert class_entropy(counts) == pytest.approx(h) == pytest.approx(0.8979457248567798)
    assert class_entropy(counts, normalized=True) == pytest.approx(h / math.log(3))
    assert class_imbalance_ratio(counts) == 6.0
    assert class_entropy([1, 1, 2]) == pytest.approx(1.5 * math.log(2))
    assert class_entropy([0, 0, 9]) == 0.0  # one class holds everything


def test_absent_classes_count_in_log_k_and_are_ignored_by_cir_unless_asked():
    assert class_entropy([0, 5, 5]) == pytest.approx(math.log(2))
    assert class_entropy([0, 5, 5], normalized=True) == pytest.approx(math.log(2) / math.log(3))
    assert class_imbalance_ratio([0, 2, 8]) == 4.0
    assert class_imbalance_ratio([0, 2, 8], absent="inf") == math.inf
    assert class_imbalance_ratio([2, 8], absent="inf") == 4.0
    assert balance_scores([0, 2, 8]) == {"classes": 3, "absent": 1, "entropy": pytest.approx(class_entropy([2, 8])),
                                         "entropy_normalized": pytest.approx(class_entropy([2, 8]) / math.log(3)),
                                         "cir": 4.0}


@pytest.mark.parametrize("bad", [[], [0, 0], [1, -2], [[1, 2]], [1, float("nan")], ["x", 1]])
def test_metrics_refuse_bad_counts(bad):
    for f in (class_entropy, class_imbalance_ratio, balance_scores):
        with pytest.raises(ParameterError):
            f(bad)


def test_metric_arguments_are_checked():
    with pytest.raises(ParameterError, match="absent"):
        class_imbalance_ratio([1, 2], absent="zero")
    with pytest.raises(ParameterError, match="2 classes"):
        class_entropy([4], normalized=True)


def test_balance_report_drops_background_by_default():
    ds = ToyVOC(LAYOUTS)
    report = balance_report(ds)
    assert report.index.tolist() == list(range(1, 21)) and report.index.name == "id"
    assert report.loc[[PERSON, DOG, BIRD], "images"].tolist() == [5, 2, 2]
    assert report.loc[DOG, "pixels"] == 2 * 64 and report["image_share"].sum() == pytest.approx(1)
    assert report.attrs["n_images"] == 5 and report.attrs["absent"] == 17 and report.attrs["cir"] == 2.5
    assert report.attrs["entropy"] == pytest.approx(class_entropy([5, 2, 2]))
    full = balance_report(ds, exclude=())
    assert len(full) == 21 and full.loc[0, "images"] == 5 and full.attrs["cir"] == 2.5
    assert balance_report(ds, exclude="background").index.tolist() == report.index.tolist()
    assert len(balance_report(np.zeros((2, 4, 4), np.uint8) + 3, space="camvid")) == 11  # no background: nothing dropped
    with pytest.raises(ParameterError, match="space"):
        balance_report(np.zeros((2, 4, 4), np.uint8))


# --- Algorithm 1 -----------------------------------------------------------------------------------------------

def presence_of(rows, k):
    p = np.zeros((len(rows), k), bool)
    for n, classes in enumerate(rows):
        p[n, classes] = True
    return p


def test_plan_worked_by_hand_rare_classes_first_and_counts_spill_over():
    # counts before: c0 3, c1 2, c2 2, c3 1; images by class count: i0 i1 i4 (1 class), i3 (2), i2 (3)
    P = presence_of([[0], [1], [0, 1, 2], [2, 3], [0]], 4)
    plan = balance_plan(P, 3)
    # c3 (rarest) is only in i3: two generations from it, which also lift c2 from 2 to 4;
    # c1 then needs one: i1 (1 class) before i2 (3 classes); c2 and c0 need none
    assert plan["source_index"].tolist() == [3, 3, 1]
    assert plan["repeat"].tolist() == [0, 1, 0] and plan["target"].tolist() == [3, 3, 1]
    assert plan["classes"].tolist() == [[2, 3], [2, 3], [1]] and plan["name"].tolist() == ["3", "3", "1"]
    assert list(plan.columns) == ["source_index", "name", "classes", "repeat", "target"]
    assert plan.attrs["counts_before"] == [3, 2, 2, 1] and plan.attrs["counts_after"] == [3, 3, 4, 3]
    assert plan.attrs["unreachable"] == plan.attrs["short"] == [] and plan.attrs["n_balance"] == 3


def test_plan_cycles_through_sources_in_sorted_order():
    P = presence_of([[0, PERSON], [0, PERSON, DOG], [0, PERSON, DOG, BIRD], [0, PERSON], [0, PERSON, BIRD]], 21)
    names = list("abcde")
    plan = balance_plan(P, 4, names=names, targets=[PERSON, DOG, BIRD])
    assert plan["name"].tolist() == ["e", "c", "b"] and plan["target"].tolist() == [BIRD, BIRD, DOG]
    plan = balance_plan(P, 6, names=names, targets=[PERSON, DOG, BIRD])
    # bird: e, c, e, c (dog reaches 4 on the way); dog: b, c
    assert plan["name"].tolist() == list("ececbc") and plan["repeat"].tolist() == [0, 0, 1, 1, 0, 2]
    after = np.array(plan.attrs["counts_after"])
    assert after[[0, PERSON, DOG, BIRD]].tolist() == [11, 11, 6, 7]
    # background is in every image: left out of targets it is never boosted on its own
    assert (plan["target"] != 0).all()


def test_unreachable_classes_are_reported_and_others_still_balanced():
    P = presence_of([[0], [0, 1], [0]], 4)
    plan = balance_plan(P, 2)
    assert plan["source_index"].tolist() == [1] and plan.attrs["unreachable"] == [2, 3]
    assert plan.attrs["short"] == [2, 3] and plan.attrs["counts_after"] == [4, 2, 0, 0]


def test_max_generations_caps_the_plan():
    P = presence_of([[0], [1], [0, 1, 2], [2, 3], [0]], 4)
    capped = balance_plan(P, 3, max_generations=1)
    assert capped["source_index"].tolist() == [3] and capped.attrs["short"] == [1, 3]
    assert capped.attrs["max_generations"] == 1
    assert len(balance_plan(P, 3, max_generations=0)) == 0
    assert balance_plan(P, 3, max_generations=100)["source_index"].tolist() == [3, 3, 1]


def test_plan_is_deterministic_under_its_seed_and_the_seed_only_breaks_ties():
    P = presence_of([[0], [0], [0], [0], [1]], 2)
    # class 1 (rarer) first: 9 generations from image 4; class 0 then needs 6: the four tied images, then two again
    plans = {s: balance_plan(P, 10, seed=s)["source_index"].tolist() for s in range(8)}
    for s, p in plans.items():
        pd.testing.assert_frame_equal(balance_plan(P, 10, seed=s), balance_plan(P, 10, seed=s))
        assert p[:9] == [4] * 9 and sorted(p[9:13]) == [0, 1, 2, 3] and p[13:] == p[9:11]
    assert len({tuple(p) for p in plans.values()}) > 1
    # no ties among the sources: every seed gives the same plan
    Q = presence_of([[0], [1], [0, 1, 2], [2, 3], [0]], 4)
    assert {tuple(balance_plan(Q, 3, seed=s)["source_index"]) for s in range(8)} == {(3, 3, 1)}


def test_nothing_to_do_gives_an_empty_plan():
    plan = balance_plan(presence_of([[0, 1], [0, 1]], 2), 2)
    assert len(plan) == 0 and list(plan.columns) == ["source_index", "name", "classes", "repeat", "target"]


@pytest.mark.parametrize("kw", [{"n_balance": 0}, {"seed": -1}, {"max_generations": -1}, {"names": ["a"]},
                                {"targets": [5]}, {"targets": [1, 1]}, {"presence": np.full((2, 2), 2)},
                                {"presence": np.ones(3, bool)}, {"n_balance": 2.5}])
def test_plan_refuses_bad_arguments(kw):
    args = {"presence": presence_of([[0], [1]], 2), "n_balance": 3, **kw}
    with pytest.raises(ParameterError):
        balance_plan(**args)


# --- plan -> D_gen -> D_final ----------------------------------------------------------------------------------

def test_planned_masks_yield_the_sources_with_distinct_names():
    ds = ToyVOC(LAYOUTS)
    plan = balance_plan(class_presence(ds), 6, names=ds.names, targets=range(1, 21))
    masks = PlannedMasks(ds, plan)
    assert len(masks) == 6 and masks.space == VOC
    assert [masks[i]["name"] for i in range(6)] == ["e_r0", "c_r0", "e_r1", "c_r1", "b_r0", "c_r2"]
    assert np.array_equal(masks[2]["label"], ds[4]["label"]) and masks[2]["image"].shape == (H, W, 3)
    with pytest.raises(ParameterError, match="outside"):
        PlannedMasks(ToyVOC({"a": [PERSON]}), plan)
    with pytest.raises(ParameterError, match="missing columns"):
        PlannedMasks(ds, plan.drop(columns="repeat"))


def test_final_dataset_is_origin_then_generated_with_provenance(tmp_path):
    ds = ToyVOC(LAYOUTS)
    plan = balance_plan(class_presence(ds), 6, names=ds.names, targets=range(1, 21))
    generate_dataset(fake_pipeline, PlannedMasks(ds, plan), tmp_path / "gen", JOB, batch_size=4, progress=False)
    man = read_manifest(tmp_path / "gen")
    assert man["mask"].tolist() == ["e_r0", "c_r0", "e_r1", "c_r1", "b_r0", "c_r2"]
    assert man["seed"].tolist() == list(range(7, 13))  # each repeat its own seed
    final = FinalDataset(ds, tmp_path / "gen", plan)
    assert len(final) == 11 and final.space == VOC
    rec = final.records
    assert rec["kind"].tolist() == ["original"] * 5 + ["generated"] * 6
    assert rec["name"].tolist() == ds.names + [f"gen_{i:06d}" for i in range(6)]
    assert rec["source_index"].tolist() == [0, 1, 2, 3, 4, 4, 2, 4, 2, 1, 2]
    assert rec["source_name"].tolist()[5:] == list("ececbc") and rec["repeat"].tolist()[5:] == [0, 0, 1, 1, 0, 2]
    assert rec["repeat"].isna().sum() == 5 and rec["seed"].tolist()[5:] == list(range(7, 13))
    for i in range(5, 11):
        assert np.array_equal(final[i]["label"], ds[int(rec["source_index"][i])]["label"])
    # D_final holds exactly what the plan counted
    assert class_presence(final).sum(0).tolist() == plan.attrs["counts_after"]
    report = balance_report(final)
    assert report.loc[[PERSON, DOG, BIRD], "images"].tolist() == [11, 6, 7]
    assert report.attrs["cir"] == pytest.approx(11 / 6) and balance_report(ds).attrs["cir"] == 2.5
    path = write_final_manifest(final)
    assert path == tmp_path / "gen" / "final_train.csv"
    back = pd.read_csv(path)
    assert back["position"].tolist() == list(range(11)) and back["name"].tolist() == rec["name"].tolist()
    # the CSV is not a manifest: the generated folder still reads the same
    assert read_manifest(tmp_path / "gen").equals(man) and len(load_dataset("synthseg", tmp_path / "gen")) == 6


def test_final_dataset_refuses_folders_that_do_not_hold_the_plan(tmp_path):
    ds = ToyVOC(LAYOUTS)
    plan = balance_plan(class_presence(ds), 6, names=ds.names, targets=range(1, 21))
    generate_dataset(fake_pipeline, PlannedMasks(ds, plan.iloc[:4]), tmp_path / "part", JOB, progress=False)
    with pytest.raises(DataError, match="4 of the plan's 6"):
        FinalDataset(ds, tmp_path / "part", plan)
    other = balance_plan(class_presence(ds), 6, names=ds.names, targets=range(1, 21), seed=1).iloc[::-1]
    other = other.reset_index(drop=True)
    generate_dataset(fake_pipeline, PlannedMasks(ds, plan), tmp_path / "gen", JOB, progress=False)
    with pytest.raises(DataError, match="another plan"):
        FinalDataset(ds, tmp_path / "gen", other)
    with pytest.raises(ParameterError, match="another dataset"):
        FinalDataset(ToyVOC({k: LAYOUTS[k] for k in "edcba"}), tmp_path / "gen", plan)
    with pytest.raises(DataError, match="not found"):
        FinalDataset(ds, tmp_path / "missing", plan)


def test_already_balanced_set_needs_no_generated_folder(tmp_path):
    ds = ToyVOC(LAYOUTS)
    plan = balance_plan(class_presence(ds), 2, names=ds.names, targets=range(1, 21))
    final = FinalDataset(ds, tmp_path / "never", plan)
    assert len(plan) == 0 and len(final) == 5 and (final.records["kind"] == "original").all()


# --- real VOC sample -------------------------------------------------------------------------------------------

def test_voc_sample_presence_and_counts(realdata):
    voc = load_dataset("voc", realdata / "voc", "val")
    label = voc[0]["label"]
    assert sorted(np.unique(label).tolist()) == [0, 2, 15, 255]
    pres = class_presence(voc)
    assert pres.shape == (1, 21) and np.flatnonzero(pres[0]).tolist() == [0, 2, 15]  # background, bicycle, person
    pix = class_pixel_counts(voc)
    assert pix.sum() == (label != 255).sum() and pix[[0, 2, 15]].tolist() == [54389, 34183, 61143]
    assert np.array_equal(class_pixels(voc), class_pixels([label], 21))  # label-only fast path = full items
    report = balance_report(voc)
    assert len(report) == 20 and report.loc[[2, 15], "images"].tolist() == [1, 1]
    assert report.attrs["absent"] == 18 and report.attrs["cir"] == 1.0
    assert report.attrs["entropy"] == pytest.approx(math.log(2))
    assert report.attrs["entropy_normalized"] == pytest.approx(math.log(2) / math.log(20))
    plan = balance_plan(pres, 3, names=voc.names, targets=range(1, 21))
    assert plan["name"].tolist() == ["2007_000129"] * 2 and plan["repeat"].tolist() == [0, 1]
    assert len(plan.attrs["unreachable"]) == 18
