"""Loaders on the genuine samples in shared/realdata, fixtures in the official layouts where no sample exists
(GTA5, SYNTHIA), and one test per kind of bad input."""
import json
import warnings

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image
from torch.utils.data import DataLoader

from synthseg.core import DataError, ParameterError, write_image, write_label
from synthseg.datasets import load_dataset

# The official Cityscapes labelId -> trainId table (cityscapesScripts, helpers/labels.py); every other id -> 255.
CITYSCAPES_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                          25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def official_train_ids(ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, 255, np.uint8)
    for k, v in CITYSCAPES_ID_TO_TRAIN.items():
        out[ids == k] = v
    return out


def single_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


# --- real samples ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split,n", [("train", 2), ("val", 1)])
def test_cityscapes_label_ids_become_official_train_ids(realdata, split, n):
    ds = load_dataset("cityscapes", realdata / "cityscapes", split)
    assert len(ds) == n and ds.space.num_classes == 19
    for i in range(n):
        item = ds[i]
        raw = np.asarray(Image.open(ds.pairs[i][1]))
        assert item["image"].shape == (1024, 2048, 3) and item["image"].dtype == np.uint8
        assert item["label"].dtype == np.uint8
        np.testing.assert_array_equal(item["label"], official_train_ids(raw))
        # instanceIds encode labelId*1000 + k for objects, labelId below 1000: same train ids
        inst = np.asarray(Image.open(str(ds.pairs[i][1]).replace("labelIds", "instanceIds"))).astype(np.int64)
        np.testing.assert_array_equal(official_train_ids(np.where(inst >= 1000, inst // 1000, inst)), item["label"])


def test_cityscapes_mmseg_fixture_differs_on_77_boundary_pixels(realdata):
    root = realdata / "cityscapes_mmseg_fixture"
    from_ids = load_dataset("cityscapes", root, "val")[0]["label"]
    from_train_ids = load_dataset("cityscapes", root, "val", label_type="labelTrainIds")[0]["label"]
    assert from_ids.shape == (128, 256)
    # mmseg resized labelIds and labelTrainIds independently (shared/realdata/README.md): 77 of 32768 pixels differ
    assert int((from_ids != from_train_ids).sum()) == 77


@pytest.mark.parametrize("split,values", [("train", {0, 5, 6, 7, 8, 9, 10, 13, 14, 255}),
                                          ("val", {0, 1, 2, 4, 5, 7, 8, 10, 13, 255})])
def test_bdd100k_masks_and_colormaps(realdata, split, values):
    masks = load_dataset("bdd100k", realdata / "bdd100k", split)
    colormaps = load_dataset("bdd100k", realdata / "bdd100k", split, labels="colormaps")
    a, b = masks[0], colormaps[0]
    assert a["image"].shape == (720, 1280, 3)
    assert set(np.unique(a["label"])) == values
    np.testing.assert_array_equal(a["label"], b["label"])


def test_voc_palette_png_gives_class_indices(realdata):
    ds = load_dataset("voc", realdata / "voc", "val")
    item = ds[0]
    assert item["name"] == "2007_000129" and item["image"].shape[:2] == item["label"].shape
    assert set(np.unique(item["label"])) == {0, 2, 15, 255}  # background, bicycle, person, void boundary
    assert ds.space.num_classes == 21


def test_ade20k_reduce_zero_label(realdata):
    ds = load_dataset("ade20k", realdata / "ade20k", "val")
    assert len(ds) == 3 and ds.space.num_classes == 150
    for i in range(3):
        raw = np.asarray(Image.open(ds.pairs[i][1])).astype(np.int64)
        expected = np.where(raw == 0, 255, raw - 1).astype(np.uint8)
        np.testing.assert_array_equal(ds[i]["label"], expected)
    train = load_dataset("ade20k", realdata / "ade20k", "train")[0]
    assert 149 in np.unique(train["label"])  # raw 150 is observed in ADE_train_00000001


def test_camvid_complete_train_and_val(realdata):
    train = load_dataset("camvid", realdata / "camvid", "train")
    val = load_dataset("camvid", realdata / "camvid", "val")
    assert (len(train), len(val)) == (367, 101)
    counts = np.zeros(256, np.int64)
    for i in range(len(train)):
        item = train[i]
        assert item["image"].shape == (360, 480, 3)
        counts += np.bincount(item["label"].ravel(), minlength=256)
    assert set(np.flatnonzero(counts)) == set(range(11)) | {255}
    # pixel shares of classes 0-11 over train as listed in shared/realdata/README.md (11 = void -> 255)
    share = np.r_[counts[:11], counts[255]] / counts.sum()
    expected = [.169, .233, .010, .317, .045, .097, .012, .011, .059, .006, .003, .040]
    np.testing.assert_allclose(share, expected, atol=0.0015)


def test_camvid_partial_test_split_skips_absent_images(realdata):
    with pytest.warns(UserWarning, match="155 of 233"):
        test = load_dataset("camvid", realdata / "camvid", "test")
    assert len(test) == 78 and len(test.missing) == 155


def test_kitti_cityscapes_ids_and_resized_images(realdata):
    with pytest.raises(DataError) as err:
        load_dataset("kitti", realdata / "kitti", "train")[0]
    assert "1242x375" in single_line(err) and "1224x370" in str(err.value)
    ds = load_dataset("kitti", realdata / "kitti", "train", size_mismatch="resize_image")
    assert len(ds) == 5
    for i in range(5):
        item = ds[i]
        raw = np.asarray(Image.open(ds.pairs[i][1]))
        assert item["image"].shape == (375, 1242, 3)
        np.testing.assert_array_equal(item["label"], official_train_ids(raw))


def test_dataloader_collates_items(realdata):
    ds = load_dataset("camvid", realdata / "camvid", "val")
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))
    assert tuple(batch["image"].shape) == (4, 360, 480, 3) and tuple(batch["label"].shape) == (4, 360, 480)
    assert len(batch["name"]) == 4


# --- official-layout fixtures where no real sample exists --------------------------------------------------------

def make_gta5(root, ids=(1, 2, 3)):
    """GTA5 fixture in the official layout: images/NNNNN.png, labels/NNNNN.png (palette PNG of Cityscapes ids),
    split.mat with 1-based trainIds/valIds/testIds. Built here because no real GTA5 sample is available."""
    rng = np.random.default_rng(0)
    for i in ids:
        write_image(root / "images" / f"{i:05d}.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
        write_label(root / "labels" / f"{i:05d}.png", rng.choice([0, 7, 8, 26, 33], (20, 30)).astype(np.uint8),
                    palette=[(0, 0, 0)] * 34)
    scipy.io.savemat(root / "split.mat", {"trainIds": np.array([[1], [2]]), "valIds": np.array([[3]]),
                                          "testIds": np.zeros((0, 1))})
    return root


def test_gta5_fixture_official_layout(tmp_path):
    root = make_gta5(tmp_path)
    assert len(load_dataset("gta5", root, "all")) == 3
    train = load_dataset("gta5", root, "train")
    assert train.names == ["00001", "00002"] and len(load_dataset("gta5", root, "val")) == 1
    raw = np.asarray(Image.open(train.pairs[0][1]))
    np.testing.assert_array_equal(train[0]["label"], official_train_ids(raw))


def test_synthia_fixture_16bit_labels(tmp_path):
    """SYNTHIA RAND-CITYSCAPES fixture: RGB/NNNNNNN.png and 16-bit GT/LABELS/NNNNNNN.png with the class id in the
    first (R) channel and an instance id in the second. Built here because no real SYNTHIA sample is available."""
    (tmp_path / "GT" / "LABELS").mkdir(parents=True)
    write_image(tmp_path / "RGB" / "0000000.png", np.zeros((4, 5, 3), np.uint8))
    cls = np.array([[3, 4, 2, 21, 5], [7, 15, 9, 6, 16], [1, 10, 17, 8, 18], [19, 20, 12, 11, 0]], np.uint16)
    rgb16 = np.stack([cls, np.full_like(cls, 300), np.zeros_like(cls)], -1)  # instance ids above 255 in G
    cv2.imwrite(str(tmp_path / "GT" / "LABELS" / "0000000.png"), rgb16[..., ::-1])  # cv2 writes BGR
    lbl16 = load_dataset("synthia", tmp_path)[0]["label"]
    # SYNTHIA 16-class protocol: road sidewalk building wall fence pole light sign vegetation sky person rider car bus
    # motorcycle bicycle; terrain (16), truck (18) and train (20) are not evaluated
    np.testing.assert_array_equal(lbl16, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 255], [9, 10, 11, 12, 255],
                                          [13, 255, 14, 15, 255]])
    lbl13 = load_dataset("synthia", tmp_path, classes=13)[0]["label"]
    np.testing.assert_array_equal(lbl13, [[0, 1, 2, 255, 255], [255, 3, 4, 5, 255], [6, 7, 8, 9, 255],
                                          [10, 255, 11, 12, 255]])


