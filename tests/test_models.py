"""Segmentation networks: one shared tester run per architecture (shapes, aux heads, channels_last, bf16 autocast,
eval determinism, backward), local encoder weights, the model registry and the profiler."""
import copy
import warnings

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from synthseg.core import DataError, ParameterError
from synthseg.models import (IMAGENET_MEAN, IMAGENET_STD, MODELS, BiSeNetV1, DeepLabV2, DeepLabV3Plus, create_model,
                             default_weights_path, load_encoder_weights, normalize, profile_model)

NUM_CLASSES = 5


def batch(h=64, w=128, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.rand(n, 3, h, w, generator=g)), torch.randint(0, NUM_CLASSES, (n, h, w), generator=g)


class _ModelTests:
    """Shared checks; subclasses set `arch`, `cls`, `encoder` (the default) and `n_aux`."""
    arch: str
    cls: type
    encoder: str
    n_aux: int

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls):
        torch.manual_seed(0)
        return create_model(cls.arch, NUM_CLASSES).eval()

    def test_registry_and_default_encoder(self, model):
        assert MODELS[self.arch] is self.cls and isinstance(model, self.cls)
        assert model.encoder_name == self.encoder and model.num_classes == NUM_CLASSES

    @pytest.mark.parametrize("size", [(64, 128), (50, 70)])
    def test_logits_and_aux_at_input_size(self, model, size):
        x, _ = batch(*size)
        with torch.no_grad():
            logits = model(x)
            main, aux = model.forward_with_aux(x)
        assert logits.shape == (2, NUM_CLASSES, *size) and logits.dtype == torch.float32
        assert torch.equal(logits, main)
        assert isinstance(aux, list) and len(aux) == self.n_aux
        assert all(a.shape == logits.shape for a in aux)

    def test_eval_is_deterministic(self, model):
        x, _ = batch()
        with torch.no_grad():
            assert torch.equal(model(x), model(x))

    def test_channels_last_matches_contiguous(self, model):
        x, _ = batch()
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = model(x)
            out, aux = cl.forward_with_aux(x.contiguous(memory_format=torch.channels_last))
        assert out.shape == ref.shape and len(aux) == self.n_aux
        torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)

    def test_bf16_autocast_on_cpu(self, model):
        x, _ = batch()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out, aux = model.forward_with_aux(x)
        assert out.dtype == torch.bfloat16 and out.shape == (2, NUM_CLASSES, 64, 128)
        assert out.isfinite().all() and all(a.isfinite().all() for a in aux)
        with torch.no_grad():
            ref = model(x)
        assert F.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0) > 0.95

    def test_backward_reaches_every_parameter(self, model):
        net = copy.deepcopy(model).train()
        x, y = batch()
        main, aux = net.forward_with_aux(x)
        loss = F.cross_entropy(main, y) + 0.4 * sum(F.cross_entropy(a, y) for a in aux)
        loss.backward()
        no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
        assert not no_grad, no_grad[:5]
        assert net.encoder.state_dict()["conv1.weight"].shape[0] == 64  # timm ResNet naming, loadable from timm files
        assert net.get_parameter("encoder.conv1.weight").grad.abs().sum() > 0

    def test_bad_num_classes(self):
        for bad in (0, -3, 2.5, True):
            with pytest.raises(ParameterError, match="num_classes"):
                self.cls(bad)


class TestBiSeNetV1(_ModelTests):
    arch, cls, encoder, n_aux = "bisenet", BiSeNetV1, "resnet18", 2


class TestDeepLabV2(_ModelTests):
    arch, cls, encoder, n_aux = "deeplabv2", DeepLabV2, "resnet101", 0


class TestDeepLabV3Plus(_ModelTests):
    arch, cls, encoder, n_aux = "deeplabv3plus", DeepLabV3Plus, "resnet50", 0


# --- architecture details -------------------------------------------------------------------------------------

def test_encoder_strides():
    assert create_model("bisenet", 3).encoder.feature_info.reduction() == [16, 32]
    assert DeepLabV2(3, encoder="resnet18").encoder.feature_info.reduction() == [8]
    assert DeepLabV3Plus(3, encoder="resnet18").encoder.feature_info.reduction() == [4, 16]
    assert DeepLabV3Plus(3, encoder="resnet18", output_stride=8).encoder.feature_info.reduction() == [4, 8]
    with pytest.raises(ParameterError, match="output_stride"):
        DeepLabV3Plus(3, encoder="resnet18", output_stride=32)


def test_deeplabv2_classifier_is_a_sum_of_dilated_convs():
    model = DeepLabV2(3, encoder="resnet18").eval()
    assert [c.dilation for c in model.classifier] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    x, _ = batch()
    with torch.no_grad():
        (feat,) = model.encoder(x)
        expected = sum(c(feat) for c in model.classifier)
        assert torch.allclose(model.compute_logits(x, with_aux=False)[0], expected)


def test_other_timm_encoders_work():
    x, _ = batch()
    model = create_model("deeplabv3plus", 4, encoder="convnext_atto").eval()  # a four-level encoder
    with torch.no_grad():
        assert model(x).shape == (2, 4, 64, 128)


