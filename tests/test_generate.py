"""Dataset generation: round trip through load_dataset, crash + resume, shards, job and label-space checks, argument
errors, mask validation before the pipeline runs, scores in the manifest."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from synthseg.core import DataError, ParameterError, read_image
from synthseg.datasets import Standardized, load_dataset
from synthseg.generate import (GenerationJob, generate_dataset, manifest_path, merge_dataset_info, read_dataset_info,
                               read_job, read_manifest)
from synthseg.labels import get_space
from synthseg.scenes import write_scenes

H, W = 16, 24
PALETTE = torch.from_numpy(get_space("cityscapes").palette.astype(np.int16))


class FakePipeline:
    """Palette colour + noise from each item's generator; raises on call number `fail_after + 1`."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after, self.batches = 0, fail_after, []

    def __call__(self, masks, num_inference_steps, guidance_scale, generator, output_type="np"):
        assert masks.dtype == torch.int64 and len(generator) == len(masks) and output_type == "np"
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.batches.append(len(masks))
        noise = torch.stack([torch.randint(-30, 31, (*masks.shape[1:], 3), generator=g, dtype=torch.int16)
                             for g in generator])
        return (PALETTE[masks] + noise).clamp(0, 255).to(torch.uint8).numpy()


class Masks:
    """`count` random Cityscapes masks (with some ignore pixels), named m0, m1, ..."""
    space = "cityscapes"

    def __init__(self, count=7, bad=None, bad_id=19):
        rng = np.random.default_rng(0)
        self.labels = rng.integers(0, 19, (count, H, W)).astype(np.uint8)
        self.labels[:, 0, :3] = 255
        if bad is not None:
            self.labels[bad, 2, 2] = bad_id

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"label": self.labels[i], "name": f"m{i}", "image": np.zeros((H, W, 3), np.uint8)}


JOB = GenerationJob("test:masks", "fake", "cityscapes", "ddim", 3, 2.0, seed=100, height=H, width=W)


def files(root):
    """Relative path -> bytes of every file of the dataset layout (images and labels)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob("*/*/*"))}


def everything(root):
    """Relative path -> bytes of every file under `root`, hidden ones included."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_job_id_is_stable_and_normalised():
    job = GenerationJob("gta5:/data/gta5:all", "model", "gta5", "ddim", 20, 3, seed=0, height=256, width=512)
    assert job.space == "cityscapes" and isinstance(job.guidance_scale, float)
    assert job.job_id() == replace(job, guidance_scale=3.0).job_id() and len(job.job_id()) == 16
    assert GenerationJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    ids = {replace(job, **{k: v}).job_id() for k, v in
           [("source", "x"), ("model", "y"), ("scheduler", "euler"), ("num_inference_steps", 21),
            ("guidance_scale", 3.5), ("seed", 1), ("height", 128), ("width", 256), ("space", "voc")]}
    assert len(ids) == 9 and job.job_id() not in ids
    # a hash of the canonical JSON of the fields: fixed across processes, machines and versions
    assert GenerationJob("s", "m").job_id() == "2f05eb69e4811411"


@pytest.mark.parametrize("bad", [{"num_inference_steps": 0}, {"seed": -1}, {"height": 0}, {"width": 2.5},
                                 {"guidance_scale": float("inf")}, {"guidance_scale": "3"}, {"space": "nope"},
                                 {"source": ""}, {"model": None}, {"scheduler": " "}])
def test_job_rejects_bad_fields(bad):
    with pytest.raises(ParameterError):
        replace(JOB, **bad)


def test_full_run_reads_back_with_load_dataset(tmp_path):
    write_scenes(tmp_path / "scenes", 5, "val", "source", 32, 64, seed=2, progress=False)
    masks = load_dataset("scenes", tmp_path / "scenes", "val")
    job = replace(JOB, source="scenes:val", height=32, width=64)
    pipe = FakePipeline()
    out = generate_dataset(pipe, Standardized(masks, "cityscapes"), tmp_path / "gen", job, split="val", batch_size=2,
                           progress=False)
    assert out == tmp_path / "gen" and pipe.batches == [2, 2, 1]
    gen = load_dataset("synthseg", out, "val")
    assert len(gen) == 5 and gen.names == [f"gen_{i:06d}" for i in range(5)]
    for i in range(5):
        assert np.array_equal(gen[i]["label"], masks[i]["label"])
        assert gen[i]["image"].shape == (32, 64, 3)
    info = read_dataset_info(out)
    assert info["format"] == "synthseg" and info["space"] == "cityscapes" and info["source"] == "generated"
    assert info["splits"]["val"] == job.to_dict() and read_job(out, "val") == job
    df = read_manifest(out)
    assert df["index"].tolist() == list(range(5)) and df["mask"].tolist() == masks.names
    assert (df["seed"] == job.seed + df["index"]).all() and set(df["job_id"]) == {job.job_id()}
    assert set(df["shard"]) == {"0/1"} and (df["num_inference_steps"] == 3).all() and (df["guidance_scale"] == 2.0).all()
    assert all((out / p).is_file() for p in [*df["image"], *df["label"]])
    assert [p.name for p in out.glob("manifest*")] == ["manifest.jsonl"]


