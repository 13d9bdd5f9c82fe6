"""synthseg.genmetrics against the references that define each score: scikit-image's SSIM, closed-form Fréchet
distances and pytorch-fid's `calculate_frechet_distance`, a direct O(n²) unbiased MMD² and torch-fidelity's KID,
pytorch-fid's FID Inception (same weights, same features), and the segmentation confusion matrix. The reference
packages are optional: their tests skip when they are not installed."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from synthseg.core import DataError, ParameterError
from synthseg.genmetrics import (INCEPTION_FILE, InceptionFeatures, SegmenterFeatures, as_image_batch,
                                 create_fid_inception, extract_features, feature_stats, frechet_distance,
                                 inception_weights_path, kernel_distance, paired_ssim, score_generations,
                                 segmentation_consistency, ssim)
from synthseg.metrics import ConfusionMatrix
from synthseg.models import create_model, normalize
from synthseg.train import Normalized


def smooth_images(n, h, w, c, seed):
    """Smooth random images in [0, 1], B×H×W×C float64."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(np.cumsum(rng.normal(size=(n, h, w, c)), 1), 2)
    x -= x.min(axis=(1, 2, 3), keepdims=True)
    return x / x.max(axis=(1, 2, 3), keepdims=True)


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)


# --- SSIM ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels,data_range,sigma,win_size,K", [
    (3, 1.0, 1.5, 11, (0.01, 0.03)),
    (1, 1.0, 1.5, 11, (0.01, 0.03)),
    (3, 255.0, 1.5, 11, (0.01, 0.03)),
    (3, 1.0, 1.0, 9, (0.02, 0.05)),  # skimage's window for sigma=1 is 2·int(3.5·1 + 0.5) + 1 = 9
])
def test_ssim_matches_skimage(channels, data_range, sigma, win_size, K):
    skm = pytest.importorskip("skimage.metrics")
    a = smooth_images(3, 37, 52, channels, 0) * data_range
    rng = np.random.default_rng(1)
    b = np.clip(a + rng.normal(0, 0.08 * data_range, a.shape) * np.linspace(0.2, 2, 3)[:, None, None, None], 0, data_range)
    ours = ssim(nchw(a), nchw(b), data_range=data_range, win_size=win_size, sigma=sigma, K=K)
    ref = [skm.structural_similarity(a[i], b[i], gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                     data_range=data_range, channel_axis=-1, K1=K[0], K2=K[1]) for i in range(3)]
    assert ours.dtype == torch.float64 and ours.shape == (3,)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-10)
    assert ref[0] > ref[1] > ref[2]  # more noise, lower score


def test_ssim_on_a_real_photo_matches_skimage(realdata):
    skm = pytest.importorskip("skimage.metrics")
    path = realdata / "cityscapes_mmseg_fixture/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    photo = np.asarray(Image.open(path).convert("RGB"))
    blurred = np.asarray(Image.fromarray(photo).resize((64, 32), Image.BILINEAR).resize(photo.shape[1::-1], Image.BILINEAR))
    ref = skm.structural_similarity(photo, blurred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255, channel_axis=-1)
    ours = ssim(as_image_batch(photo[None]), as_image_batch(blurred[None]))  # [0, 1] with data_range 1: same score
    assert 0.2 < ref < 0.95
    assert abs(float(ours[0]) - ref) < 1e-6  # float32 [0, 1] inputs versus skimage's float64 on the uint8 values
    assert float(ssim(as_image_batch(photo[None]), as_image_batch(photo[None]))[0]) == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_bad_input():
    x = torch.rand(1, 3, 16, 16)
    for y, kwargs in [(torch.rand(1, 3, 16, 15), {}), ((x * 255).to(torch.uint8), {}), (x[0], {}), (x, dict(win_size=10)),
                      (x, dict(win_size=17)), (x, dict(data_range=0.0)), (x.numpy(), {})]:
        with pytest.raises(ParameterError): ssim(x, y, **kwargs)


def test_ssim_is_batched_per_image():
    a, b = nchw(smooth_images(4, 20, 24, 3, 2)), nchw(smooth_images(4, 20, 24, 3, 3))
    whole = ssim(a, b)
    assert torch.allclose(whole, torch.cat([ssim(a[i:i + 1], b[i:i + 1]) for i in range(4)]))
    assert torch.allclose(ssim(a, b), ssim(b, a))


# --- Fréchet distance ---------------------------------------------------------------------------------------------

