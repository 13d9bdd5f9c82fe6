"""The augmentation ablation: its plans and priors, and the Stable Diffusion path end to end on tiny random weights."""
import numpy as np
import pytest
import torch

from synthseg.ablation import AblationConfig, Guided, random_prior, run_ablation, uniform_plan
from synthseg.controlled import visual_prior, write_tiny_weights
from synthseg.core import ParameterError
from synthseg.labels import get_space
from synthseg.scenes import make_scene


class Scenes(torch.utils.data.Dataset):
    space = get_space("cityscapes")
    def __len__(self): return 3
    def __getitem__(self, i): return make_scene(i, 32, 64, style="target")


def test_guided_items_carry_the_blend_and_the_prompt():
    item = Guided(Scenes(), "canny", "boundary", 0.3, 0.6, prompt="appended", captions={"scene_000001": "a street"})[1]
    x = torch.from_numpy(item["image"]).permute(2, 0, 1)[None].float() / 255
    expected = visual_prior(x, torch.from_numpy(item["label"].astype(np.int64))[None], "canny", "boundary", 0.3, 0.6)
    assert np.allclose(item["prior"], expected[0].numpy())
    assert item["prompt"].startswith("a street; road")


def test_random_prior_weights_and_drop():
    item = Scenes()[0]
    x = torch.from_numpy(item["image"]).permute(2, 0, 1)[None].float().repeat(64, 1, 1, 1) / 255
    y = torch.from_numpy(item["label"].astype(np.int64))[None].repeat(64, 1, 1)
    torch.manual_seed(0)
    p = random_prior(drop=0.25)(x, y)
    dropped = (p.flatten(1).amax(1) == 0).float().mean().item()
    assert 0.1 < dropped < 0.4  # about a quarter trained mask-only
    full = visual_prior(x[:1], y[:1], "canny", "boundary", 1.0, 1.0)
    assert (p <= full + 1e-6).all()  # weights in [0, 1] never exceed the unit blend
    with pytest.raises(ParameterError, match="drop"):
        random_prior(drop=1.5)


def test_uniform_plan_cycles_evenly():
    presence = np.eye(4, dtype=bool)
    plan = uniform_plan(presence, 10, list("abcd"), seed=3)
    counts = plan["source_index"].value_counts()
    assert counts.max() - counts.min() <= 1 and plan["classes"].map(len).eq(1).all()
    assert plan.equals(uniform_plan(presence, 10, list("abcd"), seed=3))


@pytest.fixture
def one_thread():
    "Tiny models run about 10× faster single-threaded; the thread count is restored afterwards."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_controlnet_backend_end_to_end(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path / "data"))
    weights = write_tiny_weights(tmp_path / "weights")
    cfg = AblationConfig.preset("tiny", size=(64, 64), backend="controlnet", base_folder=str(weights["sd15"]),
                                control_folder=str(weights["controlnet"]), guidance=2.0, gen_ratios=(1.0,),
                                omega_grid=(1.0,), clip_folder=str(weights["clip"]))
    res = run_ablation(cfg, tmp_path / "study", progress=False)
    assert res.backend == "controlnet" and "Stable Diffusion" in res.note
    assert list(res.components.index) == ["D_origin", "+ D_gen, label prior + class list", "+ class-prompt appending",
                                          "+ visual prior blending", "+ class balancing", "+ clip filter"]
    assert list(res.prompts.index) == ["classes", "appended"] and "SSIM" in res.prompts.columns
    assert res.components.loc["+ clip filter", "images"] == 6 + 5  # ceil(0.75 · 6) generated images kept
    from synthseg.generate import read_manifest
    man = read_manifest(tmp_path / "study" / "gen" / "uniform-appended")
    assert man["prompt"].str.contains("road").all() and not man["prompt"].str.contains(";").any()  # no captions
