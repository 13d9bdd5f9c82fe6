"""synthseg.controlled: visual priors against OpenCV / scikit-image definitions, Class-Prompt Appending on a real VOC
label, captioners and their recorded failures, ControlNet / T2I-Adapter pipelines built from tiny random-weight
components saved to disk and loaded back, and the CLIP score against CLIP's own logits. Nothing touches the network."""
import json
import math
import socket

import cv2
import numpy as np
import pytest
import torch
from skimage.segmentation import find_boundaries

from synthseg.controlled import (CONTROL_KINDS, IMAGE_PRIORS, LABEL_PRIORS, PRIORS, PROMPT_TYPES, Blip2Captioner,
                                 ClipScorer, GivenCaptions, NoCaption, blend_priors, build_prompt, canny_prior,
                                 caption_items, class_names, class_prompt, generate_controlled, label_boundary_prior,
                                 lineart_prior, load_controlled_pipeline, sketch_prior, visual_prior, write_tiny_weights)
from synthseg.core import DataError, ParameterError, read_image, read_label


@pytest.fixture(scope="module", autouse=True)
def offline_one_thread():
    """No socket may connect anywhere; torch on one thread (tiny models run ~10× faster on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def refuse(self, address):
        raise AssertionError(f"network access attempted: {address}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def voc(realdata):
    """The real VOC 2012 sample 2007_000129 (a bicycle and a person, void band around them): uint8 image and label."""
    base = realdata / "voc" / "VOCdevkit" / "VOC2012"
    return read_image(base / "JPEGImages" / "2007_000129.jpg"), read_label(base / "SegmentationClass" / "2007_000129.png")


def as_batch(*images):
    """H×W×3 uint8 arrays -> B×3×H×W float tensor in [0, 1]."""
    return torch.stack([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]).float() / 255


def random_image(h=48, w=64, seed=0):
    """A smooth random colour image with some structure (blurred noise plus a rectangle), uint8."""
    rng = np.random.default_rng(seed)
    im = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (5, 5), 1.5)
    im[h // 4: h // 2, w // 4: w // 2] = (250, 20, 40)
    return im


# ---------------------------------------------------------------- visual priors

@pytest.mark.parametrize("low,high", [(100, 200), (30, 90)])
def test_canny_equals_opencv_on_uint8(voc, low, high):
    image = voc[0]
    batch = as_batch(image, image[::-1])
    got = canny_prior(batch, low, high)
    assert got.shape == (2, 1, *image.shape[:2]) and got.dtype == torch.float32
    for i, im in enumerate((image, image[::-1])):
        ref = cv2.Canny(np.ascontiguousarray(im), low, high)
        assert torch.equal(got[i, 0], torch.from_numpy(ref).float() / 255)
    assert 0 < got.mean() < 0.5


def cv_grey(image):
    return cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2GRAY)


def cv_blur(x, sigma):
    k = 2 * math.ceil(3 * sigma) + 1
    return cv2.GaussianBlur(x, (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)


@pytest.mark.parametrize("sigma,k", [(1.0, 1.6), (0.8, 2.0)])
def test_lineart_is_normalised_positive_dog(voc, sigma, k):
    images = (voc[0][:200, :160], random_image())
    got = [lineart_prior(as_batch(im), sigma, k)[0, 0].numpy() for im in images]
    for im, g in zip(images, got):
        grey = cv_grey(im)
        dog = np.maximum(cv_blur(grey, k * sigma) - cv_blur(grey, sigma), 0)
        ref = dog / max(dog.max(), 1 / 255)
        np.testing.assert_allclose(g, ref, atol=2e-5)
        assert g.max() == pytest.approx(1.0)


def test_lineart_marks_dark_lines_and_not_flat_images():
    im = np.full((32, 32, 3), 230, np.uint8)
    im[:, 15] = 20  # a one-pixel dark vertical line
    p = lineart_prior(as_batch(im, np.full((32, 32, 3), 128, np.uint8)))
    assert (p[0, 0].argmax(1) == 15).all() and p[0, 0, :, 15].min() == 1
    assert p[0, 0, :, :12].max() == 0  # far from the line nothing
    assert p[1].max() == 0  # flat image: no lines, no amplified rounding noise


def test_sketch_is_inverted_colour_dodge(voc):
    images = (voc[0][100:300, 50:250], random_image(seed=3))
    for im in images:
        grey = cv_grey(im)
        den = 1 - cv_blur(1 - grey, 3.5)
        dodge = np.where(den > 0, grey / np.maximum(den, 1e-30), 0).clip(0, 1)
        got = sketch_prior(as_batch(im))[0, 0].numpy()
        np.testing.assert_allclose(got, 1 - dodge, atol=2e-5)
    white = sketch_prior(torch.ones(1, 3, 32, 32))
    assert white.max() == 0  # flat bright areas carry no stroke


def test_label_boundaries_match_skimage_on_real_voc(voc):
    label = voc[1]
    got = label_boundary_prior(torch.from_numpy(label.copy())[None])[0, 0].numpy()
    ref = find_boundaries(label, connectivity=1, mode="thick") & (label != 255)
    assert got.dtype == np.float32 and set(np.unique(got)) == {0.0, 1.0}
    assert (got.astype(bool) == ref).all()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (3, 20, 30))
    got = label_boundary_prior(labels).numpy()
    for i in range(3):
        assert (got[i, 0].astype(bool) == find_boundaries(labels[i], connectivity=1, mode="thick")).all()


def test_label_boundaries_ignore_handling():
    label = torch.tensor([[[1, 1, 255, 2, 2],
                           [1, 1, 255, 2, 3]]])
    counted = label_boundary_prior(label)[0, 0]
    assert counted.tolist() == [[0, 1, 0, 1, 1],
                                [0, 1, 0, 1, 1]]  # class next to ignore counts; ignore itself never marked
    not_counted = label_boundary_prior(label, count_ignore=False)[0, 0]
    assert not_counted.tolist() == [[0, 0, 0, 0, 1],
                                    [0, 0, 0, 1, 1]]  # only the 2|3 boundary (4-neighbours) remains
    assert label_boundary_prior(torch.full((1, 4, 4), 255)).max() == 0


def test_blend_formula_defaults_and_weight_errors():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    assert torch.allclose(blend_priors(a, b), (0.7 * a + 0.9 * b).clamp(0, 1))
    assert torch.allclose(blend_priors(a, b, 0.2, 0.5), 0.2 * a + 0.5 * b)
    assert blend_priors(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).max() == 1
    for kw, name in [({"w_image": 1.2}, "w_image"), ({"w_label": -0.1}, "w_label"), ({"w_image": True}, "w_image")]:
        with pytest.raises(ParameterError, match=name):
            blend_priors(a, b, **kw)
    with pytest.raises(ParameterError, match="shape"):
        blend_priors(a, b[:, :, :4])


def test_visual_prior_combines_named_priors(voc):
    image, label = voc[0][:128, :96], voc[1][:128, :96]
    images, labels = as_batch(image), torch.from_numpy(label.copy())[None]
    expected = (0.7 * canny_prior(images) + 0.9 * label_boundary_prior(labels)).clamp(0, 1)
    assert torch.allclose(visual_prior(images, labels), expected)
    assert torch.allclose(visual_prior(images, labels, "sketch", None, w_image=0.5), 0.5 * sketch_prior(images))
    assert torch.equal(visual_prior(images, labels, None, "boundary", w_label=1.0), label_boundary_prior(labels))
    assert set(PRIORS) == {*IMAGE_PRIORS, *LABEL_PRIORS} == {"canny", "lineart", "sketch", "boundary"}
    with pytest.raises(ParameterError, match="image_prior"):
        visual_prior(images, labels, image_prior="boundary")
    with pytest.raises(ParameterError, match="labels"):
        visual_prior(images, labels[:, :64])
    with pytest.raises(ParameterError, match="both be None"):
        visual_prior(images, labels, None, None)


def test_prior_input_errors():
    with pytest.raises(ParameterError, match=r"images: values must lie in \[0, 1\]"):
        canny_prior(torch.full((1, 3, 8, 8), 2.0))
    with pytest.raises(ParameterError, match="images: expected a B×3×H×W float"):
        lineart_prior(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ParameterError, match="images: expected"):
        sketch_prior(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ParameterError, match="too small"):
        sketch_prior(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ParameterError, match="labels: expected B×H×W integer"):
        label_boundary_prior(torch.zeros(1, 8, 8))


# ---------------------------------------------------------------- Class-Prompt Appending

def test_class_prompt_on_real_voc_label(voc):
    label = voc[1]
    assert set(np.unique(label)) == {0, 2, 15, 255}
    assert class_prompt(label, "voc", "a man riding a bike") == "a man riding a bike; bicycle, person"
    assert class_prompt(torch.from_numpy(label.copy()), "voc") == "bicycle, person"


def test_class_prompt_names_order_and_exclusions():
    label = np.array([[20, 20, 0], [16, 255, 11]], np.uint8)  # tvmonitor seen first, but id order decides
    assert class_names(label, "voc") == ["dining table", "potted plant", "tv monitor"]
    assert class_prompt(label, "voc", "  a room ") == "a room; dining table, potted plant, tv monitor"
    assert class_prompt(np.array([[0, 255]]), "voc", "a wall") == "a wall"
    assert class_prompt(np.array([[0, 255]]), "voc") == ""
    assert class_prompt(np.array([[6, 0]]), "cityscapes") == "road, traffic light"  # id 0 is a class there


def test_class_prompt_rejects_ids_outside_the_space():
    with pytest.raises(DataError, match=r"ids \[21, 300\].*'voc'"):
        class_prompt(np.array([[0, 21, 300, 255]]), "voc", "x")
    with pytest.raises(DataError, match=r"ids \[19\]"):
        class_prompt(torch.tensor([[19]]), "cityscapes")


def test_build_prompt_types():
    label = np.array([[0, 8]], np.uint8)
    assert PROMPT_TYPES == ("caption", "classes", "appended")
    assert build_prompt("caption", label, "voc", "a cat ") == "a cat"
    assert build_prompt("caption", None, "voc", "a cat") == "a cat"
    assert build_prompt("classes", label, "voc", "ignored caption") == "cat"
    assert build_prompt("appended", label, "voc", "a cat") == "a cat; cat"
    with pytest.raises(ParameterError, match="caption"):
        build_prompt("caption", label, "voc", " ")
    with pytest.raises(ParameterError, match="prompt type"):
        build_prompt("append", label, "voc", "a cat")


# ---------------------------------------------------------------- captioners

def test_given_captions_and_json(tmp_path):
    given = GivenCaptions({"a": "one", "b": "two"})
    assert given(None, "b") == "two" and NoCaption()(None, "a") == ""
    with pytest.raises(DataError, match="'c'"):
        given(None, "c")
    (tmp_path / "caps.json").write_text(json.dumps({"a": "one"}))
    assert GivenCaptions.from_json(tmp_path / "caps.json")(None, "a") == "one"
    (tmp_path / "bad.json").write_text(json.dumps({"a": 1}))
    for name in ("bad.json", "missing.json"):
        with pytest.raises(DataError, match=name):
            GivenCaptions.from_json(tmp_path / name)


def test_caption_items_records_failures_instead_of_wrong_prompts():
    items = [{"name": f"im{i}", "image": np.full((8, 8, 3), 40 * i, np.uint8)} for i in range(4)]

    def flaky(image, name):
        if image[0, 0, 0] == 40:
            raise RuntimeError("out of memory")
        if image[0, 0, 0] == 80:
            return None
        return f"grey {image[0, 0, 0]}"

    captions, skipped = caption_items(flaky, items)
    assert captions == {"im0": "grey 0", "im3": "grey 120"}
    assert skipped == [("im1", "RuntimeError: out of memory"), ("im2", "captioner returned NoneType, not str")]
    captions, skipped = caption_items(GivenCaptions({"im0": "zero"}), items)
    assert captions == {"im0": "zero"} and [n for n, _ in skipped] == ["im1", "im2", "im3"]
    assert all(e.startswith("DataError") for _, e in skipped)
    with pytest.raises(ParameterError, match="'image' and 'name'"):
        caption_items(NoCaption(), [{"name": "x"}])


def test_blip2_without_weights_names_folder_and_model(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"nothing.*folder not found.*Salesforce/blip2-opt-2.7b"):
        Blip2Captioner(tmp_path / "nothing")
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path))
    (tmp_path / "weights" / "blip2-opt-2.7b").mkdir(parents=True)
    with pytest.raises(DataError, match=r"weights/blip2-opt-2.7b.*no config.json"):
        Blip2Captioner()


# ---------------------------------------------------------------- controlled pipelines

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_tokenizer(folder):
    """A CLIP tokenizer over single letters (no merges), from vocab/merges files written here: no hub download."""
    from transformers import CLIPTokenizer
    tokens = ["<|startoftext|>", "<|endoftext|>", *LETTERS, *(c + "</w>" for c in LETTERS)]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77, local_files_only=True)


def text_config(vocab_size, **kw):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=vocab_size, hidden_size=32,
                          intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77, **kw)


@pytest.fixture(scope="module")
def sd_folders(tmp_path_factory):
    """Tiny random SD 1.5 base, ControlNet and 1-channel T2I-Adapter (`write_tiny_weights`), plus a 3-channel adapter."""
    from diffusers import T2IAdapter
    root = tmp_path_factory.mktemp("weights")
    write_tiny_weights(root)
    T2IAdapter(in_channels=3, channels=(32, 64), num_res_blocks=1, downscale_factor=2,
               adapter_type="full_adapter").save_pretrained(root / "adapter3")
    return root


CASES = [("controlnet", "controlnet", 3), ("t2i-adapter", "t2i-adapter", 1), ("t2i-adapter", "adapter3", 3)]


@pytest.mark.parametrize("kind,folder,channels", CASES)
def test_generate_controlled_end_to_end(sd_folders, kind, folder, channels):
    from diffusers import StableDiffusionAdapterPipeline, StableDiffusionControlNetPipeline
    pipe = load_controlled_pipeline(kind, sd_folders / "sd15", sd_folders / folder, device="cpu")
    assert isinstance(pipe, StableDiffusionControlNetPipeline if kind == "controlnet" else StableDiffusionAdapterPipeline)
    assert pipe.unet.dtype == torch.float32 and getattr(pipe, "safety_checker", None) is None
    g = torch.Generator().manual_seed(1)
    priors = (torch.rand(2, 1, 64, 64, generator=g) > 0.8).float()
    seen = []
    control = pipe.controlnet if kind == "controlnet" else pipe.adapter
    name = "controlnet_cond" if kind == "controlnet" else "x"
    hook = control.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs[name] if name in kwargs else args[0]), with_kwargs=True)
    run = lambda p, seeds: generate_controlled(pipe, p, ["a road", "a car"], seeds, steps=2, guidance=2.0)
    out = run(priors, [3, 4])
    hook.remove()
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    # the control model saw each prior as its control image, repeated over the expected channels
    cond = seen[0][-2:] if kind == "controlnet" else seen[0]  # ControlNet: the conditional half of the CFG batch
    assert cond.shape == (2, channels, 64, 64)
    assert torch.equal(cond, priors.expand(-1, channels, -1, -1))
    assert (run(priors, [3, 4]) == out).all()  # same seeds, same images
    assert (run(priors.flip(0), [3, 4]) != out).any()  # other priors, other images
    assert (run(priors, [5, 4])[0] != out[0]).any()  # other seed, other image


@pytest.fixture(scope="module")
def sdxl_folders(tmp_path_factory):
    """Tiny random SDXL base (two text encoders, text-time embedding), XL ControlNet and XL T2I-Adapter."""
    from diffusers import (AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLPipeline, T2IAdapter,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    root = tmp_path_factory.mktemp("weights_xl")
    torch.manual_seed(0)
    tok = tiny_tokenizer(root / "tok")
    # cross-attention sees both encoders' hidden states (32 + 32); the added embedding is 6 time ids × 8 + pooled 32
    blocks = dict(block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=64, attention_head_dim=8,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), norm_num_groups=32,
                  addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80)
    unet = UNet2DConditionModel(sample_size=32, up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                **blocks)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, layers_per_block=1)
    cfg = text_config(len(tok), projection_dim=32)
    StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(cfg), text_encoder_2=CLIPTextModelWithProjection(cfg), tokenizer=tok,
        tokenizer_2=tok, unet=unet, scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                                    beta_schedule="scaled_linear", steps_offset=1),
    ).save_pretrained(root / "sdxl")
    controlnet = ControlNetModel(conditioning_embedding_out_channels=(16, 32), **blocks)
    for p in (*controlnet.controlnet_cond_embedding.conv_out.parameters(),
              *controlnet.controlnet_down_blocks.parameters(), *controlnet.controlnet_mid_block.parameters()):
        torch.nn.init.normal_(p, std=0.05)
    controlnet.save_pretrained(root / "controlnet")
    T2IAdapter(in_channels=1, channels=(32, 64, 64, 64), num_res_blocks=1, downscale_factor=4,
               adapter_type="full_adapter_xl").save_pretrained(root / "adapter")
    return root


@pytest.mark.parametrize("kind,folder", [("controlnet", "controlnet"), ("t2i-adapter", "adapter")])
def test_generate_controlled_sdxl(sdxl_folders, kind, folder):
    from diffusers import StableDiffusionXLAdapterPipeline, StableDiffusionXLControlNetPipeline
    pipe = load_controlled_pipeline(kind, sdxl_folders / "sdxl", sdxl_folders / folder, sdxl=True, device="cpu")
    assert isinstance(pipe, StableDiffusionXLControlNetPipeline if kind == "controlnet" else StableDiffusionXLAdapterPipeline)
    priors = (torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2)) > 0.8).float()
    run = lambda p: generate_controlled(pipe, p, ["a road", "a car"], [0, 1], steps=2, guidance=2.0)
    out = run(priors)
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    assert (run(priors) == out).all() and (run(priors.flip(0)) != out).any()


def test_generate_controlled_argument_errors(sd_folders):
    pipe = load_controlled_pipeline("controlnet", sd_folders / "sd15", sd_folders / "controlnet", device="cpu")
    priors = torch.zeros(2, 1, 64, 64)
    with pytest.raises(ParameterError, match="priors: expected a B×1×H×W"):
        generate_controlled(pipe, torch.zeros(2, 3, 64, 64), ["a", "b"], [0, 1])
    with pytest.raises(ParameterError, match="prompts and seeds"):
        generate_controlled(pipe, priors, ["a"], [0, 1])
    with pytest.raises(ParameterError, match="multiples of 4"):
        generate_controlled(pipe, torch.zeros(1, 1, 62, 64), ["a"], [0])
    with pytest.raises(ParameterError, match="steps"):
        generate_controlled(pipe, priors, ["a", "b"], [0, 1], steps=0)


def test_load_errors_name_folder_and_model(sd_folders, tmp_path, monkeypatch):
    sd, cn, ad = sd_folders / "sd15", sd_folders / "controlnet", sd_folders / "t2i-adapter"
    with pytest.raises(ParameterError, match="kind"):
        load_controlled_pipeline("lora", sd, cn)
    with pytest.raises(DataError, match=r"missing.*folder not found.*runwayml/stable-diffusion-v1-5"):
        load_controlled_pipeline("controlnet", tmp_path / "missing", cn)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model_index.json").write_text("{}")
    (partial / "unet").mkdir()
    with pytest.raises(DataError, match=r"partial.*no vae, text_encoder, tokenizer, scheduler"):
        load_controlled_pipeline("controlnet", partial, cn)
    with pytest.raises(DataError, match=r"no text_encoder_2, tokenizer_2.*stabilityai/stable-diffusion-xl-base-1.0"):
        load_controlled_pipeline("controlnet", sd, cn, sdxl=True)
    with pytest.raises(DataError, match=r"holds a T2IAdapter, not a ControlNetModel.*lllyasviel/control_v11p_sd15_canny"):
        load_controlled_pipeline("controlnet", sd, ad)
    with pytest.raises(DataError, match=r"holds a ControlNetModel, not a T2IAdapter.*TencentARC/t2iadapter_canny_sd15v2"):
        load_controlled_pipeline("t2i-adapter", sd, cn)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((cn / "config.json").read_text())
    with pytest.raises(DataError, match=r"no_weights.*no diffusion_pytorch_model.safetensors"):
        load_controlled_pipeline("controlnet", sd, no_weights)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((cn / "config.json").read_text())
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataError, match=r"broken: cannot load the controlnet pipeline"):
        load_controlled_pipeline("controlnet", sd, broken, device="cpu")
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path / "data"))
    with pytest.raises(DataError, match=r"data/weights/stable-diffusion-v1-5: .*runwayml/stable-diffusion-v1-5"):
        load_controlled_pipeline("t2i-adapter")
    with pytest.raises(DataError, match=r"data/weights/t2i-adapter-canny-sdxl-1.0: .*TencentARC/t2i-adapter-canny-sdxl-1.0"):
        load_controlled_pipeline("t2i-adapter", _xl_stub(tmp_path), sdxl=True)


def _xl_stub(tmp_path):
    """A folder with the parts an SDXL base folder must have (contents not loaded)."""
    folder = tmp_path / "xl"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text("{}")
    return folder


def test_write_tiny_weights_load_as_pipelines(tmp_path):
    folders = write_tiny_weights(tmp_path / "w", seed=1)
    assert set(folders) == {"sd15", "controlnet", "t2i-adapter", "clip"}
    for kind in CONTROL_KINDS:
        pipe = load_controlled_pipeline(kind, folders["sd15"], folders[kind], device="cpu")
        assert pipe.device.type == "cpu"
    assert ClipScorer(folders["clip"], device="cpu").model.config.projection_dim == 16


# ---------------------------------------------------------------- CLIP score

@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random CLIP model and processor saved in transformers layout."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(2)
    tok = tiny_tokenizer(root / "tok")
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text_config(len(tok)).to_dict(), vision_config=vision,
                         projection_dim=16)).save_pretrained(root / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(root / "clip")
    return root / "clip"


def test_clip_score_is_100_times_clipped_cosine(clip_folder):
    scorer = ClipScorer(clip_folder, device="cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 40, 48, 3)).astype(np.uint8)
    prompts = ["a red car", "a road", "sky", "a person on a bicycle"]
    inputs = scorer.processor(text=prompts, images=list(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        cos = scorer.model(**inputs).logits_per_image.diag() / scorer.model.logit_scale.exp()
    scores = scorer(images, prompts)
    assert scores.shape == (4,)
    assert torch.allclose(scores, (100 * cos).clamp_min(0), atol=1e-4)
    with torch.no_grad():
        scorer.model.text_projection.weight.neg_()  # every cosine changes sign
    flipped = scorer(images, prompts)
    assert torch.allclose(torch.minimum(scores, flipped), torch.zeros(4), atol=1e-6)
    assert torch.allclose(torch.maximum(scores, flipped), 100 * cos.abs(), atol=1e-4)
    keep = scorer.keep(images, prompts, min_score=float(flipped.max()))
    assert keep.dtype == bool and keep.tolist() == (flipped >= flipped.max()).tolist()


def test_clip_scorer_errors(clip_folder, tmp_path):
    with pytest.raises(DataError, match=r"clip_absent.*openai/clip-vit-large-patch14"):
        ClipScorer(tmp_path / "clip_absent")
    scorer = ClipScorer(clip_folder, device="cpu")
    with pytest.raises(ParameterError, match="2 images, 1 prompts"):
        scorer(np.zeros((2, 8, 8, 3), np.uint8), ["a"])