def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    closed = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(closed, rel=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))  # rotating both Gaussians keeps the distance
    assert frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T) == pytest.approx(closed, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_and_pytorch_fid():
    from scipy.linalg import sqrtm
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(500, 24)), rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24)) * 0.3 + 0.2
    (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(fid_score.calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-9)


def test_frechet_distance_of_identical_sets_is_zero_even_when_rank_deficient():
    feats = np.random.default_rng(2).normal(size=(20, 300))  # 20 samples in 300 dimensions: covariance of rank 19
    mu, sigma = feature_stats(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9
    assert frechet_distance(np.zeros(3), np.zeros((3, 3)), np.ones(3), np.zeros((3, 3))) == pytest.approx(3.0)


def test_feature_stats_and_errors():
    feats = np.random.default_rng(3).normal(size=(50, 7)).astype(np.float32)
    mu, sigma = feature_stats(feats)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (7, 7)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64).T))
    with pytest.raises(ParameterError): feature_stats(feats[:1])
    with pytest.raises(ParameterError): feature_stats(feats[0])
    with pytest.raises(ParameterError): frechet_distance(mu, sigma, mu[:6], sigma[:6, :6])
    with pytest.raises(ParameterError): frechet_distance(mu, sigma[:6], mu, sigma)
    with pytest.raises(ParameterError): frechet_distance(mu * np.nan, sigma, mu, sigma)


# --- kernel distance ----------------------------------------------------------------------------------------------

def mmd2_unbiased_loops(X, Y, degree=3, gamma=None, coef0=1.0):
    """Bińkowski et al. 2018's unbiased MMD² with k(x, y) = (γ x·y + c0)^d, summed term by term."""
    m, d = X.shape
    gamma = 1.0 / d if gamma is None else gamma
    k = lambda a, b: (gamma * float(np.dot(a, b)) + coef0) ** degree
    xx = sum(k(X[i], X[j]) for i in range(m) for j in range(m) if j != i)
    yy = sum(k(Y[i], Y[j]) for i in range(m) for j in range(m) if j != i)
    xy = sum(k(X[i], Y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


@pytest.mark.parametrize("degree,gamma,coef0", [(3, None, 1.0), (2, 0.5, 0.0)])
def test_kernel_distance_matches_the_direct_formula(degree, gamma, coef0):
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(15, 6)), rng.normal(0.3, 1.2, size=(15, 6))
    mean, std = kernel_distance(X, Y, subsets=4, subset_size=15, degree=degree, gamma=gamma, coef0=coef0)
    assert mean == pytest.approx(mmd2_unbiased_loops(X, Y, degree, gamma, coef0), rel=1e-10)
    assert std < 1e-12  # every subset is the whole set


def test_kernel_distance_is_near_zero_for_one_distribution():
    rng = np.random.default_rng(5)
    A, B = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, same_std = kernel_distance(A, B, subsets=30, subset_size=100)
    apart, _ = kernel_distance(A, B * 1.5 + 0.5, subsets=30, subset_size=100)
    assert abs(same) < same_std and apart > 50 * abs(same)
    # a set against itself: the unbiased estimate is −2/(m(m−1)) Σᵢ (k(xᵢ,xᵢ) − meanⱼ k(xᵢ,xⱼ)), O(1/m) and shrinking
    diag_max = ((A * A).sum(1) / 16 + 1).max() ** 3
    for m in (50, 300):
        itself, spread = kernel_distance(A[:m], A[:m], subsets=2, subset_size=m)
        assert -2 * diag_max / (m - 1) < itself < 0 and spread < 1e-12
    assert abs(kernel_distance(A, A, 2, 300)[0]) < abs(kernel_distance(A[:50], A[:50], 2, 50)[0]) / 3


def test_kernel_distance_matches_torch_fidelity():
    metric_kid = pytest.importorskip("torch_fidelity.metric_kid")
    rng = np.random.default_rng(6)
    f1, f2 = rng.normal(size=(60, 10)), rng.normal(0.2, 1.0, size=(45, 10))
    ref = metric_kid.kid_features_to_metric(torch.from_numpy(f1), torch.from_numpy(f2), kid_subsets=7,
                                            kid_subset_size=30, rng_seed=3, verbose=False)
    mean, std = kernel_distance(f1, f2, subsets=7, subset_size=30, seed=3)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-10)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-8)