def test_folder_pair_and_synthseg_layout(tmp_path):
    write_image(tmp_path / "images" / "a.jpg", np.zeros((8, 8, 3), np.uint8))
    write_label(tmp_path / "labels" / "a.png", np.full((8, 8), 2, np.uint8))
    ds = load_dataset("folder", tmp_path, space="voc")
    assert ds.space.name == "voc" and ds[0]["label"].max() == 2
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "synthseg", "space": "camvid", "splits": {"x": {}}}))
    write_image(tmp_path / "images" / "x" / "b.png", np.zeros((8, 8, 3), np.uint8))
    write_label(tmp_path / "labels" / "x" / "b.png", np.full((8, 8), 10, np.uint8))
    assert load_dataset("synthseg", tmp_path, "x")[0]["label"].max() == 10


# --- bad input: one readable line naming the file and the problem --------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cityscapes", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in single_line(err)
    with pytest.raises(DataError) as err:
        load_dataset("cityscapes", tmp_path)
    assert "leftImg8bit" in single_line(err)


def test_image_without_label(tmp_path):
    root = make_gta5(tmp_path)
    (root / "labels" / "00002.png").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("gta5", root)
    assert "00002.png" in single_line(err) and "label" in str(err.value)


def test_size_mismatch(tmp_path):
    root = make_gta5(tmp_path)
    write_image(root / "images" / "00001.png", np.zeros((21, 30, 3), np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset("gta5", root)[0]
    assert "00001.png" in single_line(err) and "30x20" in str(err.value) and "30x21" in str(err.value)


def test_label_ids_outside_the_space(tmp_path):
    root = make_gta5(tmp_path)
    write_label(root / "labels" / "00003.png", np.full((20, 30), 40, np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset("gta5", root)[2]
    assert "00003.png" in single_line(err) and "40" in str(err.value)


def test_unreadable_png(tmp_path):
    root = make_gta5(tmp_path)
    (root / "labels" / "00002.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.raises(DataError) as err:
        load_dataset("gta5", root)[1]
    assert "00002.png" in single_line(err) and "unreadable" in str(err.value)


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(ParameterError) as err:
        load_dataset("cityscape", tmp_path)
    assert "cityscapes" in single_line(err)  # lists the valid names
    with pytest.raises(ParameterError) as err:
        load_dataset("camvid", tmp_path, "training")
    assert "'training'" in single_line(err) and "val" in str(err.value)
