"""Label tables against real files (KITTI, BDD100K, VOC, ADE20K, CamVid samples in shared/realdata) and the data
cards against the label tables."""
import importlib.resources
import re

import numpy as np
import pytest
from PIL import Image

from synthseg.cards import card_body, card_names, check_card, read_card
from synthseg.core import DataError, read_image, read_label
from synthseg.labels import SPACES, colorize, convert_labels, encode_labels, get_space

CARDS = ["cityscapes", "gta5", "synthia", "bdd100k", "voc", "ade20k", "camvid", "kitti", "scenes"]


def embedded_palette(path) -> np.ndarray:
    im = Image.open(path)
    assert im.mode == "P", f"{path} is not a palette PNG"
    pal = np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)
    return np.vstack([pal, np.zeros((256 - len(pal), 3), np.uint8)])


# --- label tables on real files -------------------------------------------------------------------------------

@pytest.mark.parametrize("frame", [f"00000{i}_10" for i in range(5)])
def test_kitti_semantic_rgb_is_the_train_id_colouring(realdata, frame):
    base = realdata / "kitti" / "data_semantics" / "training"
    train = encode_labels(read_label(base / "semantic" / f"{frame}.png"), "cityscapes_ids")
    official = read_image(base / "semantic_rgb" / f"{frame}.png")
    labelled = train != 255  # semantic_rgb also draws void ids in their own colours; compare where a train id exists
    assert labelled.mean() > 0.9
    assert (colorize(train, "kitti")[labelled] == official[labelled]).all()


def test_bdd100k_colormap_palette_is_the_cityscapes_palette(realdata):
    folder = realdata / "bdd100k" / "labels" / "sem_seg"
    cs = get_space("bdd100k")
    for cmap in sorted((folder / "colormaps").glob("*/*.png")):
        assert (embedded_palette(cmap)[:19] == cs.palette[:19]).all(), cmap
        ids = read_label(cmap)
        train = encode_labels(ids, "cityscapes_trainids", cmap)
        assert (train == ids).all()
        mask = read_label(folder / "masks" / cmap.parent.name / cmap.name)
        assert (mask == ids).all()


def test_voc_label_palette_is_the_voc_colormap(realdata):
    png = realdata / "voc" / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000129.png"
    pal, voc = embedded_palette(png), get_space("voc")
    assert (pal[:21] == voc.palette[:21]).all()
    assert tuple(pal[255]) == voc.ignore_color == (224, 224, 192)
    train = encode_labels(read_label(png), "voc", png)
    assert set(np.unique(train).tolist()) == {0, 2, 15, 255}  # background, bicycle, person, void band
    # the same file given to the Cityscapes decoder fails on one line that names it
    with pytest.raises(DataError) as err:
        encode_labels(read_label(png), "cityscapes_ids", png)
    msg = str(err.value)
    assert msg.startswith(str(png)) and "[255]" in msg and "\n" not in msg


def test_ade20k_annotations_hold_0_to_150(realdata):
    files = sorted((realdata / "ade20k" / "ADEChallengeData2016" / "annotations").glob("*/*.png"))
    assert len(files) == 4
    for f in files:
        raw = read_label(f)
        assert raw.max() <= 150
        train = encode_labels(raw, "ade20k", f)
        assert (train[raw == 0] == 255).all() and (train[raw > 0] == raw[raw > 0] - 1).all()


def test_camvid_annotations_are_0_to_11(realdata):
    files = sorted((realdata / "camvid" / "CamVid" / "valannot").glob("*.png"))[::10]
    assert files
    for f in files:
        raw = read_label(f)
        assert raw.max() <= 11
        train = encode_labels(raw, "camvid", f)
        assert (train[raw == 11] == 255).all() and (train[raw < 11] == raw[raw < 11]).all()


def test_kitti_converts_to_camvid_and_synthia(realdata):
    base = realdata / "kitti" / "data_semantics" / "training"
    cs = encode_labels(read_label(base / "semantic" / "000001_10.png"), "cityscapes_ids")
    camvid, cam = convert_labels(cs, "kitti", "camvid"), get_space("camvid")
    city = get_space("cityscapes")
    for src, dst in [("car", "car"), ("road", "road"), ("vegetation", "tree"), ("sidewalk", "pavement")]:
        assert (camvid[cs == city.index(src)] == cam.index(dst)).all()
    assert (camvid[cs == city.index("terrain")] == 255).all()
    syn = convert_labels(cs, "cityscapes", "synthia16")
    back = convert_labels(syn, "synthia16", "cityscapes")
    kept = ~np.isin(cs, [city.index(c) for c in ("terrain", "truck", "train")])
    assert (back[kept] == cs[kept]).all() and (back[~kept] == 255).all()


# --- data cards -----------------------------------------------------------------------------------------------

def test_every_dataset_has_a_card():
    assert set(CARDS) <= set(card_names())
    packaged = importlib.resources.files("synthseg.data_cards")
    assert {f"{n}.md" for n in CARDS} <= {f.name for f in packaged.iterdir()}


@pytest.mark.parametrize("name", CARDS)
def test_card_agrees_with_label_tables(name):
    card = check_card(name)
    space = get_space(card["space"])
    assert card["space"] in SPACES and card["kind"] in ("real", "synthetic", "procedural")
    assert card["splits"] and card["layout"] and card["homepage"].startswith("http")
    assert f'load_dataset("{name}"' in card["loader"]


@pytest.mark.parametrize("name", CARDS)
def test_card_body_has_a_class_table_row_per_class(name):
    card, body = read_card(name), card_body(name)
    for c in card["classes"]:
        row = re.compile(rf"^\|\s*{c['id']}\s*\|\s*{re.escape(c['name'])}\s*\|", re.M)
        assert row.search(body), f"{name}: no table row for class {c['id']} {c['name']}"
        r, g, b = c["color"]
        assert f"({r}, {g}, {b})" in body
    for section in ("## Label encoding", "## Splits", "## Loading with synthseg"):
        assert section in body, f"{name}: missing section {section}"