def test_normalize():
    x = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 2, 2)
    assert torch.allclose(normalize(x), torch.zeros(3, 2, 2), atol=1e-6)
    ones = normalize(torch.ones(1, 3, 1, 1)).flatten()
    assert torch.allclose(ones, (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))
    assert torch.allclose(normalize(torch.full((3, 1, 1), 255, dtype=torch.uint8)), normalize(torch.ones(3, 1, 1)))
    with pytest.raises(ParameterError):
        normalize(torch.rand(2, 4, 8, 8))


# --- registry -------------------------------------------------------------------------------------------------

def test_create_model_unknown_arch_lists_models():
    with pytest.raises(ParameterError) as err:
        create_model("segformer", 19)
    assert "arch" in str(err.value) and all(name in str(err.value) for name in MODELS)


def test_create_model_unknown_encoder():
    with pytest.raises(ParameterError, match="encoder"):
        create_model("bisenet", 19, encoder="resnet17")


# --- encoder weights ------------------------------------------------------------------------------------------

def random_resnet18_state(seed=1):
    torch.manual_seed(seed)
    return timm.create_model("resnet18", pretrained=False).state_dict()


def assert_encoder_equals(encoder, state):
    own = encoder.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k


def test_safetensors_round_trip_drops_classifier(tmp_path):
    state = random_resnet18_state()
    assert "fc.weight" in state
    save_file(state, tmp_path / "resnet18.safetensors")
    torch.manual_seed(2)
    model = create_model("bisenet", 19)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full checkpoint loads without complaints
        load_encoder_weights(model.encoder, tmp_path / "resnet18.safetensors")
    assert_encoder_equals(model.encoder, state)


def test_encoder_only_state_round_trip(tmp_path):
    torch.manual_seed(3)
    src = create_model("bisenet", 19).encoder.state_dict()
    save_file({k: v.contiguous() for k, v in src.items()}, tmp_path / "enc.safetensors")
    dst = create_model("bisenet", 19).encoder
    load_encoder_weights(dst, tmp_path / "enc.safetensors")
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.items())


def test_pth_loads_with_weights_only(tmp_path, monkeypatch):
    state = random_resnet18_state()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "ckpt.pth")
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    model = create_model("bisenet", 19, encoder_weights=tmp_path / "ckpt.pth")
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    assert_encoder_equals(model.encoder, state)


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1), "obj": nn.ReLU()}, tmp_path / "unsafe.pth")
    with pytest.raises(DataError, match="weights_only") as err:
        load_encoder_weights(create_model("bisenet", 3).encoder, tmp_path / "unsafe.pth")
    assert str(err.value).startswith(str(tmp_path / "unsafe.pth"))


def test_missing_file_names_it_and_where_to_get_it(tmp_path):
    path = tmp_path / "weights" / "resnet18.safetensors"
    with pytest.raises(DataError) as err:
        load_encoder_weights(create_model("bisenet", 3).encoder, path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert "timm/resnet18.a1_in1k" in msg and "model.safetensors" in msg


def test_imagenet_weights_come_from_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path))
    path = default_weights_path("resnet18")
    assert path == tmp_path / "weights" / "resnet18.safetensors"
    with pytest.raises(DataError, match="resnet18.safetensors"):
        create_model("bisenet", 19, encoder_weights="imagenet")
    state = random_resnet18_state()
    path.parent.mkdir()
    save_file(state, path)
    assert_encoder_equals(create_model("bisenet", 19, encoder_weights="imagenet").encoder, state)


def test_mismatched_checkpoints(tmp_path):
    encoder = create_model("bisenet", 3).encoder
    save_file({"foo.weight": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(DataError, match="no tensor matches"):
        load_encoder_weights(encoder, tmp_path / "other.safetensors")
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7)}, tmp_path / "shape.safetensors")
    with pytest.raises(DataError, match="wrong shape"):
        load_encoder_weights(encoder, tmp_path / "shape.safetensors")
    partial = {k: v for k, v in random_resnet18_state().items() if not k.startswith("layer4.")}
    partial["extra.weight"] = torch.zeros(2)
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.warns(UserWarning, match=r"missing.*layer4.*1 unexpected \['extra.weight'\]"):
        load_encoder_weights(encoder, tmp_path / "partial.safetensors")
    with pytest.raises(DataError, match="unknown weights format"):
        load_encoder_weights(encoder, tmp_path / "weights.npz")


# --- profiling ------------------------------------------------------------------------------------------------

def test_profile_counts_macs_and_flops_exactly():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    p = profile_model(conv, size=(16, 16), warmup=0, runs=2)
    assert p["GMACs"] * 1e9 == 8 * 3 * 9 * 16 * 16 and p["GFLOPs"] == 2 * p["GMACs"]
    assert p["params_M"] * 1e6 == pytest.approx(8 * 3 * 9 + 8) and p["latency_ms"] > 0


def test_profile_model_on_a_tiny_input():
    model = create_model("bisenet", 19).train()
    p = profile_model(model, size=(64, 128), warmup=1, runs=2)
    assert model.training  # mode restored
    assert set(p) == {"params_M", "GMACs", "GFLOPs", "latency_ms"}
    assert 12 < p["params_M"] < 14 and 0 < p["GMACs"] < 1 and p["GFLOPs"] == 2 * p["GMACs"] and 0 < p["latency_ms"] < 5000
    # FLOPs scale with the pixel count; the meta device counts without running
    meta = profile_model(create_model("bisenet", 19), size=(128, 256), device="meta")
    assert meta["latency_ms"] is None and meta["GMACs"] == pytest.approx(4 * p["GMACs"], rel=0.01)
