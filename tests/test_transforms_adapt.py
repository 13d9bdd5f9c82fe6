"""synthseg.transforms and synthseg.adapt: FDA against a NumPy transcription of the reference formulation (on random
and real CamVid images), ClassMix masks, joint flips, determinism, and the DACS arithmetic on tiny tensors."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from references import fda_reference

from synthseg.adapt import DACS, FDA_BETAS, ensemble_predict, fda
from synthseg.core import ParameterError
from synthseg.transforms import (AUGMENTATIONS, augment, class_mix_masks, color_jitter, gaussian_blur, hflip, mix,
                                 random_gamma, random_scale_crop)


def reference_batch(src: torch.Tensor, trg: torch.Tensor, beta: float) -> np.ndarray:
    trg = trg.expand_as(src)
    return np.stack([fda_reference(s.double().numpy(), t.double().numpy(), beta) for s, t in zip(src, trg)])


# --- FDA --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 3, 64, 96), (2, 3, 63, 95), (2, 1, 50, 50)])
@pytest.mark.parametrize("beta", [*FDA_BETAS, 0.004, 0.2])
@pytest.mark.parametrize("trg_batch", ["full", "one"])
def test_fda_matches_reference_on_random_images(shape, beta, trg_batch):
    g = torch.Generator().manual_seed(0)
    src = torch.rand(shape, generator=g)
    trg = torch.rand((shape[0] if trg_batch == "full" else 1, *shape[1:]), generator=g)
    out = fda(src, trg, beta)
    assert out.shape == src.shape and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), reference_batch(src, trg, beta), atol=1e-5, rtol=0)


def camvid_frames(realdata) -> torch.Tensor:
    folder = realdata / "camvid" / "CamVid" / "train"
    paths = sorted(folder.glob("*.png"))
    assert len(paths) >= 2, folder
    imgs = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in (paths[0], paths[-1])]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("beta", FDA_BETAS)
def test_fda_matches_reference_on_real_camvid_frames(realdata, beta):
    x = camvid_frames(realdata)  # 2×3×360×480, two different sequences
    src, trg = x[:1], x[1:]
    out = fda(src, trg, beta)
    np.testing.assert_allclose(out.numpy(), reference_batch(src, trg, beta), atol=1e-5, rtol=0)
    # and the other way round, batched: each source gets the style of the other frame
    both = fda(x, x.flip(0), beta)
    np.testing.assert_allclose(both.numpy(), reference_batch(x, x.flip(0), beta), atol=1e-5, rtol=0)
    assert not np.allclose(out.numpy(), src.numpy(), atol=1e-3)  # it did change the image


def test_fda_beta_zero_is_identity():
    src, trg = torch.rand(2, 3, 40, 60), torch.rand(2, 3, 40, 60)
    assert torch.allclose(fda(src, trg, 0.0), src, atol=1e-6)


def test_fda_swaps_amplitude_in_window_and_keeps_phase():
    g = torch.Generator().manual_seed(1)
    src, trg = torch.rand(2, 3, 72, 100, generator=g, dtype=torch.float64), torch.rand(1, 3, 72, 100, generator=g,
                                                                                      dtype=torch.float64)
    beta = 0.05
    out = fda(src, trg, beta)
    spec = lambda x: np.fft.fftshift(np.fft.fft2(x.numpy(), axes=(-2, -1)), axes=(-2, -1))
    s_out, s_src, s_trg = spec(out), spec(src), spec(trg)
    b, ch, cw = math.floor(72 * beta), 36, 50
    win = np.zeros((72, 100), bool)
    win[ch - b:ch + b + 1, cw - b:cw + b + 1] = True
    assert win.sum() == (2 * b + 1) ** 2
    np.testing.assert_allclose(np.abs(s_out)[..., win], np.broadcast_to(np.abs(s_trg), s_src.shape)[..., win], atol=1e-9)
    np.testing.assert_allclose(np.abs(s_out)[..., ~win], np.abs(s_src)[..., ~win], atol=1e-9)
    unit = lambda z: z / np.abs(z)
    np.testing.assert_allclose(unit(s_out), unit(s_src), atol=1e-9)  # phase kept everywhere


def test_fda_rejects_bad_inputs():
    src = torch.rand(2, 3, 32, 32)
    for trg in (torch.rand(2, 3, 32, 30), torch.rand(3, 3, 32, 32), torch.rand(2, 1, 32, 32)):
        with pytest.raises(ParameterError, match="trg"):
            fda(src, trg)
    with pytest.raises(ParameterError, match="beta"):
        fda(src, src, 0.5)
    with pytest.raises(ParameterError, match="beta"):
        fda(src, src, -0.1)
    with pytest.raises(ParameterError, match="float"):
        fda((src * 255).to(torch.uint8), src)


def test_ensemble_predict_averages_softmax():
    x = torch.rand(2, 3, 8, 8)
    logits = [torch.randn(2, 4, 8, 8) for _ in FDA_BETAS]
    models = [lambda _x, l=l: l for l in logits]
    p = ensemble_predict(models, x)
    torch.testing.assert_close(p, torch.stack([l.softmax(1) for l in logits]).mean(0))
    with pytest.raises(ParameterError, match="models"):
        ensemble_predict([], x)


# --- transforms -------------------------------------------------------------------------------------------------

def batch(seed=0, b=6, h=12, w=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.randint(0, 19, (b, h, w), generator=g)


def test_hflip_flips_image_and_label_together():
    img, lbl = batch()
    out_i, out_l = hflip(img, lbl, p=0.5, generator=torch.Generator().manual_seed(1))
    flipped = []
    for i in range(len(img)):
        f = torch.equal(out_i[i], img[i].flip(-1))
        assert f or torch.equal(out_i[i], img[i])
        assert torch.equal(out_l[i], lbl[i].flip(-1) if f else lbl[i])
        flipped.append(f)
    assert any(flipped) and not all(flipped)
    assert torch.equal(hflip(img, lbl, p=1.0)[1], lbl.flip(-1)) and torch.equal(hflip(img, lbl, p=0.0)[0], img)


@pytest.mark.parametrize("fn", [
    lambda i, l, g: hflip(i, l, generator=g),
    lambda i, l, g: (color_jitter(i, generator=g), l),
    lambda i, l, g: (gaussian_blur(i, generator=g), l),
    lambda i, l, g: (random_gamma(i, generator=g), l),
    lambda i, l, g: random_scale_crop(i, l, (8, 8), generator=g),
    lambda i, l, g: (class_mix_masks(l, generator=g), l),
    *[lambda i, l, g, p=p: augment(i, l, p, generator=g) for p in AUGMENTATIONS],
])
def test_same_generator_seed_same_result(fn):
    img, lbl = batch()
    a = fn(img, lbl, torch.Generator().manual_seed(11))
    b = fn(img, lbl, torch.Generator().manual_seed(11))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_photometric_ops_stay_in_range_and_change_only_images():
    img, lbl = batch()
    for fn in (color_jitter, gaussian_blur, random_gamma):
        out = fn(img, p=1.0, generator=torch.Generator().manual_seed(5))
        assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1 and not torch.equal(out, img)
        assert torch.equal(fn(img, p=0.0), img)
    out_i, out_l = augment(img, lbl, "aug2", torch.Generator().manual_seed(6))
    assert torch.equal(out_l, lbl)


def test_random_scale_crop_keeps_labels_nearest():
    img, lbl = batch(h=32, w=48)
    ci, cl = random_scale_crop(img, lbl, (20, 24), generator=torch.Generator().manual_seed(2))
    assert ci.shape == (6, 3, 20, 24) and cl.shape == (6, 20, 24) and cl.dtype == torch.int64
    assert set(cl.unique().tolist()) <= set(lbl.unique().tolist()) | {255}
    same_i, same_l = random_scale_crop(img, lbl, (32, 48), scale=(1.0, 1.0))
    assert torch.allclose(same_i, img, atol=1e-6) and torch.equal(same_l, lbl)


def test_augment_rejects_unknown_policy():
    img, lbl = batch()
    with pytest.raises(ParameterError, match="policy.*none, aug1, aug2, aug12"):
        augment(img, lbl, "flip")


# --- ClassMix ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_class_mix_masks_choose_half_of_present_classes(seed):
    g = torch.Generator().manual_seed(seed)
    lbl = torch.randint(0, 19, (8, 20, 30), generator=g)
    lbl[1] = torch.randint(0, 3, (20, 30), generator=g)  # 3 classes -> 2 chosen
    lbl[2] = 7  # one class -> chosen
    lbl[3] = 255  # nothing valid -> empty mask
    lbl[4, :, :10] = 255
    lbl[5] = torch.where(lbl[5] < 10, 255, lbl[5])
    masks = class_mix_masks(lbl, generator=torch.Generator().manual_seed(100 + seed))
    assert masks.dtype == torch.bool and masks.shape == lbl.shape
    for l, m in zip(lbl, masks):
        present = set(l.unique().tolist()) - {255}
        chosen = set(l[m].unique().tolist())
        assert 255 not in chosen and chosen <= present
        assert len(chosen) == (len(present) + len(present) % 2) // 2 == math.ceil(len(present) / 2)
        assert torch.equal(m, torch.isin(l, torch.tensor(sorted(chosen), dtype=l.dtype)))  # exactly their pixels
    assert not masks[3].any() and masks[2].all()


def test_class_mix_choice_is_uniform_over_classes():
    lbl = torch.arange(4).repeat_interleave(4).view(1, 4, 4).expand(2000, 4, 4)  # 4 classes, 2 chosen each
    masks = class_mix_masks(lbl, generator=torch.Generator().manual_seed(0))
    freq = masks[:, :, 0].float().mean(0)  # row r holds class r
    assert torch.allclose(freq, torch.full((4,), 0.5), atol=0.05)


def test_mix_takes_a_where_mask_else_b():
    mask = torch.tensor([[[True, False], [False, True]]])
    a_img, b_img = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    assert torch.equal(mix(mask, a_img, b_img), mask[:, None].expand(1, 3, 2, 2).float())
    a_lbl, b_lbl = torch.full((1, 2, 2), 4), torch.full((1, 2, 2), 9)
    assert mix(mask, a_lbl, b_lbl).tolist() == [[[4, 9], [9, 4]]]


# --- DACS -------------------------------------------------------------------------------------------------------

def test_dacs_teacher_ema_arithmetic():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    dacs = DACS(student)
    assert dacs.teacher is not student and not dacs.teacher.training
    assert all(not p.requires_grad for p in dacs.teacher.parameters())
    t0 = [p.clone() for p in dacs.teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters(): p.mul_(3).add_(1)
    s1 = [p.clone() for p in student.parameters()]
    assert dacs.update_teacher(0) == 0  # alpha_0 = min(1 - 1/1, 0.99) = 0: copy
    for t, s in zip(dacs.teacher.parameters(), s1): torch.testing.assert_close(t, s)
    with torch.no_grad():
        for p in student.parameters(): p.add_(2)
    assert dacs.update_teacher(3) == 0.75  # min(1 - 1/4, 0.99)
    for t, s in zip(dacs.teacher.parameters(), s1): torch.testing.assert_close(t, 0.75 * s + 0.25 * (s + 2))
    before = [p.clone() for p in dacs.teacher.parameters()]
    assert dacs.update_teacher(500) == 0.99
    for t, b, s in zip(dacs.teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.99 * b + 0.01 * s)
    assert not any(torch.equal(a, b) for a, b in zip(t0, dacs.teacher.parameters()))


class FixedMargin(nn.Module):
    """Two-class logits (0, d) with d = the first image channel: max softmax prob = sigmoid(|d|)."""
    def forward(self, x):
        return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0]], 1)


def test_dacs_pseudo_label_weight_is_one_share_per_batch():
    dacs = DACS(FixedMargin())
    d = torch.tensor([[[5.0, -5.0], [-0.2, 0.1]],   # sigmoid: .9933, .9933, .550, .525 -> 2 confident
                      [[4.0, 2.0], [-2.0, 1.0]]])  # .982, .881, .881, .731 -> 1 confident
    labels, weight = dacs.pseudo_label(torch.stack([d, d, d], 1))
    assert labels.tolist() == [[[1, 0], [0, 1]], [[1, 1], [0, 1]]]
    assert weight.dim() == 0 and weight.item() == pytest.approx(3 / 8)  # batch share, as the reference


def test_dacs_mixed_batch_labels_and_weights():
    dacs = DACS(FixedMargin())
    dacs.jitter_p = dacs.blur_p = 0.0  # switch the strong augmentation off to check the mixing exactly
    g = torch.Generator().manual_seed(0)
    src_x, trg_x = torch.rand(3, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g) * 4
    src_y = torch.randint(0, 6, (3, 16, 16), generator=g)
    src_y[:, :3] = 255
    mx, my, mw = dacs.mixed_batch(src_x, src_y, trg_x, generator=torch.Generator().manual_seed(1))
    mask = class_mix_masks(src_y, generator=torch.Generator().manual_seed(1))  # same first draws
    pseudo, share = dacs.pseudo_label(trg_x)
    assert torch.equal(mx, torch.where(mask[:, None], src_x, trg_x))
    assert torch.equal(my, torch.where(mask, src_y, pseudo)) and (my != 255).all()
    assert torch.equal(mw, torch.where(mask, 1.0, share))
    dacs.jitter_p, dacs.blur_p = 0.8, 0.5
    trg_x = trg_x.sigmoid()  # images in [0, 1] for the strong augmentation
    a = dacs.mixed_batch(src_x, src_y, trg_x, generator=torch.Generator().manual_seed(4))
    b = dacs.mixed_batch(src_x, src_y, trg_x, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].min() >= 0 and a[0].max() <= 1


def test_dacs_loss_equals_hand_computation():
    dacs = DACS(FixedMargin())
    # 1 image, 2 classes, 1×3 pixels
    ls = torch.tensor([[[[0.0, 1.0, 2.0]], [[1.0, 1.0, 0.0]]]])
    ys = torch.tensor([[[1, 255, 0]]])
    lm = torch.tensor([[[[3.0, 0.0, 0.5]], [[0.0, 0.0, -0.5]]]])
    ym = torch.tensor([[[0, 1, 1]]])
    wm = torch.tensor([[[1.0, 0.25, 0.25]]])
    ce = lambda z, k: math.log(sum(math.exp(v) for v in z)) - z[k]
    src = (ce([0.0, 1.0], 1) + ce([2.0, 0.0], 0)) / 2  # mean over the 2 non-ignored pixels
    mixed = (1.0 * ce([3.0, 0.0], 0) + 0.25 * ce([0.0, 0.0], 1) + 0.25 * ce([0.5, -0.5], 1)) / 3  # mean over all 3
    assert dacs.loss(ls, ys, lm, ym, wm).item() == pytest.approx(src + mixed, rel=1e-6)
    all_ignored = torch.full_like(ys, 255)
    assert dacs.loss(ls, all_ignored, lm, ym, wm).item() == pytest.approx(mixed, rel=1e-6)  # 0, not nan


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fda_and_transforms_on_gpu_match_cpu():
    src, trg = torch.rand(2, 3, 64, 96), torch.rand(1, 3, 64, 96)
    torch.testing.assert_close(fda(src.cuda(), trg.cuda(), 0.05).cpu(), fda(src, trg, 0.05), atol=1e-5, rtol=0)
    img, lbl = batch()
    for policy in AUGMENTATIONS:
        gi, gl = augment(img.cuda(), lbl.cuda(), policy, torch.Generator().manual_seed(3))
        ci, cl = augment(img, lbl, policy, torch.Generator().manual_seed(3))
        torch.testing.assert_close(gi.cpu(), ci, atol=1e-5, rtol=0)
        assert torch.equal(gl.cpu(), cl)
    m = class_mix_masks(lbl.cuda(), generator=torch.Generator().manual_seed(2))
    assert torch.equal(m.cpu(), class_mix_masks(lbl, generator=torch.Generator().manual_seed(2)))