def test_kernel_distance_seeds_and_errors():
    rng = np.random.default_rng(7)
    A, B = rng.normal(size=(40, 5)), rng.normal(size=(30, 5))
    assert kernel_distance(A, B, 5, 20, seed=1) == kernel_distance(A, B, 5, 20, seed=1)
    assert kernel_distance(A, B, 5, 20, seed=1) != kernel_distance(A, B, 5, 20, seed=2)
    for kwargs in [dict(subset_size=31), dict(subset_size=1), dict(subsets=0)]:
        with pytest.raises(ParameterError): kernel_distance(A, B, **kwargs)
    with pytest.raises(ParameterError): kernel_distance(A, B[:, :4], subset_size=10)


# --- Inception ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A state dict of the FID Inception with random weights, saved under the real file's name. The batch norms'
    running statistics are set from one batch of random images, so that activations keep unit scale through the
    network (with PyTorch's default init they shrink to ~1e-8 by pool3, and any comparison would pass)."""
    torch.manual_seed(0)
    net = create_fid_inception()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d): m.momentum = None  # running stats = the batch's (cumulative average)
    with torch.no_grad(): net.train()(torch.rand(4, 3, 299, 299) * 2 - 1)
    path = tmp_path_factory.mktemp("weights") / INCEPTION_FILE
    torch.save(net.state_dict(), path)
    return path


def test_inception_round_trip_and_features(inception_file):
    net = create_fid_inception()
    net.load_state_dict(torch.load(inception_file, weights_only=True))
    assert net.fc.out_features == 1008 and net.AuxLogits is None
    feats = InceptionFeatures(inception_file, device="cpu")
    images = np.random.default_rng(8).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
    out = feats(images)
    assert out.shape == (2, 2048) and out.dtype == np.float32
    x = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, size=(299, 299), mode="bilinear",
                      align_corners=False) * 2 - 1
    path = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
            "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
            "Mixed_7b", "Mixed_7c"]  # torchvision's Inception3 up to its global average pool
    with torch.no_grad():
        for name in path: x = getattr(net, name)(x)
    pool3 = x.mean(dim=(2, 3))
    np.testing.assert_allclose(out, pool3.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats(as_image_batch(images)), out)  # uint8 B×H×W×3 and float B×3×H×W agree


def test_inception_architecture_matches_pytorch_fid(inception_file, monkeypatch):
    """pytorch-fid's InceptionV3 (its own blocks and forward) loaded with the same weights gives the same pool3."""
    pf = pytest.importorskip("pytorch_fid.inception")
    state = torch.load(inception_file, weights_only=True)
    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda *a, **k: state)  # pytorch-fid would download here
    theirs = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    x = torch.rand(2, 3, 120, 90, generator=torch.Generator().manual_seed(9))
    with torch.no_grad(): ref = theirs(x)[0].flatten(1).numpy()
    ours = InceptionFeatures(inception_file, device="cpu")(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_inception_weights_path_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHSEG_INCEPTION", raising=False)
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path))
    assert inception_weights_path() == tmp_path / "weights" / INCEPTION_FILE
    with pytest.raises(DataError) as err: InceptionFeatures()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "weights" / INCEPTION_FILE)) and "pytorch-fid" in msg
    monkeypatch.setenv("SYNTHSEG_INCEPTION", str(tmp_path / "elsewhere.pth"))
    assert inception_weights_path() == tmp_path / "elsewhere.pth"
    with pytest.raises(DataError, match="elsewhere.pth"): InceptionFeatures()


def test_inception_rejects_a_wrong_file(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(DataError, match="not the FID Inception"): InceptionFeatures(bad, device="cpu")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pth"): InceptionFeatures(tmp_path / "junk.pth", device="cpu")


# --- segmenter features, extraction, scoring ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def segnet():
    torch.manual_seed(0)
    return create_model("deeplabv3plus", 4, encoder="resnet18")


def test_segmenter_features(segnet):
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(10))
    wrapped, bare = SegmenterFeatures(Normalized(segnet)), SegmenterFeatures(segnet, name="mine")
    assert wrapped.name == "seg-resnet18" and bare.name == "mine" and "not comparable" in wrapped.description
    segnet.eval()
    with torch.no_grad(): expected = segnet.encoder(normalize(x))[-1].mean(dim=(2, 3)).numpy()
    segnet.train()
    np.testing.assert_allclose(wrapped(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bare((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)), expected, atol=0.05)
    assert segnet.training
    with pytest.raises(ParameterError): SegmenterFeatures(nn.Linear(2, 2))


def test_extract_features_keeps_order_across_sizes_and_batches(segnet):
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(32, 48, 3)] * 3 + [(40, 40, 3)] + [(32, 48, 3)]]
    ext = SegmenterFeatures(segnet)
    one_by_one = np.concatenate([ext(im[None]) for im in images])
    for bs in (1, 2, 16):
        np.testing.assert_allclose(extract_features(ext, iter(images), bs), one_by_one, rtol=1e-4, atol=1e-5)
    with pytest.raises(ParameterError): extract_features(ext, [], 4)
    with pytest.raises(ParameterError): extract_features(ext, images, 0)