def test_same_seed_same_images_and_masks_cycle(tmp_path):
    generate_dataset(FakePipeline(), Masks(3), tmp_path / "a", JOB, n=7, batch_size=3, progress=False)
    generate_dataset(FakePipeline(), Masks(3), tmp_path / "b", JOB, n=7, batch_size=5, progress=False)
    assert files(tmp_path / "a") == files(tmp_path / "b")  # batch size does not change an image
    df = read_manifest(tmp_path / "a")
    assert df["mask_index"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    a0, a3 = (read_image(tmp_path / "a" / f"images/train/gen_{i:06d}.png") for i in (0, 3))
    assert not np.array_equal(a0, a3)  # same mask, different seed


def test_masks_are_resized_to_the_job_size(tmp_path):
    job = replace(JOB, height=2 * H, width=2 * W)
    generate_dataset(FakePipeline(), Masks(2), tmp_path, job, progress=False)
    gen = load_dataset("synthseg", tmp_path, "train")
    assert np.array_equal(gen[1]["label"], Masks(2).labels[1].repeat(2, 0).repeat(2, 1))


def test_crash_then_rerun_completes(tmp_path):
    masks, n = Masks(), 9
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_dataset(FakePipeline(fail_after=2), masks, tmp_path / "run", JOB, n=n, batch_size=2, progress=False)
    run = tmp_path / "run"
    assert len(read_manifest(run)) == 4
    before = files(run)
    assert len(before) == 8
    # a kill at a worse moment: the image of item 5 written but not its manifest line, a line cut short,
    # and a temporary file of an atomic write left behind
    generate_dataset(FakePipeline(), masks, tmp_path / "ref", JOB, n=n, batch_size=2, progress=False)
    for sub in ("images", "labels"):
        (run / sub / "train" / "gen_000005.png").write_bytes((tmp_path / "ref" / sub / "train" / "gen_000005.png").read_bytes())
    (run / "images" / "train" / ".gen_000006.png.abc123.png").write_bytes(b"\x89PNG half")
    with open(manifest_path(run), "a") as f:
        f.write('{"split": "train", "index": 6, "na')
    rerun = FakePipeline()
    generate_dataset(rerun, masks, run, JOB, n=n, batch_size=2, progress=False)
    assert rerun.batches == [2, 2, 1]  # items 4..8 only
    lines = manifest_path(run).read_text().splitlines()
    assert len(lines) == n and sorted(json.loads(ln)["index"] for ln in lines) == list(range(n))
    assert not [p for p in run.rglob(".*")]
    after = files(run)
    assert all(after[k] == v for k, v in before.items())
    assert after == files(tmp_path / "ref")
    # a third run has nothing to do
    third, snapshot = FakePipeline(), everything(run)
    generate_dataset(third, masks, run, JOB, n=n, batch_size=2, progress=False)
    assert third.calls == 0 and everything(run) == snapshot


def test_missing_image_with_line_is_redone(tmp_path):
    generate_dataset(FakePipeline(), Masks(3), tmp_path, JOB, progress=False)
    original = (tmp_path / "images/train/gen_000001.png").read_bytes()
    (tmp_path / "images/train/gen_000001.png").unlink()
    pipe = FakePipeline()
    generate_dataset(pipe, Masks(3), tmp_path, JOB, progress=False)
    assert pipe.batches == [1] and (tmp_path / "images/train/gen_000001.png").read_bytes() == original
    df = read_manifest(tmp_path)
    assert df["index"].tolist() == [0, 1, 2]


def test_shards_equal_one_unsharded_run(tmp_path):
    masks, n = Masks(), 7
    for i in range(2):
        generate_dataset(FakePipeline(), masks, tmp_path / "sharded", JOB, n=n, batch_size=2, shard=(i, 2),
                         progress=False)
    generate_dataset(FakePipeline(), masks, tmp_path / "whole", JOB, n=n, batch_size=3, progress=False)
    assert files(tmp_path / "sharded") == files(tmp_path / "whole") and len(files(tmp_path / "whole")) == 2 * n
    assert sorted(p.name for p in (tmp_path / "sharded").glob("manifest*")) == [
        "manifest.shard0of2.jsonl", "manifest.shard1of2.jsonl"]
    shard0 = [json.loads(ln)["index"] for ln in manifest_path(tmp_path / "sharded", (0, 2)).read_text().splitlines()]
    assert shard0 == [0, 2, 4, 6]
    a, b = read_manifest(tmp_path / "sharded"), read_manifest(tmp_path / "whole")
    cols = ["split", "index", "name", "mask", "seed", "job_id", "image", "label"]
    assert a[cols].equals(b[cols]) and set(a["shard"]) == {"0/2", "1/2"}
    assert read_dataset_info(tmp_path / "sharded") == read_dataset_info(tmp_path / "whole")


def test_foreign_job_is_refused_before_any_write(tmp_path):
    generate_dataset(FakePipeline(), Masks(), tmp_path, JOB, n=2, progress=False)
    snapshot = everything(tmp_path)
    other = replace(JOB, seed=101)
    pipe = FakePipeline()
    with pytest.raises(DataError) as e:
        generate_dataset(pipe, Masks(), tmp_path, other, n=4, progress=False)
    msg = str(e.value)
    assert "dataset.json" in msg and JOB.job_id() in msg and other.job_id() in msg
    # without dataset.json the manifest still tells
    (tmp_path / "dataset.json").unlink()
    snapshot.pop("dataset.json")
    with pytest.raises(DataError) as e:
        generate_dataset(pipe, Masks(), tmp_path, other, n=4, progress=False)
    msg = str(e.value)
    assert "manifest.jsonl" in msg and JOB.job_id() in msg and other.job_id() in msg
    assert pipe.calls == 0 and everything(tmp_path) == snapshot
    # another split may hold another job
    generate_dataset(FakePipeline(), Masks(), tmp_path, other, split="val", n=2, progress=False)
    assert read_manifest(tmp_path).groupby("split")["job_id"].first().to_dict() == {
        "train": JOB.job_id(), "val": other.job_id()}


def test_label_space_mismatch(tmp_path):
    generate_dataset(FakePipeline(), Masks(), tmp_path, JOB, n=1, progress=False)
    voc = replace(JOB, space="voc")
    masks = Masks()
    masks.space = "voc"
    with pytest.raises(DataError, match="dataset.json.*space"):
        generate_dataset(FakePipeline(), masks, tmp_path, voc, split="val", n=1, progress=False)
    with pytest.raises(ParameterError, match="masks: label space"):
        generate_dataset(FakePipeline(), Masks(), tmp_path / "other", voc, n=1, progress=False)
    write_scenes(tmp_path / "scenes", 1, "train", "source", 32, 32, progress=False)
    with pytest.raises(DataError, match="source"):  # a scenes folder is not a generated one
        generate_dataset(FakePipeline(), Masks(), tmp_path / "scenes", JOB, split="gen", n=1, progress=False)


@pytest.mark.parametrize("kw", [{"shard": (2, 2)}, {"shard": (0, 0)}, {"shard": (-1, 2)}, {"shard": 3}, {"shard": (0.5, 2)},
                                {"n": -1}, {"n": 1.5}, {"batch_size": 0}, {"split": "a/b"}, {"split": ""},
                                {"job": "not a job"}])
def test_bad_arguments(tmp_path, kw):
    pipe = FakePipeline()
    with pytest.raises(ParameterError):
        generate_dataset(pipe, Masks(), tmp_path / "out", **{"job": JOB, **kw}, progress=False)
    assert pipe.calls == 0 and not (tmp_path / "out").exists()


def test_bad_mask_refused_before_the_pipeline(tmp_path):
    pipe = FakePipeline()
    with pytest.raises(ParameterError, match=r"'m1'.*\[19\]"):
        generate_dataset(pipe, Masks(4, bad=1), tmp_path, JOB, batch_size=4, progress=False)
    assert pipe.calls == 0 and not list((tmp_path / "images" / "train").iterdir())
    masks = Masks(2)
    masks.labels = masks.labels.astype(np.float32)
    with pytest.raises(ParameterError, match="'m0' has a float32 label"):
        generate_dataset(pipe, masks, tmp_path, JOB, progress=False)
    with pytest.raises(ParameterError, match="'m3'"):  # later batches are checked before their call too
        generate_dataset(pipe, Masks(4, bad=3, bad_id=200), tmp_path, JOB, batch_size=2, progress=False)
    assert pipe.calls == 1 and len(read_manifest(tmp_path)) == 2


def test_scores_land_in_the_manifest(tmp_path):
    def scorer(images, masks):
        assert images.shape == (len(masks), H, W, 3) and masks.dtype == np.uint8
        return [{"brightness": np.float32(im.mean()), "road": float((m == 0).mean())} for im, m in zip(images, masks)]

    generate_dataset(FakePipeline(), Masks(5), tmp_path, JOB, batch_size=2, scorer=scorer, progress=False)
    df = read_manifest(tmp_path)
    for row in df.itertuples():
        image = read_image(tmp_path / row.image)
        assert row.score_brightness == pytest.approx(image.mean(), rel=1e-6)
        assert row.score_road == pytest.approx((Masks(5).labels[row.index] == 0).mean())
    with pytest.raises(ParameterError, match="scorer"):
        generate_dataset(FakePipeline(), Masks(5), tmp_path / "x", JOB, scorer=lambda i, m: [{}], progress=False)


def test_merge_dataset_info_and_read_errors(tmp_path):
    assert read_dataset_info(tmp_path) == {} and read_manifest(tmp_path).empty
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="dataset.json: expected a JSON object"):
        merge_dataset_info(tmp_path, "train", {"seed": 1}, {"space": "cityscapes"}, key="seed")
    with pytest.raises(DataError, match="no generation job"):
        read_job(tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match="folder not found"):
        read_manifest(tmp_path / "nowhere")
    (tmp_path / "manifest.jsonl").write_text('{"split": "train", "index": 0, "job_id": "x"}\nnot json\n')
    with pytest.raises(DataError, match="manifest.jsonl: line 2"):
        read_manifest(tmp_path)
