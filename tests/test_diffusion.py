"""Mask-guided diffusion: condition encoding, model save/load, ε/v losses, exact resume, deterministic sampling."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from synthseg.core import DataError, ParameterError
from synthseg.diffusion import (SCHEDULERS, DiffusionTrainConfig, DiffusionTrainer, MaskDiffusionConfig,
                                MaskDiffusionModel, MaskToImagePipeline, diffusion_loss, make_scheduler,
                                mask_to_condition)
from toys import StreetToy

TINY = MaskDiffusionConfig(num_classes=19, sample_size=(16, 16), block_out_channels=(16, 32), layers_per_block=1,
                           cond_drop_prob=0.1)


class Toy(StreetToy):
    """5 maps of 24×24 with an ignore band (resized to 16×16 by the trainer)."""

    def __init__(self, n=5, crash_after=None):
        super().__init__(n, (24, 24), crash_after, ignore_rows=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MaskDiffusionModel(TINY).eval()


@pytest.fixture(scope="module")
def masks():
    rng = np.random.default_rng(0)
    m = rng.integers(0, 19, (3, 16, 16)).astype(np.uint8)
    m[:, :3] = 255
    return m


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def count_forwards(model):
    sizes = []
    return sizes, model.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))


# --- condition ---------------------------------------------------------------------------------------------------

def test_condition_is_one_hot_plus_ignore_channel():
    labels = torch.randint(0, 19, (2, 8, 12))
    labels[0, :3] = 255
    cond = mask_to_condition(labels, 19)
    assert cond.shape == (2, 20, 8, 12) and cond.dtype == torch.float32
    assert torch.equal(cond.sum(1), torch.ones(2, 8, 12))
    expected = torch.where(labels == 255, 19, labels)
    assert torch.equal(cond.argmax(1), expected)
    assert cond[0, 19, :3].all() and not cond[0, :19, :3].any()  # ignore is its own channel, never a class
    assert not cond[1, 19].any()
    assert torch.equal(mask_to_condition(labels.numpy().astype(np.uint8), 19), cond)  # numpy uint8 the same
    assert torch.equal(mask_to_condition(labels.numpy()[:, ::-1], 19), cond.flip(2))  # non-contiguous views


def test_condition_other_ignore_index():
    cond = mask_to_condition(np.array([[[0, 1, 2, 3]]]), 3, ignore_index=3)
    assert cond.shape == (1, 4, 1, 4) and cond[0, 3, 0, 3] == 1


def test_null_condition_is_the_dropped_condition(model):
    sched = make_scheduler(TINY)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    cond = mask_to_condition(torch.randint(0, 19, (2, 16, 16)), 19)
    with torch.no_grad():
        dropped = diffusion_loss(model, sched, x, cond, torch.Generator().manual_seed(3), cond_drop_prob=1.0)
        null = diffusion_loss(model, sched, x, torch.zeros_like(cond), torch.Generator().manual_seed(3))
        kept = diffusion_loss(model, sched, x, cond, torch.Generator().manual_seed(3))
    assert dropped == null and kept != null


@pytest.mark.parametrize("bad", [[19], [254], [-1], [19, 200]])
def test_bad_ids_are_named(bad):
    labels = np.zeros((1, 4, 4), np.int64)
    labels[0, 0, : len(bad)] = bad
    with pytest.raises(ParameterError) as e:
        mask_to_condition(labels, 19)
    assert all(str(b) in str(e.value) for b in bad)


@pytest.mark.parametrize("labels", [np.zeros((1, 4, 4), np.float32), np.zeros((4, 4), np.uint8),
                                    torch.zeros(1, 4, 4, dtype=torch.bool), [[[0]]]])
def test_bad_label_arrays(labels):
    with pytest.raises(ParameterError, match="labels"):
        mask_to_condition(labels, 19)


def test_ignore_index_inside_classes_refused():
    with pytest.raises(ParameterError, match="ignore_index"):
        mask_to_condition(np.zeros((1, 2, 2), np.uint8), 19, ignore_index=5)
    with pytest.raises(ParameterError, match="ignore_index"):
        MaskDiffusionConfig(num_classes=19, ignore_index=3)


# --- config and model --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,channels", [((30, 32), (16, 32, 64)), ((4, 8), (16,)), ((24, 20), (16, 32, 32, 32))])
def test_bad_resolution_refused(size, channels):
    with pytest.raises(ParameterError, match="sample_size"):
        MaskDiffusionConfig(sample_size=size, block_out_channels=channels)


@pytest.mark.parametrize("kwargs,name", [(dict(prediction_type="x0"), "prediction_type"),
                                         (dict(beta_schedule="cosine"), "beta_schedule"),
                                         (dict(attention_levels=(True,)), "attention_levels"),
                                         (dict(norm_num_groups=5), "norm_num_groups"),
                                         (dict(cond_drop_prob=1.5), "cond_drop_prob"),
                                         (dict(prior_channels=-1), "prior_channels")])
def test_bad_config_refused(kwargs, name):
    with pytest.raises(ParameterError, match=name):
        dataclasses.replace(TINY, **kwargs)


def test_model_shapes_and_forward_checks(model):
    assert model.unet.conv_in.in_channels == 3 + 19 + 1 and model.unet.conv_out.out_channels == 3
    cond = mask_to_condition(torch.zeros(2, 16, 16, dtype=torch.long), 19)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16), torch.tensor([1, 999]), cond).shape == (2, 3, 16, 16)
        wide = mask_to_condition(torch.zeros(2, 8, 24, dtype=torch.long), 19)
        assert model(torch.randn(2, 3, 8, 24), 5, wide).shape == (2, 3, 8, 24)  # other sizes too
        with pytest.raises(ParameterError, match="condition"):
            model(torch.randn(2, 3, 16, 16), 5, cond[:, :19])
        with pytest.raises(ParameterError, match="noisy"):
            model(torch.randn(2, 3, 15, 16), 5, torch.zeros(2, 20, 15, 16))


def test_save_load_round_trip(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    back = MaskDiffusionModel.from_pretrained(folder).eval()
    assert back.config == model.config
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x, cond = torch.randn(1, 3, 16, 16), mask_to_condition(torch.zeros(1, 16, 16, dtype=torch.long), 19)
    with torch.no_grad():
        assert torch.equal(model(x, 10, cond), back(x, 10, cond))


def test_missing_or_broken_checkpoint_is_a_data_error(model, tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        MaskDiffusionModel.from_pretrained(tmp_path / "nowhere")
    folder = model.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(DataError, match="model.safetensors"):
        MaskDiffusionModel.from_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="model.safetensors"):
        MaskDiffusionModel.from_pretrained(folder)
    other = dataclasses.replace(TINY, layers_per_block=2)
    MaskDiffusionModel(other).save_pretrained(tmp_path / "other")
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(DataError, match="not matching"):
        MaskDiffusionModel.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(DataError, match="config.json"):
        MaskDiffusionModel.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"num_classes": 19, "colour": "red"}))
    with pytest.raises(DataError, match="config.json"):
        MaskDiffusionModel.from_pretrained(folder)


# --- losses ------------------------------------------------------------------------------------------------------

class Oracle(torch.nn.Module):
    """Answers the exact ε or v target from the clean images: ε = (x_t − √ᾱ x₀)/√(1−ᾱ), v = (√ᾱ x_t − x₀)/√(1−ᾱ)."""

    def __init__(self, x0, scheduler, target):
        super().__init__()
        self.x0, self.ab, self.target = x0, scheduler.alphas_cumprod, target

    def forward(self, noisy, t, condition):
        a, s = self.ab[t].sqrt().view(-1, 1, 1, 1), (1 - self.ab[t]).sqrt().view(-1, 1, 1, 1)
        return (noisy - a * self.x0) / s if self.target == "epsilon" else (a * noisy - self.x0) / s


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_eps_and_v_losses(prediction_type, beta_schedule):
    cfg = dataclasses.replace(TINY, prediction_type=prediction_type, beta_schedule=beta_schedule)
    sched = make_scheduler(cfg)
    x0 = torch.rand(6, 3, 8, 8) * 2 - 1
    cond = torch.zeros(6, 20, 8, 8)
    right = diffusion_loss(Oracle(x0, sched, prediction_type), sched, x0, cond, torch.Generator().manual_seed(0))
    other = "epsilon" if prediction_type == "v_prediction" else "v_prediction"
    wrong = diffusion_loss(Oracle(x0, sched, other), sched, x0, cond, torch.Generator().manual_seed(0))
    assert right.item() < 1e-6 and wrong.item() > 1e-2


def test_v_target_matches_get_velocity():
    sched = make_scheduler(dataclasses.replace(TINY, prediction_type="v_prediction"))
    x0, noise, t = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.tensor([0, 500, 999])
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(sched.get_velocity(x0, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * x0)


# --- training ----------------------------------------------------------------------------------------------------

CFG = DiffusionTrainConfig(steps=4, batch_size=2, size=(16, 16), lr=1e-3, lr_warmup=2, checkpoint_every=2)


def test_killed_run_resumes_to_identical_weights(tmp_path):
    DiffusionTrainer(TINY, CFG, Toy(), tmp_path / "a", progress=False).fit()
    with pytest.raises(KeyboardInterrupt):  # dies during step 3, after the step-2 checkpoint
        DiffusionTrainer(TINY, CFG, Toy(crash_after=5), tmp_path / "b", progress=False).fit()
    assert not (tmp_path / "b" / "final").exists()
    resumed = DiffusionTrainer(TINY, CFG, Toy(), tmp_path / "b", progress=False)
    assert resumed.step == 2
    resumed.fit()
    for file in ("final/model.safetensors", "checkpoint/teacher.safetensors", "checkpoint/model.safetensors"):
        a, b = load_file(tmp_path / "a" / file), load_file(tmp_path / "b" / file)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{file} {k}")
    ema = load_file(tmp_path / "a" / "final/model.safetensors")
    raw = load_file(tmp_path / "a" / "checkpoint/model.safetensors")
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # final/ holds the EMA, not the raw weights
    final = json.loads((tmp_path / "a" / "final" / "config.json").read_text())
    assert final["cond_drop_prob"] == TINY.cond_drop_prob and final["sample_size"] == [16, 16]
    images = MaskToImagePipeline.from_pretrained(tmp_path / "a" / "final", "ddim")(
        np.zeros((1, 16, 16), np.uint8), num_inference_steps=2, generator=gens(0))
    assert images.shape == (1, 16, 16, 3)


def test_training_is_seeded_and_learns_condition_dropout_setting(tmp_path):
    cfg = dataclasses.replace(CFG, steps=2, cond_drop_prob=0.5, hflip=True)
    one = DiffusionTrainer(TINY, cfg, Toy(), progress=False)
    hist = one.fit()
    assert hist[-1]["step"] == 2 and np.isfinite(hist[-1]["loss"]) and one.model_cfg.cond_drop_prob == 0.5
    two = DiffusionTrainer(TINY, cfg, Toy(), progress=False)
    two.fit()
    assert all(torch.equal(a, b) for a, b in zip(one.ema.state_dict().values(), two.ema.state_dict().values()))
    other = DiffusionTrainer(TINY, dataclasses.replace(cfg, seed=1), Toy(), progress=False)
    other.fit()
    assert not all(torch.equal(a, b) for a, b in zip(one.ema.state_dict().values(), other.ema.state_dict().values()))


def test_changed_config_in_same_folder_is_refused(tmp_path):
    DiffusionTrainer(TINY, dataclasses.replace(CFG, steps=1), Toy(), tmp_path, progress=False).fit()
    with pytest.raises(ParameterError, match="train.lr"):
        DiffusionTrainer(TINY, dataclasses.replace(CFG, steps=1, lr=0.1), Toy(), tmp_path, progress=False)
    with pytest.raises(ParameterError, match="model.layers_per_block"):
        DiffusionTrainer(dataclasses.replace(TINY, layers_per_block=2), dataclasses.replace(CFG, steps=1), Toy(),
                         tmp_path, progress=False)


def test_trainer_refuses_other_label_space_and_bad_size():
    with pytest.raises(ParameterError, match="label space"):
        DiffusionTrainer(dataclasses.replace(TINY, num_classes=11), CFG, Toy(), progress=False)
    with pytest.raises(ParameterError, match="size"):
        DiffusionTrainer(TINY, dataclasses.replace(CFG, size=(15, 16)), Toy(), progress=False)


def test_priors_are_required_exactly_when_the_model_has_prior_channels(masks):
    edges = lambda images, labels: (labels[:, None] != labels[:, None].roll(1, -1)).float()
    with pytest.raises(ParameterError, match="prior_fn"):
        DiffusionTrainer(dataclasses.replace(TINY, prior_channels=1), CFG, Toy(), progress=False)
    with pytest.raises(ParameterError, match="prior_fn"):
        DiffusionTrainer(TINY, CFG, Toy(), progress=False, prior_fn=edges)
    trainer = DiffusionTrainer(dataclasses.replace(TINY, prior_channels=1), dataclasses.replace(CFG, steps=1), Toy(),
                               progress=False, prior_fn=edges)
    trainer.fit()
    pipe = trainer.pipeline("ddim")
    m = torch.as_tensor(masks).long()
    assert pipe(m, num_inference_steps=1, priors=edges(None, m)).shape == (len(m), 16, 16, 3)
    with pytest.raises(ParameterError, match="priors"):
        pipe(m, num_inference_steps=1)
    with pytest.raises(ParameterError, match="priors"):
        pipe(m, num_inference_steps=1, priors=torch.zeros(len(m), 2, 16, 16))


def test_stage_two_starts_from_stage_one(tmp_path):
    stage1 = DiffusionTrainer(TINY, dataclasses.replace(CFG, steps=1, cond_drop_prob=1.0), Toy(), tmp_path / "s1",
                              progress=False)
    stage1.fit()
    stage2 = DiffusionTrainer(TINY, dataclasses.replace(CFG, init_from=str(tmp_path / "s1" / "final")), Toy(),
                              progress=False)
    assert all(torch.equal(a, b) for a, b in zip(stage2.unwrapped.parameters(), stage1.ema.parameters()))
    with pytest.raises(ParameterError, match="block_out_channels"):
        DiffusionTrainer(dataclasses.replace(TINY, block_out_channels=(32, 32)),
                         dataclasses.replace(CFG, init_from=str(tmp_path / "s1" / "final")), Toy(), progress=False)


# --- sampling ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_same_seed_same_image_whatever_the_batch(model, masks, name):
    pipe = MaskToImagePipeline(model, name)
    trio = pipe(masks, num_inference_steps=3, generator=gens(0, 1, 2), output_type="pt")
    assert torch.equal(trio, pipe(masks, num_inference_steps=3, generator=gens(0, 1, 2), output_type="pt"))
    alone = pipe(masks[1:2], num_inference_steps=3, generator=gens(1), output_type="pt")
    reordered = pipe(masks[[2, 1]], num_inference_steps=3, generator=gens(2, 1), output_type="pt")
    torch.testing.assert_close(alone[0], trio[1], rtol=0, atol=1e-3)  # batched convolutions round differently
    torch.testing.assert_close(reordered[1], trio[1], rtol=0, atol=1e-3)
    torch.testing.assert_close(reordered[0], trio[2], rtol=0, atol=1e-3)
    assert not torch.allclose(trio[0], trio[1], atol=1e-2)  # different seeds, different images
    np_alone = pipe(masks[1:2], num_inference_steps=3, generator=gens(1))
    np_trio = pipe(masks, num_inference_steps=3, generator=gens(0, 1, 2))
    assert np.abs(np_alone[0].astype(int) - np_trio[1]).max() <= 1


def test_scheduler_choice_per_call_and_instances(model, masks):
    pipe = MaskToImagePipeline(model)
    assert isinstance(pipe.scheduler, SCHEDULERS["dpmsolver++"])
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    by_name = pipe(masks[:1], num_inference_steps=2, generator=gens(0), scheduler="ddim")
    by_instance = pipe(masks[:1], num_inference_steps=2, generator=gens(0), scheduler=make_scheduler(TINY, "ddim"))
    assert np.array_equal(by_name, by_instance)
    with pytest.raises(ParameterError, match="prediction_type"):
        MaskToImagePipeline(model, make_scheduler(dataclasses.replace(TINY, prediction_type="v_prediction"), "ddim"))
    with pytest.raises(ParameterError, match="scheduler"):
        MaskToImagePipeline(model, "euler")


def test_guidance_is_one_batched_forward(model, masks):
    pipe = MaskToImagePipeline(model, "ddim")
    sizes, hook = count_forwards(model)
    try:
        guided = pipe(masks[:2], num_inference_steps=3, guidance_scale=4.0, generator=gens(0, 1), output_type="pt")
        plain = pipe(masks[:2], num_inference_steps=3, generator=gens(0, 1), output_type="pt")
    finally:
        hook.remove()
    assert sizes == [4] * 3 + [2] * 3
    assert not torch.allclose(guided, plain, atol=1e-3)
    alone = pipe(masks[1:2], num_inference_steps=3, guidance_scale=4.0, generator=gens(1), output_type="pt")
    torch.testing.assert_close(alone[0], guided[1], rtol=0, atol=1e-3)


def test_guidance_without_dropout_training_warns(masks):
    torch.manual_seed(0)
    plain = MaskDiffusionModel(dataclasses.replace(TINY, cond_drop_prob=0.0))
    with pytest.warns(UserWarning, match="null condition"):
        MaskToImagePipeline(plain, "ddim")(masks[:1], num_inference_steps=1, guidance_scale=2.0, generator=gens(0))


def test_output_types(model, masks):
    pipe = MaskToImagePipeline(model, "ddim")
    as_np = pipe(torch.from_numpy(masks).long(), num_inference_steps=2, generator=gens(0, 1, 2))
    as_pt = pipe(masks, num_inference_steps=2, generator=gens(0, 1, 2), output_type="pt")
    assert isinstance(as_np, np.ndarray) and as_np.dtype == np.uint8 and as_np.shape == (3, 16, 16, 3)
    assert isinstance(as_pt, torch.Tensor) and as_pt.dtype == torch.float32 and as_pt.shape == (3, 3, 16, 16)
    assert as_pt.min() >= -1 and as_pt.max() <= 1
    assert np.array_equal(as_np, ((as_pt + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    with pytest.raises(ParameterError, match="output_type"):
        pipe(masks, num_inference_steps=2, output_type="pil")


def test_pipeline_other_resolution_and_single_generator(model, masks):
    pipe = MaskToImagePipeline(model, "ddpm")
    wide = np.zeros((2, 8, 24), np.uint8)
    assert pipe(wide, num_inference_steps=2).shape == (2, 8, 24, 3)
    a = pipe(masks[:2], num_inference_steps=2, generator=torch.Generator().manual_seed(5))
    b = pipe(masks[:2], num_inference_steps=2, generator=torch.Generator().manual_seed(5))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kwargs,match", [
    (dict(masks=np.full((1, 16, 16), 19, np.uint8)), "19"),
    (dict(masks=np.zeros((1, 15, 16), np.uint8)), "masks"),
    (dict(masks=np.zeros((1, 4, 4), np.uint8)), "masks"),
    (dict(masks=np.zeros((16, 16), np.uint8)), "labels"),
    (dict(masks=np.zeros((1, 16, 16), np.float32)), "labels"),
    (dict(generator=gens(0, 1)), "generator"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(scheduler="heun"), "scheduler"),
])
def test_bad_sampling_arguments_fail_before_any_work(model, kwargs, match):
    pipe = MaskToImagePipeline(model, "ddim")
    args = {"masks": np.zeros((1, 16, 16), np.uint8), "num_inference_steps": 2, "generator": gens(0), **kwargs}
    sizes, hook = count_forwards(model)
    try:
        with pytest.raises(ParameterError, match=match):
            pipe(args.pop("masks"), **args)
    finally:
        hook.remove()
    assert sizes == []