class _TinyInception(InceptionFeatures):
    """Stands in for the real Inception (no 2048-d eigen-decompositions): 4 colour statistics per image."""
    def __init__(self): pass
    def __call__(self, images):
        x = as_image_batch(images)
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(1, 2, 3))[:, None]], 1).numpy()


def test_score_generations_keys_and_values(segnet):
    rng = np.random.default_rng(12)
    real = [(255 * im).astype(np.uint8) for im in smooth_images(8, 40, 48, 3, 13)]
    fake = [np.clip(im + rng.normal(0, 10, im.shape), 0, 255).astype(np.uint8) for im in real]
    ext = SegmenterFeatures(segnet)
    scores = score_generations(real, fake, ext, paired=True, kid_subsets=5, seed=1)
    f_real, f_fake = extract_features(ext, real), extract_features(ext, fake)
    assert scores["FD_seg-resnet18"] == pytest.approx(frechet_distance(*feature_stats(f_real), *feature_stats(f_fake)), rel=1e-4)
    kd = kernel_distance(f_real, f_fake, 5, 8, seed=1)
    assert (scores["KD_seg-resnet18_mean"], scores["KD_seg-resnet18_std"]) == pytest.approx(kd, rel=1e-4, abs=1e-9)
    assert scores["SSIM"] == pytest.approx(float(ssim(as_image_batch(np.stack(real)), as_image_batch(np.stack(fake))).mean()))
    assert scores["kid_subset_size"] == 8 and scores["n_real"] == scores["n_fake"] == 8
    assert "FID" not in scores and "not comparable" in scores["features"]
    inception = score_generations(real, fake[:6], _TinyInception(), kid_subsets=3)
    assert {"FID", "KID_mean", "KID_std"} <= set(inception) and "SSIM" not in inception and inception["kid_subset_size"] == 6
    with pytest.raises(ParameterError): score_generations(real, fake[:6], ext, paired=True, kid_subsets=2)


def test_paired_ssim_needs_equal_sizes():
    a = np.zeros((20, 20, 3), np.uint8)
    assert paired_ssim([a, a], [a, a]) == pytest.approx(1.0)
    with pytest.raises(ParameterError): paired_ssim([a], [np.zeros((20, 24, 3), np.uint8)])


# --- segmentation consistency -------------------------------------------------------------------------------------

class ColourSegmenter(nn.Module):
    """Class = the brightest RGB channel."""
    def forward(self, x): return x * 10


def paint(mask):
    return np.eye(3, dtype=np.uint8)[np.minimum(mask, 2)] * 255


def test_segmentation_consistency_perfect_and_against_the_confusion_matrix(segnet):
    rng = np.random.default_rng(14)
    masks = [rng.integers(0, 3, (24, 40)).astype(np.uint8) for _ in range(5)]
    masks[2][:, :8] = 255
    summary, table = segmentation_consistency(ColourSegmenter(), [paint(m) for m in masks], masks, 3, ["a", "b", "c"])
    assert summary == {"mIoU": 1.0, "mAcc": 1.0, "aAcc": 1.0} and list(table.index) == ["a", "b", "c"]
    assert table["pixels"].sum() == 5 * 24 * 40 - 24 * 8

    model = Normalized(create_model("deeplabv3plus", 3, encoder="resnet18"))
    images = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in masks]
    summary, table = segmentation_consistency(model, images, masks, 3, size=(32, 64), batch_size=2)
    cm = ConfusionMatrix(3)
    model.eval()
    with torch.no_grad():
        for im, m in zip(images, masks):
            x = F.interpolate(as_image_batch(im[None]), size=(32, 64), mode="bilinear", align_corners=False)
            cm.update(F.interpolate(model(x), size=m.shape, mode="bilinear", align_corners=False).argmax(1), m[None])
    assert summary == pytest.approx(cm.summary(), abs=1e-6)


def test_segmentation_consistency_restores_mode_and_checks_lengths():
    model = Normalized(create_model("deeplabv3plus", 3, encoder="resnet18")).train()
    masks = [np.zeros((16, 16), np.uint8)] * 2
    segmentation_consistency(model, [paint(m) for m in masks], masks, 3)
    assert model.training
    with pytest.raises(ParameterError): segmentation_consistency(model, [paint(masks[0])], masks, 3)
