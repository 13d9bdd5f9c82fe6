"""Procedural street scenes: determinism, shapes, styles, dataset writing (resume, dataset.json) and argument errors."""
import json

import numpy as np
import pytest

from synthseg.core import DataError, ParameterError, read_image, read_label
from synthseg.scenes import STYLES, make_layout, make_scene, render_scene, write_scenes


def test_layout_is_deterministic_and_seed_dependent():
    a, b = make_layout(128, 256, seed=3), make_layout(128, 256, seed=3)
    for k in ("label", "depth", "instances", "segments"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert not np.array_equal(a.label, make_layout(128, 256, seed=4).label)
    gen = make_layout(128, 256, seed=np.random.default_rng(9))
    assert np.array_equal(gen.label, make_layout(128, 256, seed=np.random.default_rng(9)).label)


@pytest.mark.parametrize("style", STYLES)
def test_render_is_deterministic(style):
    lay = make_layout(96, 192, seed=1)
    assert np.array_equal(render_scene(lay, style, seed=5), render_scene(lay, style, seed=5))
    a, b = make_scene(11, 96, 192, style), make_scene(11, 96, 192, style)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    assert a["name"] == "scene_000011"


@pytest.mark.parametrize("size", [(32, 32), (33, 200), (200, 33), (256, 512), (97, 131)])
def test_shapes_and_dtypes(size):
    h, w = size
    lay = make_layout(h, w, seed=2)
    assert lay.label.shape == lay.depth.shape == lay.instances.shape == (h, w)
    assert lay.label.dtype == np.uint8 and lay.depth.dtype == np.float32 and lay.instances.dtype == np.int32
    assert lay.label.max() <= 18 and 0 <= lay.horizon < h
    assert np.isinf(lay.depth[lay.label == 10]).all() and (lay.depth[lay.label != 10] > 0).all()
    for style in STYLES:
        img = render_scene(lay, style, seed=2)
        assert img.shape == (h, w, 3) and img.dtype == np.uint8


def test_instances_cover_things_only():
    lay = make_layout(256, 512, seed=6)
    things = np.isin(lay.label, [11, 12, 13, 14, 15, 16, 17, 18])
    assert (lay.instances[~things] == 0).all() and (lay.instances[things] > 0).all()
    assert set(np.unique(lay.instances).tolist()) - {0} <= {o.instance for o in lay.objects}


def test_styles_differ_on_the_same_label():
    lay = make_layout(128, 256, seed=8)
    src, tgt = render_scene(lay, "source"), render_scene(lay, "target", seed=8)
    assert np.abs(src.astype(int) - tgt).mean() > 20
    key = lay.parts["obj"][lay.segments].astype(np.int64) * 32 + lay.label  # source: flat per (object, class)
    for k in np.unique(key)[:100]:
        region = src[key == k]
        assert (region == region[0]).all()
    road = lay.label == 0
    assert tgt[road].std(0).mean() > 3 * max(src[road].std(0).mean(), 1)


def test_classes_over_scenes():
    present = set()
    for s in range(20):
        present |= set(np.unique(make_layout(256, 512, seed=s).label).tolist())
    assert set(range(19)) - {16} <= present  # every class but the optional train


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_write_scenes_layout_and_metadata(tmp_path):
    out = write_scenes(tmp_path, 3, "val", "target", 64, 128, seed=2, progress=False)
    assert out == tmp_path
    names = [f"scene_{i:06d}.png" for i in range(3)]
    assert _files(tmp_path) == ["dataset.json"] + [f"images/val/{n}" for n in names] + [f"labels/val/{n}" for n in names]
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta == {"format": "synthseg", "source": "scenes", "space": "cityscapes", "style": "target",
                    "height": 64, "width": 128, "splits": {"val": {"n": 3, "seed": 2}}}
    scene = make_scene(2 * 1_000_003 + 1, 64, 128, "target")
    assert np.array_equal(read_image(tmp_path / "images/val/scene_000001.png"), scene["image"])
    assert np.array_equal(read_label(tmp_path / "labels/val/scene_000001.png"), scene["label"])
    from PIL import Image
    with Image.open(tmp_path / "labels/val/scene_000001.png") as im:
        assert im.mode == "P" and im.getpalette()[:6] == [128, 64, 128, 244, 35, 232]
    write_scenes(tmp_path, 2, "train", "target", 64, 128, seed=0, progress=False)  # another split merges in
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["splits"] == {"val": {"n": 3, "seed": 2}, "train": {"n": 2, "seed": 0}}


def test_write_scenes_resumes(tmp_path):
    write_scenes(tmp_path, 4, "train", "source", 48, 96, seed=1, progress=False)
    before = {p: (tmp_path / p).read_bytes() for p in _files(tmp_path) if p.endswith(".png")}
    mtimes = {p: (tmp_path / p).stat().st_mtime_ns for p in before}
    (tmp_path / "images/train/scene_000002.png").unlink()  # killed between label and image
    (tmp_path / "images/train/.scene_000003.png.abc123.png").write_bytes(b"half")  # a half-written temp file
    write_scenes(tmp_path, 5, "train", "source", 48, 96, seed=1, progress=False)
    after = _files(tmp_path)
    assert not [p for p in after if "/." in p], "temporary files left behind"
    assert len([p for p in after if p.startswith("images/")]) == 5 == len([p for p in after if p.startswith("labels/")])
    for p, data in before.items():
        assert (tmp_path / p).read_bytes() == data, p
    assert (tmp_path / "images/train/scene_000000.png").stat().st_mtime_ns == mtimes["images/train/scene_000000.png"]
    assert json.loads((tmp_path / "dataset.json").read_text())["splits"]["train"] == {"n": 5, "seed": 1}


def test_write_scenes_refuses_a_different_dataset(tmp_path):
    write_scenes(tmp_path, 1, "train", "source", 48, 96, progress=False)
    for kwargs in ({"style": "target"}, {"height": 64}, {"seed": 3}):
        args = {"style": "source", "height": 48, "width": 96, "seed": 0, **kwargs}
        with pytest.raises(DataError, match="dataset.json"):
            write_scenes(tmp_path, 1, "train", progress=False, **args)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json"):
        write_scenes(tmp_path, 1, "train", "source", 48, 96, progress=False)


@pytest.mark.parametrize("call", [
    lambda: make_layout(31, 64), lambda: make_layout(64, 16), lambda: make_layout(64.0, 64),
    lambda: make_layout(64, 64, seed=-1), lambda: make_scene(-3, 64, 64), lambda: make_scene(1.5, 64, 64),
    lambda: render_scene(make_layout(32, 32), "photo"), lambda: make_scene(0, 32, 32, "real"),
    lambda: write_scenes("unused", -1, progress=False), lambda: write_scenes("unused", 2, style="x", progress=False),
    lambda: write_scenes("unused", 2, height=8, progress=False), lambda: write_scenes("unused", 2, seed=-1, progress=False),
])
def test_bad_arguments_raise_parameter_error(call, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParameterError):
        call()
    assert not (tmp_path / "unused").exists()
